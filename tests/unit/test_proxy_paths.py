"""The DICOMweb proxy's paths and queries: every shape OHIF asks for, nothing outside the study.

No network: the PACS is an ``httpx.MockTransport`` that records what it was asked.
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response, StreamingResponse

from broker.config import PacsSettings
from broker.dicomweb.proxy import (
    DicomwebProxy,
    ParsedPath,
    parse_path,
    query_string,
    upstream_query,
)
from broker.errors import NotFound, UpstreamError

STUDY = "1.2.826.0.1.3680043.10.1119.1"
OTHER = "1.2.826.0.1.3680043.10.1119.2"
SERIES = "1.2.826.0.1.3680043.10.1119.1.1"
SOP = "1.2.826.0.1.3680043.10.1119.1.1.1"
INSTANCE = f"studies/{STUDY}/series/{SERIES}/instances/{SOP}"
PACS = "http://pacs.test:8042/dicom-web"
LINK = "https://broker.test/links/TOKEN/dicom-web"
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


# --- parse_path: the shapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "upstream", "operation", "query"),
    [
        ("studies", "studies", "view", True),
        ("studies/", "studies", "view", True),
        (f"studies/{STUDY}", f"studies/{STUDY}", "download", False),
        (f"studies/{STUDY}/metadata", f"studies/{STUDY}/metadata", "view", False),
        (f"studies/{STUDY}/rendered", f"studies/{STUDY}/rendered", "view", False),
        (f"studies/{STUDY}/thumbnail", f"studies/{STUDY}/rendered", "view", False),
        (f"studies/{STUDY}/series", f"studies/{STUDY}/series", "view", True),
        (f"studies/{STUDY}/instances", f"studies/{STUDY}/instances", "view", True),
        (f"studies/{STUDY}/series/{SERIES}", f"studies/{STUDY}/series/{SERIES}", "download", False),
        (
            f"studies/{STUDY}/series/{SERIES}/metadata",
            f"studies/{STUDY}/series/{SERIES}/metadata",
            "view",
            False,
        ),
        (
            f"studies/{STUDY}/series/{SERIES}/rendered",
            f"studies/{STUDY}/series/{SERIES}/rendered",
            "view",
            False,
        ),
        (
            f"studies/{STUDY}/series/{SERIES}/thumbnail",
            f"studies/{STUDY}/series/{SERIES}/rendered",
            "view",
            False,
        ),
        (
            f"studies/{STUDY}/series/{SERIES}/instances",
            f"studies/{STUDY}/series/{SERIES}/instances",
            "view",
            True,
        ),
        (INSTANCE, INSTANCE, "view", False),
        (f"{INSTANCE}/metadata", f"{INSTANCE}/metadata", "view", False),
        (f"{INSTANCE}/rendered", f"{INSTANCE}/rendered", "view", False),
        (f"{INSTANCE}/thumbnail", f"{INSTANCE}/rendered", "view", False),
        (f"{INSTANCE}/frames/1", f"{INSTANCE}/frames/1", "view", False),
        (f"{INSTANCE}/frames/1,2,3", f"{INSTANCE}/frames/1,2,3", "view", False),
        (f"{INSTANCE}/frames/2/rendered", f"{INSTANCE}/frames/2/rendered", "view", False),
        (f"{INSTANCE}/frames/2/thumbnail", f"{INSTANCE}/frames/2/rendered", "view", False),
        (f"{INSTANCE}/bulk/7fe00010", f"{INSTANCE}/bulk/7fe00010", "view", False),
        (f"{INSTANCE}/bulk/7FE00010", f"{INSTANCE}/bulk/7FE00010", "view", False),
        (
            f"{INSTANCE}/bulk/00540016/0/00181072",
            f"{INSTANCE}/bulk/00540016/0/00181072",
            "view",
            False,
        ),
    ],
)
def test_shapes(path: str, upstream: str, operation: str, query: bool) -> None:
    parsed = parse_path(path, STUDY)
    assert parsed.upstream == upstream
    assert parsed.operation == operation
    assert parsed.query is query
    assert parsed.study_uid == STUDY
    assert parsed.study_search is (upstream == "studies")
    assert parsed.rendered is upstream.endswith("/rendered")
    assert parsed.thumbnail is path.endswith("/thumbnail")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "studies//",
        f"studies/{OTHER}",
        f"studies/{OTHER}/metadata",
        f"studies/{STUDY}/series/{SERIES}/../../../{OTHER}",
        f"studies/{STUDY}/../{OTHER}",
        f"studies/{STUDY}//metadata",
        f"studies/{STUDY}/metadata%2F",
        f"studies/{STUDY}\\metadata",
        f"studies/{STUDY}/bulkdata",
        f"studies/{STUDY}/bulk/7fe00010",
        f"studies/{STUDY}/series/{SERIES}/bulk/7fe00010",
        f"studies/{STUDY}/series/01.2/metadata",
        f"studies/{STUDY}/series/{SERIES}/instances/x/metadata",
        f"{INSTANCE}/frames/0",
        f"{INSTANCE}/frames/1,a",
        f"{INSTANCE}/frames/1,",
        f"{INSTANCE}/frames/1/metadata",
        f"{INSTANCE}/bulk",
        f"{INSTANCE}/bulk/7fe0001",
        f"{INSTANCE}/bulk/7fe00010/0",
        f"{INSTANCE}/bulk/7fe00010/x/00181072",
        f"{INSTANCE}/bulk/7fe00010/01/00181072",
        f"{INSTANCE}/bulk/nonsense",
        f"{INSTANCE}/bulk/" + "/".join(["00540016", "0"] * 8 + ["00181072"]),
        "patients",
        "series",
        "instances",
        "studies/metadata",
    ],
)
def test_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        parse_path(path, STUDY)


def test_study_search_needs_a_valid_linked_uid() -> None:
    with pytest.raises(NotFound):
        parse_path("studies", "1.2.*")


def test_parsed_path_is_frozen() -> None:
    parsed = parse_path("studies", STUDY)
    with pytest.raises(AttributeError):
        parsed.study_uid = OTHER  # type: ignore[misc]


# --- upstream_query -----------------------------------------------------------------------


def search(query: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    return upstream_query(parse_path("studies", STUDY), query)


def test_ohif_first_request_is_forced_to_the_study() -> None:
    query = [
        ("StudyInstanceUID", STUDY),
        ("includefield", "00081030,00080060"),
        ("limit", "101"),
        ("offset", "0"),
        ("fuzzymatching", "false"),
    ]
    assert search(query) == [
        ("includefield", "00081030"),
        ("includefield", "00080060"),
        ("limit", "101"),
        ("offset", "0"),
        ("fuzzymatching", "false"),
        ("StudyInstanceUID", STUDY),
    ]


@pytest.mark.parametrize(
    "named",
    [STUDY, f"{OTHER}\\{STUDY}", f"{STUDY},{OTHER}", "*", "", f" {STUDY} "],
)
def test_study_lists_naming_the_linked_study(named: str) -> None:
    assert search([("StudyInstanceUID", named)]) == [("StudyInstanceUID", STUDY)]


@pytest.mark.parametrize(
    "query",
    [
        [("StudyInstanceUID", OTHER)],
        [("0020000D", OTHER)],
        [("0020000d", OTHER)],
        [("studyinstanceuid", OTHER)],
        [("StudyInstanceUID", f"{OTHER}\\1.2.3")],
        [("PatientID", "SO-0001"), ("StudyInstanceUID", OTHER)],
    ],
)
def test_other_studies_are_known_empty(query: list[tuple[str, str]]) -> None:
    assert search(query) is None


def test_priors_search_passes_the_patient_filter_but_forces_the_study() -> None:
    assert search([("00100020", "MN-0001"), ("ModalitiesInStudy", "CT")]) == [
        ("00100020", "MN-0001"),
        ("ModalitiesInStudy", "CT"),
        ("StudyInstanceUID", STUDY),
    ]


def test_forced_uid_survives_the_parameter_cap() -> None:
    query = [("includefield", ",".join(f"0008{n:04X}" for n in range(100)))]
    params = search(query)
    assert params is not None
    assert len(params) == 33 and params[-1] == ("StudyInstanceUID", STUDY)


def test_unknown_keys_and_long_values() -> None:
    params = search([("../x", "1"), ("a.b", "2"), ("PatientName", "x" * 1000), ("expand", "")])
    assert params == [("PatientName", "x" * 256), ("expand", ""), ("StudyInstanceUID", STUDY)]


def test_series_and_instance_qido() -> None:
    for path in (
        f"studies/{STUDY}/series",
        f"studies/{STUDY}/instances",
        f"studies/{STUDY}/series/{SERIES}/instances",
    ):
        parsed = parse_path(path, STUDY)
        assert upstream_query(parsed, [("includefield", "all")]) == [("includefield", "all")]
        assert upstream_query(parsed, [("includefield", "00080021,00080031")]) == [
            ("includefield", "00080021"),
            ("includefield", "00080031"),
        ]
        # the path names the study; a study key in the query is dropped, or matches nothing
        assert upstream_query(parsed, [("StudyInstanceUID", STUDY)]) == []
        assert upstream_query(parsed, [("StudyInstanceUID", OTHER)]) is None


def test_retrieve_takes_no_query() -> None:
    for path in (f"studies/{STUDY}/metadata", f"{INSTANCE}/frames/1", f"{INSTANCE}/bulk/7fe00010"):
        assert upstream_query(parse_path(path, STUDY), [("includefield", "all")]) == []


def test_rendered_and_thumbnail_parameters() -> None:
    rendered = parse_path(f"{INSTANCE}/rendered", STUDY)
    thumbnail = parse_path(f"{INSTANCE}/thumbnail", STUDY)
    good = [("viewport", "64,64"), ("quality", "90"), ("window", "40,400,linear")]
    assert upstream_query(rendered, good) == good
    assert upstream_query(rendered, []) == []
    assert upstream_query(thumbnail, []) == [("viewport", "128,128")]
    assert upstream_query(thumbnail, [("viewport", "64,64")]) == [("viewport", "64,64")]
    bad = [
        ("viewport", "64"),
        ("viewport", "64,64,1"),
        ("quality", "101"),
        ("window", "a,b"),
        ("includefield", "all"),
        ("StudyInstanceUID", OTHER),
    ]
    assert upstream_query(rendered, bad) == []
    assert upstream_query(rendered, [("viewport", "1,2,0,0,10.5,-3"), ("viewport", "9,9")]) == [
        ("viewport", "1,2,0,0,10.5,-3")
    ]


# --- properties ---------------------------------------------------------------------------

segments = st.one_of(
    st.sampled_from(
        [
            "studies",
            STUDY,
            OTHER,
            SERIES,
            SOP,
            "series",
            "instances",
            "metadata",
            "frames",
            "rendered",
            "thumbnail",
            "bulk",
            "bulkdata",
            "7fe00010",
            "0",
            "1",
            "1,2",
            "..",
            ".",
            "",
            "%2F",
        ]
    ),
    st.text(alphabet=string.printable, max_size=12),
)
keys = st.one_of(
    st.sampled_from(
        [
            "StudyInstanceUID",
            "studyinstanceuid",
            "STUDYINSTANCEUID",
            "0020000D",
            "0020000d",
            "PatientID",
            "00100020",
            "includefield",
            "limit",
            "offset",
            "viewport",
            "quality",
            "window",
            "SeriesInstanceUID",
        ]
    ),
    st.text(max_size=10),
)
values = st.one_of(
    st.sampled_from(
        [STUDY, OTHER, f"{OTHER}\\{STUDY}", f"{STUDY},{OTHER}", "*", "", "all", "64,64", "1"]
    ),
    st.text(max_size=20),
)
queries = st.lists(st.tuples(keys, values), max_size=40)


def assert_confined(parsed: ParsedPath, params: list[tuple[str, str]] | None) -> None:
    if parsed.study_search:
        assert parsed.upstream == "studies"
        if params is not None:
            # exactly one study key, the linked study, last (Orthanc honours the last one)
            uid_keys = [(k, v) for k, v in params if k.lower() in ("studyinstanceuid", "0020000d")]
            assert uid_keys == [("StudyInstanceUID", STUDY)]
            assert params[-1] == ("StudyInstanceUID", STUDY)
    else:
        assert parsed.upstream.startswith(f"studies/{STUDY}/") or parsed.upstream == (
            f"studies/{STUDY}"
        )
        segments = parsed.upstream.split("/")
        assert all(s and s not in (".", "..") and "%" not in s for s in segments)
        if params is not None:
            assert not any(k.lower() in ("studyinstanceuid", "0020000d") for k, _ in params)


@given(st.lists(segments, max_size=10), queries)
@settings(max_examples=1000)
def test_nothing_generated_leaves_the_study(parts: list[str], query: list[tuple[str, str]]) -> None:
    try:
        parsed = parse_path("/".join(parts), STUDY)
    except NotFound:
        return
    assert parsed.operation in ("view", "download")
    params = upstream_query(parsed, query)
    assert_confined(parsed, params)
    assert params is None or len(params) <= 33


@given(queries)
@settings(max_examples=500)
def test_every_study_search_is_forced(query: list[tuple[str, str]]) -> None:
    parsed = parse_path("studies", STUDY)
    params = upstream_query(parsed, query)
    assert_confined(parsed, params)
    named = [v for k, v in query if k.lower() in ("studyinstanceuid", "0020000d")]
    if params is None:
        assert named  # only a client naming studies is answered empty without asking


def as_orthanc_reads(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The query httpx sends for ``params``, split as Orthanc 1.10 does: no percent-decoding."""
    request = httpx.Request("GET", f"{PACS}/studies?{query_string(params)}")
    raw = request.url.raw_path.split(b"?", 1)[1].decode("ascii")
    pairs = [part.partition("=") for part in raw.split("&")] if raw else []
    return [(key, value) for key, _, value in pairs]


