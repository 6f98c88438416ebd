"""What the OHIF viewer (3.x) asks of a link's dicomweb_root, against the real stack (Orthanc).

OHIF starts with a study-level search (``studies?StudyInstanceUID=…&includefield=…``), looks for
priors by PatientID, then asks for series (QIDO with includefield), series metadata, frames,
rendered images, thumbnails and bulk data. All of it must work through a view-only link, and
none of it may show anything of another study.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from devstack.stack import Stack
from tests.integration.conftest import LiveBroker
from tests.integration.helpers import transfer_records
from tests.integration.test_links import STUDY, direct, issue, parts, token

pytestmark = pytest.mark.integration

LINKED = STUDY["stolaf-ct-chest"]
OTHER = STUDY["mercy-ct-head"]  # another patient (MN-0001), another facility
DICOM_JSON = "application/dicom+json"
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
BULK_ACCEPT = 'multipart/related; type="application/octet-stream"'
OHIF_STUDY_FIELDS = "00081030,00080060"
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


class Link:
    """A view-only link to the linked study, and a GET through it as its holder."""

    def __init__(self, live: LiveBroker, stack: Stack) -> None:
        self.bearer = token(stack, "ada")
        issued = issue(live, self.bearer, "stolaf-ct-chest", ["view"])
        self.root: str = issued["dicomweb_root"]
        self.study = f"{self.root}/studies/{LINKED.study_uid}"
        self.stack = stack

    def get(
        self, url: str, params: Any = None, accept: str = DICOM_JSON, status: int = 200
    ) -> httpx.Response:
        response = httpx.get(
            url,
            params=params,
            headers={"Accept": accept, "Authorization": f"Bearer {self.bearer}"},
            timeout=30,
        )
        assert response.status_code == status, (url, response.status_code, response.text[:500])
        return response

    def search(self, params: Any) -> list[dict[str, Any]]:
        response = self.get(f"{self.root}/studies", params)
        assert response.headers["content-type"].startswith(DICOM_JSON)
        found: list[dict[str, Any]] = response.json()
        return found

    def first_series(self) -> str:
        series = self.get(f"{self.study}/series").json()
        uid: str = series[0]["0020000E"]["Value"][0]
        return uid

    def first_instance(self, series: str) -> str:
        instances = self.get(f"{self.study}/series/{series}/instances").json()
        uid: str = instances[0]["00080018"]["Value"][0]
        return uid


@pytest.fixture
def link(live_broker: LiveBroker, stack: Stack) -> Link:
    return Link(live_broker, stack)


def study_uids(found: list[dict[str, Any]]) -> list[str]:
    return [study["0020000D"]["Value"][0] for study in found]


class TestStudySearch:
    def test_ohif_first_request_returns_exactly_the_linked_study(self, link: Link) -> None:
        found = link.search(
            {
                "StudyInstanceUID": LINKED.study_uid,
                "includefield": OHIF_STUDY_FIELDS,
                "limit": "101",
                "offset": "0",
                "fuzzymatching": "false",
            }
        )
        assert study_uids(found) == [LINKED.study_uid]
        assert found[0]["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy, OHIF's list column
        retrieve = found[0]["00081190"]["Value"][0]
        assert retrieve == link.study  # RetrieveURL points behind the link

    def test_ohif_study_list_with_backslash(self, link: Link) -> None:
        # OHIF joins several StudyInstanceUIDs with a backslash
        found = link.search({"StudyInstanceUID": f"{OTHER.study_uid}\\{LINKED.study_uid}"})
        assert study_uids(found) == [LINKED.study_uid]

    def test_search_without_filters_is_the_linked_study_only(self, link: Link) -> None:
        assert study_uids(link.search({})) == [LINKED.study_uid]
        assert study_uids(link.search({"ModalitiesInStudy": "CT"})) == [LINKED.study_uid]

    def test_priors_search_by_own_patient_is_the_linked_study(self, link: Link) -> None:
        found = link.search({"00100020": LINKED.raw["patient_id"], "includefield": "all"})
        assert study_uids(found) == [LINKED.study_uid]

    def test_wildcards_and_name_components_reach_the_pacs_unescaped(self, link: Link) -> None:
        # Orthanc does not percent-decode its query: ``*`` and ``^`` must arrive raw
        name = LINKED.raw["patient_name"]  # Synthetic^Alpha
        found = link.search({"PatientName": name[:-2] + "*", "includefield": OHIF_STUDY_FIELDS})
        assert study_uids(found) == [LINKED.study_uid]
        assert link.search({"PatientName": "Synthetic^Echo"}) == []  # the other patient's name

    def test_another_patients_priors_are_empty(self, link: Link) -> None:
        assert link.search({"PatientID": OTHER.raw["patient_id"]}) == []
        assert link.search({"00100020": OTHER.raw["patient_id"]}) == []

    @pytest.mark.parametrize(
        "params",
        [
            {"StudyInstanceUID": OTHER.study_uid},
            {"0020000D": OTHER.study_uid},
            {"0020000d": OTHER.study_uid},
            {"StudyInstanceUID": f"{OTHER.study_uid},{STUDY['stolaf-mr-vip'].study_uid}"},
        ],
    )
    def test_another_study_uid_is_empty(self, link: Link, params: dict[str, str]) -> None:
        assert link.search(params) == []

    def test_repeated_study_keys_cannot_override_the_forced_one(self, link: Link) -> None:
        # Orthanc honours the last of repeated keys; the broker's forced key is always last
        found = link.search(
            [("StudyInstanceUID", LINKED.study_uid), ("StudyInstanceUID", OTHER.study_uid)]
        )
        assert study_uids(found) == [LINKED.study_uid]
        found = link.search([("StudyInstanceUID", LINKED.study_uid), ("0020000d", OTHER.study_uid)])
        assert study_uids(found) == [LINKED.study_uid]

    def test_paging_past_the_study_is_empty(self, link: Link) -> None:
        assert link.search({"offset": "1"}) == []

    def test_python_dicomweb_client_searches_through_the_link(self, link: Link) -> None:
        client = DICOMwebClient(url=link.root, headers={"Authorization": f"Bearer {link.bearer}"})
        found = client.search_for_studies(search_filters={"PatientID": LINKED.raw["patient_id"]})
        assert study_uids(found) == [LINKED.study_uid]
        assert client.search_for_studies(search_filters={"PatientID": "MN-0001"}) == []

    def test_search_is_audited_as_a_view_of_the_linked_study(
        self, link: Link, live_broker: LiveBroker
    ) -> None:
        link.search({"PatientID": OTHER.raw["patient_id"]})
        # inside the link's decision window: recorded in the aggregated transfer records
        transferred = transfer_records(live_broker.audit)
        assert transferred[-1].study_uid == LINKED.study_uid
        assert transferred[-1].operations == ["view"]
        assert transferred[-1].outcome.value == "success"


class TestViewer:
    def test_series_qido_with_includefield(self, link: Link) -> None:
        series = link.get(f"{link.study}/series", {"includefield": "00080021,00080031"}).json()
        assert series and all("00080021" in s and "00080031" in s for s in series)
        assert all(s["0020000D"]["Value"] == [LINKED.study_uid] for s in series)
        assert all(s["00081190"]["Value"][0].startswith(f"{link.study}/series/") for s in series)
        everything = link.get(f"{link.study}/series", {"includefield": "all"}).json()
        assert len(everything) == len(series)

    def test_instance_qido_with_includefield(self, link: Link) -> None:
        series = link.first_series()
        at_series = link.get(
            f"{link.study}/series/{series}/instances", {"includefield": "00280010,00280011"}
        ).json()
        assert len(at_series) == LINKED.raw["instances"]
        assert all("00280010" in i and "00280011" in i for i in at_series)
        at_study = link.get(f"{link.study}/instances", {"includefield": "all"}).json()
        assert len(at_study) == LINKED.raw["instances"]

    def test_series_metadata_and_bulk_data_through_the_link(self, link: Link) -> None:
        series = link.first_series()
        metadata = link.get(f"{link.study}/series/{series}/metadata").json()
        assert len(metadata) == LINKED.raw["instances"]
        uris = [
            element["BulkDataURI"]
            for instance in metadata
            for element in instance.values()
            if isinstance(element, dict) and "BulkDataURI" in element
        ]
        assert uris and all(
            uri.startswith(f"{link.study}/series/{series}/instances/") for uri in uris
        )
        pixel = next(uri for uri in uris if uri.endswith("/bulk/7fe00010"))
        through = link.get(pixel, accept=BULK_ACCEPT)
        assert through.headers["content-type"].startswith("multipart/related")
        below_root = pixel.removeprefix(link.root + "/")
        straight = direct(link.stack, below_root, BULK_ACCEPT)
        assert straight.status_code == 200
        assert parts(through) == parts(straight) and len(parts(through)[0]) > 1000

    def test_frame(self, link: Link) -> None:
        series = link.first_series()
        sop = link.first_instance(series)
        path = f"studies/{LINKED.study_uid}/series/{series}/instances/{sop}/frames/1"
        frame = link.get(f"{link.root}/{path}", accept=FRAMES_ACCEPT)
        assert 'type="application/octet-stream' in frame.headers["content-type"]
        assert parts(frame) == parts(direct(link.stack, path, FRAMES_ACCEPT))

    @pytest.mark.parametrize(("accept", "magic"), [("image/jpeg", JPEG), ("image/png", PNG)])
    def test_rendered(self, link: Link, accept: str, magic: bytes) -> None:
        series = link.first_series()
        sop = link.first_instance(series)
        instance = f"{link.study}/series/{series}/instances/{sop}"
        for url in (
            f"{instance}/frames/1/rendered",
            f"{instance}/rendered",
            f"{link.study}/rendered",
        ):
            rendered = link.get(url, accept=accept)
            assert rendered.headers["content-type"] == accept
            assert rendered.content.startswith(magic)
        small = link.get(f"{instance}/rendered", {"viewport": "64,64"}, accept=accept)
        assert small.content.startswith(magic) and len(small.content) < len(rendered.content)

    def test_thumbnails_are_small_rendered_images(self, link: Link) -> None:
        # Orthanc's DICOMweb plugin has no thumbnail resource (404 at every level); the broker
        # answers a thumbnail with the rendered image at 128x128, as PS3.18 defines a thumbnail.
        series = link.first_series()
        sop = link.first_instance(series)
        instance = f"{link.study}/series/{series}/instances/{sop}"
        for url in (
            f"{link.study}/thumbnail",
            f"{link.study}/series/{series}/thumbnail",
            f"{instance}/thumbnail",
            f"{instance}/frames/1/thumbnail",
        ):
            thumbnail = link.get(url, accept="image/jpeg")
            assert thumbnail.headers["content-type"] == "image/jpeg"
            assert thumbnail.content.startswith(JPEG)
        frame = f"{instance}/frames/1".removeprefix(link.root + "/")
        assert (
            thumbnail.content
            == direct(link.stack, f"{frame}/rendered?viewport=128,128", "image/jpeg").content
        )
        unsupported = direct(link.stack, f"{frame}/thumbnail", "image/jpeg")
        assert unsupported.status_code == 404  # when this changes, Orthanc has learnt thumbnails

    def test_nothing_of_another_study_below_the_link(self, link: Link) -> None:
        other = link.get(f"{link.root}/studies/{OTHER.study_uid}/series", status=404)
        assert "Traceback" not in other.text
        # another study's series below the linked study's path: Orthanc checks the hierarchy
        orthanc = direct(link.stack, f"studies/{OTHER.study_uid}/series", DICOM_JSON).json()
        foreign = orthanc[0]["0020000E"]["Value"][0]
        link.get(f"{link.study}/series/{foreign}/metadata", status=404)
        link.get(f"{link.study}/series/{foreign}/thumbnail", accept="image/jpeg", status=404)
        assert link.get(f"{link.study}/series/{foreign}/instances").json() == []
