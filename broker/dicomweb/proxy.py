"""The DICOMweb proxy behind a study link: only that study, only read, streamed.

A viewer speaks plain DICOMweb under ``/links/<token>/dicom-web/``. Each path is parsed against
the few shapes QIDO-RS and WADO-RS define below one study; anything else is not found. The PACS
answer is streamed through untouched (multipart/related included), except DICOM JSON, whose
URLs (RetrieveURL, BulkDataURI) are rewritten to stay behind the link.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlencode

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from broker.config import PacsSettings
from broker.dicomweb.facts import valid_uid
from broker.errors import NotFound, UpstreamError

__all__ = ["DicomwebProxy", "ParsedPath", "parse_path"]

Operation = Literal["view", "download"]

_FRAMES = re.compile(r"^[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,63}$")
# QIDO-RS query keys passed through: paging, field selection, and attribute matches by
# keyword or tag. Values are length-capped; the PACS sees nothing else.
_QIDO_KEYS = re.compile(
    r"^(limit|offset|includefield|fuzzymatching|[A-Za-z]{2,64}|[0-9A-Fa-f]{8})$"
)
_PASS_HEADERS = ("accept",)
_RETURN_HEADERS = ("content-type", "content-length", "content-encoding", "etag", "last-modified")
_JSON_TYPES = ("application/dicom+json", "application/json")


@dataclass(frozen=True)
class ParsedPath:
    """A DICOMweb request below one study, and the operation it needs."""

    upstream: str  # path below the PACS's DICOMweb root, rebuilt from validated parts
    operation: Operation
    query: bool  # QIDO-RS search (query parameters allowed)


def parse_path(path: str, study_uid: str) -> ParsedPath:
    """Validate ``path`` (below ``dicom-web/``) for the linked study; :class:`NotFound` if not."""
    if "%" in path or "\\" in path or "//" in path:
        raise NotFound()
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "studies" or parts[1] != study_uid:
        raise NotFound()
    rest = parts[2:]
    base = f"studies/{study_uid}"

    def uid(value: str) -> str:
        if not valid_uid(value):
            raise NotFound()
        return value

    match rest:
        case []:
            return ParsedPath(base, "download", False)
        case ["metadata"]:
            return ParsedPath(f"{base}/metadata", "view", False)
        case ["series"]:
            return ParsedPath(f"{base}/series", "view", True)
        case ["instances"]:
            return ParsedPath(f"{base}/instances", "view", True)
        case ["series", series]:
            return ParsedPath(f"{base}/series/{uid(series)}", "download", False)
        case ["series", series, ("metadata" | "rendered" | "thumbnail") as what]:
            return ParsedPath(f"{base}/series/{uid(series)}/{what}", "view", False)
        case ["series", series, "instances"]:
            return ParsedPath(f"{base}/series/{uid(series)}/instances", "view", True)
        case ["series", series, "instances", sop]:
            return ParsedPath(f"{base}/series/{uid(series)}/instances/{uid(sop)}", "view", False)
        case ["series", series, "instances", sop, ("metadata" | "rendered" | "thumbnail") as what]:
            upstream = f"{base}/series/{uid(series)}/instances/{uid(sop)}/{what}"
            return ParsedPath(upstream, "view", False)
        case ["series", series, "instances", sop, "frames", frames] if _FRAMES.match(frames):
            upstream = f"{base}/series/{uid(series)}/instances/{uid(sop)}/frames/{frames}"
            return ParsedPath(upstream, "view", False)
        case ["series", series, "instances", sop, "frames", frames, "rendered"] if _FRAMES.match(
            frames
        ):
            upstream = f"{base}/series/{uid(series)}/instances/{uid(sop)}/frames/{frames}/rendered"
            return ParsedPath(upstream, "view", False)
    raise NotFound()


class DicomwebProxy:
    """Streams validated DICOMweb requests to the PACS and the answers back."""

    def __init__(self, pacs: PacsSettings, http: httpx.AsyncClient) -> None:
        self._pacs = pacs
        self._http = http
        self._root = str(pacs.url).rstrip("/")
        self._auth: tuple[str, str] | None = (
            (pacs.username, pacs.password.get_secret_value())
            if pacs.username and pacs.password
            else None
        )

    async def forward(
        self,
        parsed: ParsedPath,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        link_base: str,
    ) -> Response:
        """Send the request upstream and stream the answer back (JSON rewritten)."""
        params = [(k, v[:256]) for k, v in query if parsed.query and _QIDO_KEYS.match(k)][:32]
        request = self._http.build_request(
            "GET",
            f"{self._root}/{parsed.upstream}",
            params=urlencode(params),
            headers={k: v[:512] for k, v in headers.items() if k.lower() in _PASS_HEADERS},
            timeout=httpx.Timeout(self._pacs.timeout_seconds, read=60.0),
        )
        try:
            upstream = await self._http.send(
                request, auth=self._auth if self._auth else httpx.USE_CLIENT_DEFAULT, stream=True
            )
        except httpx.HTTPError as exc:
            raise UpstreamError() from exc
        if upstream.status_code in (400, 404):
            await upstream.aclose()
            raise NotFound()
        if upstream.status_code == 406:
            await upstream.aclose()
            return Response(status_code=406)
        if upstream.status_code == 204:
            await upstream.aclose()
            return Response(status_code=204)
        if upstream.status_code != 200:
            await upstream.aclose()
            raise UpstreamError()
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RETURN_HEADERS}
        out_headers["cache-control"] = "no-store"
        content_type = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _JSON_TYPES:
            try:
                body = await upstream.aread()
            except httpx.HTTPError as exc:
                raise UpstreamError() from exc
            finally:
                await upstream.aclose()
            rewritten = self.rewrite(body, link_base)
            out_headers.pop("content-length", None)
            out_headers.pop("content-encoding", None)
            return Response(rewritten, status_code=200, headers=out_headers)
        out_headers.pop("content-encoding", None)  # httpx streams decoded bytes below
        if upstream.headers.get("content-encoding"):
            out_headers.pop("content-length", None)
        return StreamingResponse(
            _relay(upstream),
            status_code=200,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    def rewrite(self, body: bytes, link_base: str) -> bytes:
        """Point every URL into the PACS's DICOMweb root back through the link instead."""
        text = body.decode("utf-8", "replace")
        for root in {self._root, unquote(self._root)}:
            text = text.replace(root + "/", link_base.rstrip("/") + "/")
            text = text.replace(root.replace("/", "\\/") + "\\/", link_base.rstrip("/") + "/")
        return text.encode()


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    except httpx.HTTPError:
        return  # the PACS broke off mid-stream; the client sees a short body, never a 500