def test_query_string_keeps_dicom_matching_characters_raw() -> None:
    params = [
        ("PatientName", "Synth*^Al?ha"),
        ("ModalitiesInStudy", "CT\\MR"),
        ("viewport", "64,64"),
        ("StudyDate", "20040101-20041231"),
    ]
    assert as_orthanc_reads(params) == params


def test_query_string_cannot_smuggle_a_parameter() -> None:
    params = [("PatientID", f"x&StudyInstanceUID={OTHER}#"), ("StudyInstanceUID", STUDY)]
    read = as_orthanc_reads(params)
    assert [key for key, _ in read] == ["PatientID", "StudyInstanceUID"]
    assert read[-1] == ("StudyInstanceUID", STUDY)
    assert "&" not in read[0][1] and "#" not in read[0][1]


@given(queries)
@settings(max_examples=500)
def test_orthanc_sees_only_the_forced_study(query: list[tuple[str, str]]) -> None:
    params = upstream_query(parse_path("studies", STUDY), query)
    if params is None:
        return
    read = as_orthanc_reads(params)
    assert len(read) == len(params)
    uid_keys = [(k, v) for k, v in read if k.lower() in ("studyinstanceuid", "0020000d")]
    assert uid_keys == [("StudyInstanceUID", STUDY)] and read[-1] == uid_keys[0]


