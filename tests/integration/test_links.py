"""Study links end to end: issued on a decision, redeemed by a real DICOMweb client (Orthanc)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from broker.identity.principal import Principal
from broker.links.endpoints import subject_binding
from broker.links.token import LinkClaims
from devstack.samples import sample_studies
from devstack.services import orthanc_client
from devstack.stack import Stack
from tests.integration.conftest import LiveBroker
from tests.integration.helpers import orthanc_dicomweb, password_token, transfer_records

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def token(stack: Stack, user: str, realm: str = "hospital-a") -> str:
    return password_token(stack.services["keycloak"].endpoints[realm], user, realm=realm)


def issue(live: LiveBroker, bearer: str, study: str, operations: list[str]) -> dict[str, Any]:
    response = httpx.post(
        f"{live.url}/api/links",
        json={"study_uid": STUDY[study].study_uid, "operations": operations},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    link: dict[str, Any] = response.json()
    return link


def parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
    assert boundary, response.headers["content-type"]
    out = []
    for chunk in response.content.split(b"--" + boundary.group(1).encode())[1:-1]:
        out.append(chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    return out


def direct(stack: Stack, path: str, accept: str) -> httpx.Response:
    orthanc = stack.services["orthanc"]
    with orthanc_client(orthanc, timeout=30) as client:
        return client.get(f"{orthanc.endpoints['dicomweb']}/{path}", headers={"Accept": accept})


class TestIssue:
    def test_link_is_compact_and_opaque(self, live_broker: LiveBroker, stack: Stack) -> None:
        link = issue(live_broker, token(stack, "ada"), "stolaf-ct-chest", ["view"])
        sealed = link["dicomweb_root"].split("/links/")[1].split("/")[0]
        assert len(sealed) < 450  # a few hundred characters
        assert STUDY["stolaf-ct-chest"].study_uid not in sealed
        assert "npi" not in sealed and "1000000001" not in sealed
        assert 0 < link["expires_at"] - time.time() <= 600
        assert live_broker.audit.kinds()[-2:] == ["decision", "link.issued"]

    def test_decision_and_link_issued_are_one_durable_write(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        writes: list[list[str]] = []
        sink = live_broker.audit
        original = sink.emit_many

        async def counting(events: Any) -> None:
            writes.append([e.kind.value for e in events])
            await original(events)

        sink.emit_many = counting  # type: ignore[method-assign]
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        assert writes == [["decision", "link.issued"]]
        decided, issued = sink.events[-2:]
        assert (issued.link_id, issued.decision_id) == (link["link_id"], decided.decision_id)

    def test_denied_issue_is_403_with_reasons(self, live_broker: LiveBroker, stack: Stack) -> None:
        response = httpx.post(
            f"{live_broker.url}/api/links",
            json={"study_uid": STUDY["stolaf-ct-optout"].study_uid},
            headers={"Authorization": f"Bearer {token(stack, 'ada')}"},
        )
        assert response.status_code == 403, response.text
        assert "consent_denied" in response.json()["detail"]

    def test_step_up_is_401_insufficient_user_authentication(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        response = httpx.post(
            f"{live_broker.url}/api/links",
            json={"study_uid": STUDY["mercy-ct-head"].study_uid},
            headers={"Authorization": f"Bearer {token(stack, 'fay', 'hospital-b')}"},
        )
        assert response.status_code == 401, response.text
        challenge = response.headers["www-authenticate"]
        assert challenge == (
            'Bearer error="insufficient_user_authentication", acr_values="2", max_age="3600"'
        )


class TestRedeem:
    def test_dicomweb_client_retrieves_identical_instances(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        study = STUDY["stolaf-ct-chest"]
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view", "download"])
        client = DICOMwebClient(
            url=link["dicomweb_root"], headers={"Authorization": f"Bearer {ada}"}
        )
        through_link = client.retrieve_study(study.study_uid)
        orthanc = stack.services["orthanc"]
        plain = orthanc_dicomweb(orthanc)
        straight = plain.retrieve_study(study.study_uid)
        assert len(through_link) == len(straight) == study.raw["instances"]
        by_uid = {str(ds.SOPInstanceUID): ds for ds in straight}
        for ds in through_link:
            assert ds == by_uid[str(ds.SOPInstanceUID)]
        # byte for byte, part by part
        linked = httpx.get(
            f"{link['dicomweb_root']}/studies/{study.study_uid}",
            headers={"Accept": MULTIPART_DICOM, "Authorization": f"Bearer {ada}"},
            timeout=30,
        )
        assert linked.status_code == 200, linked.text
        assert sorted(parts(linked)) == sorted(
            parts(direct(stack, f"studies/{study.study_uid}", MULTIPART_DICOM))
        )
        # the reads were under the window the first one opened: its grant, then the transfers
        assert "link.granted" in live_broker.audit.kinds()
        transferred = transfer_records(live_broker.audit, link["link_id"])
        assert transferred and all(e.study_uid == study.study_uid for e in transferred)

    def test_metadata_urls_stay_behind_the_link(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        study = STUDY["stolaf-ct-chest"]
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        client = DICOMwebClient(
            url=link["dicomweb_root"], headers={"Authorization": f"Bearer {ada}"}
        )
        series = client.search_for_series(study.study_uid)
        metadata = client.retrieve_study_metadata(study.study_uid)
        urls = [s["00081190"]["Value"][0] for s in series if "00081190" in s]
        urls += [
            element["BulkDataURI"]
            for instance in metadata
            for element in instance.values()
            if isinstance(element, dict) and "BulkDataURI" in element
        ]
        assert urls, "expected RetrieveURL / BulkDataURI values to check"
        assert all(url.startswith(link["dicomweb_root"] + "/") for url in urls), urls
        pacs = stack.services["orthanc"].endpoints["url"]
        assert not any(pacs in url for url in urls)

    def test_view_only_link_cannot_download(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        response = httpx.get(
            link["url"], headers={"Accept": MULTIPART_DICOM, "Authorization": f"Bearer {ada}"}
        )
        assert response.status_code == 403, response.text

    def test_another_persons_link_is_403(self, live_broker: LiveBroker, stack: Stack) -> None:
        link = issue(live_broker, token(stack, "ada"), "stolaf-ct-chest", ["view"])
        response = httpx.get(
            f"{link['url']}/metadata", headers={"Authorization": f"Bearer {token(stack, 'ben')}"}
        )
        assert response.status_code == 403, response.text
        assert live_broker.audit.events[-1].reasons == ["not_link_holder"]

    def test_link_alone_is_not_enough(self, live_broker: LiveBroker, stack: Stack) -> None:
        link = issue(live_broker, token(stack, "ada"), "stolaf-ct-chest", ["view"])
        response = httpx.get(f"{link['url']}/metadata")
        assert response.status_code == 401, response.text

    @pytest.mark.parametrize(
        "suffix",
        [
            "/../../studies/1.2.3/metadata",
            "/series/..%2F..%2Fstudies",
            "%2Fmetadata",
            "/series/1.2.3/instances/1.2.4/frames/0",
            "/series/1.2.3/instances/1.2.4/frames/1,a",
            "/bulkdata/../../system",
            "/series/../../../../tools/find",
        ],
    )
    def test_paths_outside_the_study_are_404(
        self, live_broker: LiveBroker, stack: Stack, suffix: str
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view", "download"])
        response = httpx.get(link["url"] + suffix, headers={"Authorization": f"Bearer {ada}"})
        assert response.status_code == 404, (suffix, response.status_code, response.text)

    def test_other_study_through_the_link_is_404(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view", "download"])
        other = STUDY["stolaf-mr-vip"].study_uid
        response = httpx.get(
            f"{link['dicomweb_root']}/studies/{other}/metadata",
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert response.status_code == 404

    @pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
    def test_writes_are_not_allowed(
        self, live_broker: LiveBroker, stack: Stack, method: str
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view", "download"])
        response = httpx.request(method, link["url"], headers={"Authorization": f"Bearer {ada}"})
        assert response.status_code == 405

    def test_tampered_garbage_and_unknown_key_are_404(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        sealed = link["dicomweb_root"].split("/links/")[1].split("/")[0]
        flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
        unknown_key = "v1.retired." + sealed.split(".", 2)[2]
        for bad in (flipped, "garbage", unknown_key, sealed[:50]):
            url = link["url"].replace(sealed, bad) + "/metadata"
            response = httpx.get(url, headers={"Authorization": f"Bearer {ada}"})
            assert response.status_code == 404, (bad, response.text)
            assert "Traceback" not in response.text

    def test_expired_link_410s(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        study = STUDY["stolaf-ct-chest"].study_uid
        now = int(time.time())
        claims = LinkClaims(
            subject="npi:1000000001",
            issuer=stack.services["keycloak"].endpoints["hospital-a"],
            study_uid=study,
            operations=("view",),
            expires_at=now - 1,
            issued_at=now - 601,
            binding={"sub": "x"},
        )
        sealed = live_broker.app.state.telerad.links.seal(claims)
        response = httpx.get(
            f"{live_broker.url}/links/{sealed}/dicom-web/studies/{study}/metadata",
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert response.status_code == 410, response.text

    def test_revoked_link_stops_at_once(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        headers = {"Authorization": f"Bearer {ada}"}
        assert httpx.get(f"{link['url']}/metadata", headers=headers).status_code == 200
        revoked = httpx.post(
            f"{live_broker.url}/api/links/{link['link_id']}/revoke", headers=headers
        )
        assert revoked.status_code == 204, revoked.text
        assert httpx.get(f"{link['url']}/metadata", headers=headers).status_code == 410

    def test_redeem_asks_the_policy_again(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        before = len([e for e in live_broker.audit.events if e.action == "redeem"])
        assert (
            httpx.get(
                f"{link['url']}/series", headers={"Authorization": f"Bearer {ada}"}
            ).status_code
            == 200
        )
        events = [e for e in live_broker.audit.events if e.action == "redeem"][before:]
        # the redeem decision and the window it opens (its grant), made durable together
        assert [e.kind.value for e in events][:2] == ["decision", "link.granted"]
        assert events[0].outcome.value == "allow"
        assert events[1].decision_id == events[0].decision_id
        (record,) = transfer_records(live_broker.audit, link["link_id"])
        assert record.detail["requests"] == 1 and record.detail["bytes"] > 0
        assert record.detail["grant_event"] == events[1].id


class TestDpopBinding:
    def test_link_bound_to_the_clients_key(self, live_broker: LiveBroker, stack: Stack) -> None:
        from tests.dpop_client import DpopClient

        ada = token(stack, "ada")
        client = DpopClient()
        issue_url = f"{live_broker.url}/api/links"
        issued = httpx.post(
            issue_url,
            json={"study_uid": STUDY["stolaf-ct-chest"].study_uid},
            headers={"Authorization": f"Bearer {ada}", "DPoP": client.proof("POST", issue_url)},
        )
        assert issued.status_code == 200, issued.text
        target = issued.json()["url"] + "/metadata"

        def get(proof: str | None) -> int:
            headers = {"Authorization": f"Bearer {ada}"} | ({"DPoP": proof} if proof else {})
            return httpx.get(target, headers=headers, timeout=30).status_code

        assert get(client.proof("GET", target)) == 200
        assert get(None) == 403  # the token alone is not enough: the key is
        assert get(DpopClient().proof("GET", target)) == 403  # someone else's key
        assert get(client.proof("GET", target + "x")) == 401  # a proof for another URL

    def test_bad_proof_on_issue_is_401(self, live_broker: LiveBroker, stack: Stack) -> None:
        response = httpx.post(
            f"{live_broker.url}/api/links",
            json={"study_uid": STUDY["stolaf-ct-chest"].study_uid},
            headers={"Authorization": f"Bearer {token(stack, 'ada')}", "DPoP": "not.a.proof"},
        )
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_dpop_proof"'


class TestPacsDown:
    @pytest.fixture
    def broker_env(self, broker_env: dict[str, str]) -> dict[str, str]:
        import os

        from devstack._procs import free_port

        dead = f"https://127.0.0.1:{free_port()}/dicom-web"  # nobody listens there
        os.environ["TELERAD_PACS__URL"] = dead
        return broker_env | {"TELERAD_PACS__URL": dead}

    def test_pacs_down_is_502(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        response = httpx.post(
            f"{live_broker.url}/api/links",
            json={"study_uid": STUDY["stolaf-ct-chest"].study_uid},
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert response.status_code == 502, response.text
        study = STUDY["stolaf-ct-chest"].study_uid
        now = int(time.time())
        issuer = stack.services["keycloak"].endpoints["hospital-a"]
        principal = Principal(id="npi:1000000001", issuer=issuer, subject="ada")
        sealed = live_broker.app.state.telerad.links.seal(
            LinkClaims(
                subject="npi:1000000001",
                issuer=stack.services["keycloak"].endpoints["hospital-a"],
                study_uid=study,
                operations=("view",),
                expires_at=now + 60,
                issued_at=now,
                binding={"sub": subject_binding(principal)},
            )
        )
        redeemed = httpx.get(
            f"{live_broker.url}/links/{sealed}/dicom-web/studies/{study}/metadata",
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert redeemed.status_code == 502, redeemed.text
