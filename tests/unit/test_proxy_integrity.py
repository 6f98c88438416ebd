"""The proxy with the integrity check on: what reaches the client of an altered answer.

The PACS is an ``httpx.MockTransport``; a streamed answer is one without a Content-Length.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.responses import StreamingResponse

from broker.config import PacsSettings
from broker.dicomweb.integrity import Finding, ReadCheck
from broker.dicomweb.proxy import CutOff, DicomwebProxy, parse_path
from broker.errors import Forbidden, IntegrityViolation
from broker.fingerprints import Recorded

STUDY = "1.2.826.0.1.3680043.10.1119.1"
SERIES = "1.2.826.0.1.3680043.10.1119.1.1"
SOP = "1.2.826.0.1.3680043.10.1119.1.1.1"
PACS = "http://pacs.test/dicom-web"
LINK = "http://broker.test/links/t/dicom-web"
FRAMES = f"studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1,2"
FRAME_DATA = (b"A" * 70_000, b"B" * 70_000)
BOUNDARY = "xyz"
CONTENT_TYPE = f"multipart/related; type=application/octet-stream; boundary={BOUNDARY}"


def multipart(frames: tuple[bytes, ...]) -> bytes:
    out = b""
    for frame in frames:
        out += f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += frame + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


RECORDED = Recorded(
    hashlib.sha256(b"file").digest(),
    tuple(hashlib.sha256(f).digest() for f in FRAME_DATA),
    "1.2.840.10008.1.2.1",
)


class Chunks(httpx.AsyncByteStream):
    def __init__(self, body: bytes, size: int = 8192) -> None:
        self._body, self._size = body, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self._body), self._size):
            yield self._body[at : at + self._size]


def pacs(body: bytes, *, streamed: bool) -> httpx.MockTransport:
    def answer(_: httpx.Request) -> httpx.Response:
        if streamed:  # no Content-Length: relayed chunk by chunk
            return httpx.Response(200, headers={"content-type": CONTENT_TYPE}, stream=Chunks(body))
        return httpx.Response(200, headers={"content-type": CONTENT_TYPE}, content=body)

    return httpx.MockTransport(answer)


@pytest.fixture
def findings() -> Iterator[list[Finding]]:
    yield []


def check(findings: list[Finding], recorded: Recorded | None = RECORDED) -> ReadCheck:
    async def report(finding: Finding) -> None:
        findings.append(finding)

    return ReadCheck(lambda uid: recorded if uid == SOP else None, "refuse", report)


async def forward(
    transport: httpx.MockTransport, read_check: ReadCheck
) -> tuple[bytes, BaseException | None]:
    async with httpx.AsyncClient(transport=transport) as http:
        proxy = DicomwebProxy(PacsSettings(url=PACS), http)
        response = await proxy.forward(parse_path(FRAMES, STUDY), [], {}, LINK, check=read_check)
        if not isinstance(response, StreamingResponse):
            return bytes(response.body), None
        got, error = b"", None
        try:
            async for chunk in response.body_iterator:
                got += chunk if isinstance(chunk, bytes) else chunk.encode()
        except CutOff as exc:
            error = exc
        return got, error


async def test_intact_streamed_answer_is_relayed_whole(findings: list[Finding]) -> None:
    body = multipart(FRAME_DATA)
    got, error = await forward(pacs(body, streamed=True), check(findings))
    assert (got, error, findings) == (body, None, [])


async def test_altered_streamed_frame_is_cut_before_it_completes(findings: list[Finding]) -> None:
    body = multipart((FRAME_DATA[0], b"B" * 69_999 + b"!"))
    got, error = await forward(pacs(body, streamed=True), check(findings))
    assert isinstance(error, CutOff)
    assert body.startswith(got) and len(got) < body.rindex(b"!")  # frame 2 never arrived whole
    assert [(f.finding, f.action, f.frame) for f in findings] == [("altered", "cut_off", 2)]


async def test_altered_answer_read_whole_is_not_relayed(findings: list[Finding]) -> None:
    body = multipart((b"A" * 69_999 + b"!", FRAME_DATA[1]))
    with pytest.raises(IntegrityViolation):
        await forward(pacs(body, streamed=False), check(findings))
    assert [(f.finding, f.frame) for f in findings] == [("altered", 1)]


async def test_unfingerprinted_instance_refused_before_the_pacs_is_asked(
    findings: list[Finding],
) -> None:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200)

    with pytest.raises(Forbidden):
        await forward(httpx.MockTransport(answer), check(findings, recorded=None))
    assert asked == []
    assert [(f.finding, f.action) for f in findings] == [("unfingerprinted", "refused")]