# --- forward, against a recording PACS ----------------------------------------------------


class Pacs:
    """A fake PACS: records requests, answers with what the test says."""

    def __init__(self, response: httpx.Response | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.response = response or httpx.Response(200, json=[])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response

    @property
    def last(self) -> tuple[str, list[tuple[str, str]]]:
        url = urlsplit(str(self.requests[-1].url))
        return url.path, parse_qsl(url.query, keep_blank_values=True)


def study_json(uid: str) -> dict[str, object]:
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{uid}"]},
    }


async def forward(
    pacs: Pacs, path: str, query: list[tuple[str, str]], headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.MockTransport(pacs)) as http:
        proxy = DicomwebProxy(PacsSettings(url=PACS, username="u", password="p"), http)
        response = await proxy.forward(parse_path(path, STUDY), query, headers or {}, LINK)
        if isinstance(response, StreamingResponse):
            chunks = [
                c.encode() if isinstance(c, str) else bytes(c) async for c in response.body_iterator
            ]
            body = b"".join(chunks)
            if response.background is not None:
                await response.background()  # closes the PACS's answer
        else:
            body = bytes(response.body)
        return httpx.Response(response.status_code, headers=dict(response.headers), content=body)


async def test_study_search_is_forced_and_filtered() -> None:
    # a PACS that ignored the filter and answered every study
    pacs = Pacs(httpx.Response(200, json=[study_json(OTHER), study_json(STUDY)]))
    answer = await forward(
        pacs, "studies", [("StudyInstanceUID", STUDY), ("includefield", "00081030,00080060")]
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/dicom+json"
    assert answer.headers["cache-control"] == "no-store"
    assert [s["0020000D"]["Value"] for s in answer.json()] == [[STUDY]]
    assert answer.json()[0]["00081190"]["Value"] == [f"{LINK}/studies/{STUDY}"]
    path, params = pacs.last
    assert path == "/dicom-web/studies"
    assert params == [
        ("includefield", "00081030"),
        ("includefield", "00080060"),
        ("StudyInstanceUID", STUDY),
    ]
    assert pacs.requests[-1].headers["accept"] == "application/dicom+json"


async def test_study_search_for_other_studies_never_asks_the_pacs() -> None:
    pacs = Pacs()
    answer = await forward(pacs, "studies", [("StudyInstanceUID", OTHER)])
    assert (answer.status_code, answer.json()) == (200, [])
    assert answer.headers["content-type"] == "application/dicom+json"
    assert pacs.requests == []


@pytest.mark.parametrize("status", [204, 400, 404])
async def test_study_search_that_finds_nothing_is_empty(status: int) -> None:
    answer = await forward(Pacs(httpx.Response(status)), "studies", [("PatientID", "MN-0001")])
    assert (answer.status_code, answer.json()) == (200, [])


async def test_study_search_with_garbage_is_502() -> None:
    with pytest.raises(UpstreamError):
        await forward(Pacs(httpx.Response(200, content=b"<xml/>")), "studies", [])


async def test_series_qido_204_is_empty_list() -> None:
    answer = await forward(Pacs(httpx.Response(204)), f"studies/{STUDY}/series", [])
    assert (answer.status_code, answer.json()) == (200, [])


async def test_series_qido_404_stays_404() -> None:
    with pytest.raises(NotFound):
        await forward(Pacs(httpx.Response(404)), f"studies/{STUDY}/series", [])


async def test_frames_pass_accept_and_stream() -> None:
    body = b"--b\r\nContent-Type: application/octet-stream\r\n\r\nPIXELS\r\n--b--"
    pacs = Pacs(
        httpx.Response(
            200,
            content=body,
            headers={
                "content-type": 'multipart/related; type="application/octet-stream"; boundary=b'
            },
        )
    )
    answer = await forward(pacs, f"{INSTANCE}/frames/1", [("x", "y")], {"accept": FRAMES_ACCEPT})
    assert answer.status_code == 200 and answer.content == body
    assert pacs.requests[-1].headers["accept"] == FRAMES_ACCEPT
    assert pacs.last == (f"/dicom-web/{INSTANCE}/frames/1", [])


async def test_thumbnail_is_rendered_at_a_thumbnail_viewport() -> None:
    pacs = Pacs(httpx.Response(200, content=b"JPEG", headers={"content-type": "image/jpeg"}))
    answer = await forward(
        pacs, f"studies/{STUDY}/series/{SERIES}/thumbnail", [], {"accept": "image/jpeg"}
    )
    assert answer.status_code == 200 and answer.content == b"JPEG"
    assert pacs.last == (
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/rendered",
        [("viewport", "128,128")],
    )
    assert pacs.requests[-1].headers["accept"] == "image/jpeg"


@pytest.mark.parametrize(
    "uri",
    [
        f"{PACS}/{INSTANCE}/bulk/7fe00010",
        f"https://pacs.test:8042/dicom-web/{INSTANCE}/bulk/7fe00010",
        f"{PACS}/{INSTANCE}/bulk/7fe00010".replace("/", "\\/"),  # JSON's escaped solidus
    ],
)
async def test_bulk_data_uris_are_rewritten(uri: str) -> None:
    metadata = '[{"7FE00010": {"vr": "OW", "BulkDataURI": "' + uri + '"}}]'
    pacs = Pacs(
        httpx.Response(
            200, content=metadata.encode(), headers={"content-type": "application/dicom+json"}
        )
    )
    answer = await forward(pacs, f"studies/{STUDY}/series/{SERIES}/metadata", [])
    assert answer.json()[0]["7FE00010"]["BulkDataURI"] == f"{LINK}/{INSTANCE}/bulk/7fe00010"
    assert "pacs.test" not in answer.text


async def test_rewrite_covers_a_default_port_root() -> None:
    async with httpx.AsyncClient() as http:
        proxy = DicomwebProxy(PacsSettings(url="http://pacs.test/dicom-web"), http)
    body = json.dumps(
        {"a": "http://pacs.test/dicom-web/studies/1", "b": "https://pacs.test:443/dicom-web/x"}
    )
    out = json.loads(proxy.rewrite(body.encode(), LINK))
    assert out == {"a": f"{LINK}/studies/1", "b": f"{LINK}/x"}


# --- the relay: bytes as the PACS has them, small answers in one write --------------------

FRAME = f"{INSTANCE}/frames/1"


async def relay(pacs: Pacs, path: str = FRAME) -> tuple[Response, bytes, list[tuple[int, bool]]]:
    reports: list[tuple[int, bool]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(pacs)) as http:
        proxy = DicomwebProxy(PacsSettings(url=PACS), http)
        response = await proxy.forward(
            parse_path(path, STUDY), [], {}, LINK, on_done=lambda n, ok: reports.append((n, ok))
        )
        if isinstance(response, StreamingResponse):
            body = b"".join(
                [
                    c.encode() if isinstance(c, str) else bytes(c)
                    async for c in response.body_iterator
                ]
            )
            if response.background is not None:
                await response.background()
        else:
            body = bytes(response.body)
    return response, body, reports


async def test_the_pacs_is_asked_for_its_bytes_unencoded() -> None:
    pacs = Pacs(httpx.Response(200, content=b"x" * 10))
    await relay(pacs)
    assert pacs.requests[-1].headers["accept-encoding"] == "identity"


async def test_a_frame_is_read_whole_and_sent_in_one_write() -> None:
    frame = bytes(range(256)) * 512
    pacs = Pacs(
        httpx.Response(200, content=frame, headers={"content-type": "application/octet-stream"})
    )
    response, body, reports = await relay(pacs)
    assert not isinstance(response, StreamingResponse)
    assert body == frame and response.headers["content-length"] == str(len(frame))
    assert reports == [(len(frame), True)]


async def test_an_answer_without_a_length_is_streamed_and_reported_at_its_end() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 1000

    pacs = Pacs(httpx.Response(200, content=chunks()))
    response, body, reports = await relay(pacs, f"studies/{STUDY}")
    assert isinstance(response, StreamingResponse)
    assert body == b"y" * 3000
    assert reports == [(3000, True)]


async def test_a_json_answer_is_reported_with_its_rewritten_size() -> None:
    metadata = json.dumps([{"00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{STUDY}"]}}])
    pacs = Pacs(
        httpx.Response(
            200, content=metadata.encode(), headers={"content-type": "application/dicom+json"}
        )
    )
    _, body, reports = await relay(pacs, f"studies/{STUDY}/metadata")
    assert reports == [(len(body), True)]
