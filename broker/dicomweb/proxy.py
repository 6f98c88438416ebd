"""The DICOMweb proxy behind a study link: only that study, only read, streamed.

A viewer speaks plain DICOMweb under ``/links/<token>/dicom-web/``. Each path is parsed against
the few shapes QIDO-RS and WADO-RS define below one study; anything else is not found. The PACS
answer is streamed through untouched (multipart/related included), except DICOM JSON, whose
URLs (RetrieveURL, BulkDataURI) are rewritten to stay behind the link.

Viewers such as OHIF start with a study-level search (``studies?StudyInstanceUID=…``) and look
for priors by patient (``studies?PatientID=…``). That search is answered for the linked study
only: the PACS is asked with ``StudyInstanceUID`` forced to the linked study (the client's own
study UID keys dropped, the forced one sent last, since Orthanc honours the last of repeated
keys), and whatever comes back is filtered to that study again. A client naming other studies
only gets ``[]``; so does a search the PACS cannot answer (400/404/204), never a 404 that would
break the viewer.

With a :class:`~broker.dicomweb.integrity.ReadCheck`, instances and frames are hashed as they
pass and compared with their fingerprints (``broker.dicomweb.integrity``). An answer read whole
that fails is not relayed at all (502 ``integrity_violation``); a streamed one is cut off before
the failing part is complete (the chunk that would complete it is never sent, and the response
is aborted, so the client sees a broken body, never a whole altered image). An instance known
beforehand to have no fingerprint is refused (403) before the PACS is asked, when the policy
says ``refuse``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from broker.config import PacsSettings
from broker.dicomweb.facts import valid_uid
from broker.dicomweb.integrity import (
    ReadCheck,
    StreamCheck,
    Violation,
    read_target,
    unusable,
)
from broker.dicomweb.relay import HttpxPacsClient, PacsAnswer, PacsClient, RelayError
from broker.errors import (
    DependencyUnavailable,
    Forbidden,
    IntegrityViolation,
    NotFound,
    UpstreamError,
)

__all__ = ["DicomwebProxy", "ParsedPath", "parse_path", "query_string", "upstream_query"]

Operation = Literal["view", "download"]

_FRAMES = re.compile(r"^[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,63}$")
# A bulk data path as Orthanc emits it in BulkDataURI: a tag, then (item index, tag) pairs for
# elements nested in sequences (``bulk/7fe00010``, ``bulk/00540016/0/00181072``).
_BULK_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_BULK_INDEX = re.compile(r"^(0|[1-9][0-9]{0,5})$")
_BULK_DEPTH = 8  # tags at most
# QIDO-RS query keys passed through: paging, field selection, and attribute matches by
# keyword or tag. Values are length-capped; the PACS sees nothing else.
_QIDO_KEYS = re.compile(
    r"^(limit|offset|includefield|fuzzymatching|[A-Za-z]{2,64}|[0-9A-Fa-f]{8})$"
)
_MAX_PARAMS = 32
# Keys that would name a study; matched case-insensitively (Orthanc reads tags in either case).
_STUDY_UID_KEYS = frozenset({"studyinstanceuid", "0020000d"})
_UID_LIST = re.compile(r"[\\,]")  # DICOM list matching (backslash; OHIF), or comma
# WADO-RS rendered / thumbnail presentation parameters (PS3.18 8.3.5), each strictly shaped.
_NUM = r"-?[0-9]{1,6}(\.[0-9]{1,6})?"
_RENDER_PARAMS = {
    # vw,vh or vw,vh,sx,sy,sw,sh
    "viewport": re.compile(r"^[0-9]{1,4},[0-9]{1,4}(," + _NUM + ("," + _NUM) * 3 + ")?$"),
    "quality": re.compile(r"^(100|[1-9]?[0-9])$"),
    "window": re.compile("^" + _NUM + "," + _NUM + r"(,(linear|linear-exact|sigmoid))?$"),
}
_THUMBNAIL_VIEWPORT = "128,128"
# Sent unescaped in the query (besides letters, digits and ``_.-~``): DICOM matching needs them.
_RAW_IN_QUERY = "*,^\\:;/?@!$'()"
_PASS_HEADERS = ("accept",)
_RETURN_HEADERS = ("content-type", "content-length", "content-encoding", "etag", "last-modified")
_JSON_TYPES = ("application/dicom+json", "application/json")
_DICOM_JSON = "application/dicom+json"
# Answers up to this size (with a Content-Length) are read whole and sent in one write; larger
# ones (a whole study) are streamed. At six parallel viewer requests: 6 x 8 MiB at most.
_BUFFER_MAX = 8 * 1024 * 1024


@dataclass(frozen=True)
class ParsedPath:
    """A DICOMweb request below one study, and the operation it needs."""

    upstream: str  # path below the PACS's DICOMweb root, rebuilt from validated parts
    operation: Operation
    query: bool  # QIDO-RS search (query parameters allowed)
    study_uid: str  # the linked study (the search below is forced to it)
    study_search: bool = False  # study-level QIDO-RS: upstream is ``studies``
    rendered: bool = False  # rendered media (presentation parameters allowed)
    thumbnail: bool = False  # a thumbnail, answered as rendered at a thumbnail viewport


def parse_path(path: str, study_uid: str) -> ParsedPath:
    """Validate ``path`` (below ``dicom-web/``) for the linked study; :class:`NotFound` if not."""
    if "%" in path or "\\" in path or "//" in path or not valid_uid(study_uid):
        raise NotFound()
    parts = path.strip("/").split("/")
    if parts == ["studies"]:
        return ParsedPath("studies", "view", True, study_uid, study_search=True)
    if len(parts) < 2 or parts[0] != "studies" or parts[1] != study_uid:
        raise NotFound()
    rest = parts[2:]
    base = f"studies/{study_uid}"

    def uid(value: str) -> str:
        if not valid_uid(value):
            raise NotFound()
        return value

    def plain(upstream: str, operation: Operation = "view") -> ParsedPath:
        return ParsedPath(upstream, operation, False, study_uid)

    def qido(upstream: str) -> ParsedPath:
        return ParsedPath(upstream, "view", True, study_uid)

    def media(prefix: str, what: str) -> ParsedPath:
        # Orthanc's plugin has no thumbnail resource (404): a thumbnail is the rendered image
        # at a thumbnail's size, which is what PS3.18 says a thumbnail is.
        thumbnail = what == "thumbnail"
        return ParsedPath(
            f"{prefix}/rendered", "view", False, study_uid, rendered=True, thumbnail=thumbnail
        )

    match rest:
        case []:
            return plain(base, "download")
        case ["metadata"]:
            return plain(f"{base}/metadata")
        case [("rendered" | "thumbnail") as what]:
            return media(base, what)
        case ["series"]:
            return qido(f"{base}/series")
        case ["instances"]:
            return qido(f"{base}/instances")
        case ["series", series]:
            return plain(f"{base}/series/{uid(series)}", "download")
        case ["series", series, "metadata"]:
            return plain(f"{base}/series/{uid(series)}/metadata")
        case ["series", series, ("rendered" | "thumbnail") as what]:
            return media(f"{base}/series/{uid(series)}", what)
        case ["series", series, "instances"]:
            return qido(f"{base}/series/{uid(series)}/instances")
        case ["series", series, "instances", sop]:
            return plain(f"{base}/series/{uid(series)}/instances/{uid(sop)}")
        case ["series", series, "instances", sop, "metadata"]:
            return plain(f"{base}/series/{uid(series)}/instances/{uid(sop)}/metadata")
        case ["series", series, "instances", sop, ("rendered" | "thumbnail") as what]:
            return media(f"{base}/series/{uid(series)}/instances/{uid(sop)}", what)
        case ["series", series, "instances", sop, "frames", frames] if _FRAMES.match(frames):
            return plain(f"{base}/series/{uid(series)}/instances/{uid(sop)}/frames/{frames}")
        case [
            "series",
            series,
            "instances",
            sop,
            "frames",
            frames,
            ("rendered" | "thumbnail") as what,
        ] if _FRAMES.match(frames):
            prefix = f"{base}/series/{uid(series)}/instances/{uid(sop)}/frames/{frames}"
            return media(prefix, what)
        case ["series", series, "instances", sop, "bulk", *tags] if _bulk_path(tags):
            upstream = f"{base}/series/{uid(series)}/instances/{uid(sop)}/bulk/{'/'.join(tags)}"
            return plain(upstream)
    raise NotFound()


def _bulk_path(parts: Sequence[str]) -> bool:
    """``tag(/index/tag)*``, at most :data:`_BULK_DEPTH` tags."""
    if len(parts) % 2 == 0 or len(parts) > 2 * _BULK_DEPTH - 1:
        return False
    return all(
        (_BULK_INDEX if i % 2 else _BULK_TAG).match(part) is not None
        for i, part in enumerate(parts)
    )


def upstream_query(
    parsed: ParsedPath, query: Sequence[tuple[str, str]]
) -> list[tuple[str, str]] | None:
    """The query the PACS is sent for ``parsed``; None when the answer is known to be empty.

    QIDO-RS: allowed keys only, values capped, ``includefield=a,b`` split into repeated keys,
    the client's study UID keys dropped. If the client named studies and not the linked one,
    nothing can match (None). A study-level search always ends with the forced
    ``StudyInstanceUID=<linked study>``. Rendered media: the presentation parameters only.
    """
    if parsed.rendered:
        rendered: dict[str, str] = {}
        for key, value in query:
            pattern = _RENDER_PARAMS.get(key)
            if pattern is not None and key not in rendered and pattern.match(value):
                rendered[key] = value
        if parsed.thumbnail:
            rendered.setdefault("viewport", _THUMBNAIL_VIEWPORT)
        return list(rendered.items())
    if not parsed.query:
        return []
    named: set[str] = set()
    params: list[tuple[str, str]] = []
    for key, value in query:
        if key.lower() in _STUDY_UID_KEYS:
            named.update(u.strip() for u in _UID_LIST.split(value) if u.strip())
            continue
        if not _QIDO_KEYS.match(key):
            continue
        if key == "includefield":
            fields = (field.strip() for field in value[:4096].split(","))
            params.extend((key, field[:256]) for field in fields if field)
        else:
            params.append((key, value[:256]))
    if named and "*" not in named and parsed.study_uid not in named:
        return None
    params = params[:_MAX_PARAMS]
    if parsed.study_search:
        params.append(("StudyInstanceUID", parsed.study_uid))
    return params


def query_string(params: Sequence[tuple[str, str]]) -> str:
    """``params`` as the PACS must see them: only what would break the query is escaped.

    Orthanc (1.10) does not percent-decode GET arguments, so an escaped ``*``, ``,``, ``^`` or
    ``\\`` reaches it literally (``Synth%2A``, ``64%2C64``) and matches nothing or is refused;
    those go raw. ``&``, ``=``, ``+``, ``#``, ``%``, spaces, controls and non-ASCII are escaped,
    so a value can never add a parameter of its own (it then merely matches nothing).
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe=_RAW_IN_QUERY)}" for k, v in params)


def _empty_search() -> Response:
    return Response(
        b"[]", status_code=200, media_type=_DICOM_JSON, headers={"cache-control": "no-store"}
    )


def _only_the_study(body: bytes, study_uid: str) -> bytes:
    """A study-level QIDO-RS answer, with every study but the linked one taken out."""
    try:
        studies = json.loads(body)
    except ValueError as exc:
        raise UpstreamError() from exc
    if not isinstance(studies, list):
        raise UpstreamError()
    kept = [
        study
        for study in studies
        if isinstance(study, dict)
        and isinstance(study.get("0020000D"), dict)
        and study["0020000D"].get("Value") == [study_uid]
    ]
    return json.dumps(kept, separators=(",", ":")).encode()


class DicomwebProxy:
    """Streams validated DICOMweb requests to the PACS and the answers back."""

    def __init__(self, pacs: PacsSettings, client: PacsClient | httpx.AsyncClient) -> None:
        """``client``: the app's PACS client (:mod:`broker.dicomweb.relay`); an
        ``httpx.AsyncClient`` is wrapped in :class:`~broker.dicomweb.relay.HttpxPacsClient`."""
        self._pacs = pacs
        self._client: PacsClient = (
            HttpxPacsClient(client, pacs) if isinstance(client, httpx.AsyncClient) else client
        )
        self._root = str(pacs.url).rstrip("/")
        self._roots = _root_spellings(self._root)

    async def forward(
        self,
        parsed: ParsedPath,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        link_base: str,
        on_done: Callable[[int, bool], None] | None = None,
        check: ReadCheck | None = None,
    ) -> Response:
        """Send the request upstream and stream the answer back (JSON rewritten).

        ``on_done(bytes, complete)`` is told what reached the client once the body is out (a
        transfer record); answers raised as errors are not reported to it. ``check``: compare
        instances and frames with their fingerprints (see the module docstring).
        """
        done = on_done or _ignore
        target = read_target(parsed.upstream) if check is not None else None
        if check is not None and target is not None and target.sop_uid is not None:
            before = unusable(check.lookup(target.sop_uid), target.sop_uid, check.policy)
            if before is not None:
                await check.report(before)  # raises if it cannot be recorded: nothing served
                if before.finding == "index_full":
                    raise DependencyUnavailable("The integrity index is full.")
                if before.action == "refused":
                    raise Forbidden("This instance has no integrity fingerprint.")
                target = None  # served unchecked, as the policy says
        params = upstream_query(parsed, query)
        if params is None:
            done(2, True)
            return _empty_search()  # the client asked only for other studies
        sent = {k: v[:512] for k, v in headers.items() if k.lower() in _PASS_HEADERS}
        if parsed.study_search:
            sent = {"accept": _DICOM_JSON}  # the answer is filtered, so it must be DICOM JSON
        # The bytes are relayed as the PACS has them: asking for gzip (httpx's default) made
        # Orthanc compress every frame and the broker decompress it again.
        sent["accept-encoding"] = "identity"
        url = f"{self._root}/{parsed.upstream}"
        try:
            upstream = await self._client.send(
                "GET", f"{url}?{query_string(params)}" if params else url, sent
            )
        except RelayError as exc:
            raise UpstreamError() from exc
        status = upstream.status
        if status != 200:
            await upstream.close()
            if parsed.query and (status == 204 or (parsed.study_search and status in (400, 404))):
                done(2, True)
                return _empty_search()
            if status in (400, 404):
                raise NotFound()
            if status == 406:
                return Response(status_code=406)
            if status == 204:
                return Response(status_code=204)
            raise UpstreamError()
        out_headers = {
            k.lower(): v for k, v in upstream.headers.items() if k.lower() in _RETURN_HEADERS
        }
        out_headers["cache-control"] = "no-store"
        content_type = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _JSON_TYPES or parsed.study_search:
            try:
                body = await upstream.read()
            except RelayError as exc:
                raise UpstreamError() from exc
            finally:
                await upstream.close()
            if parsed.study_search:
                body = _only_the_study(body, parsed.study_uid)
                out_headers["content-type"] = _DICOM_JSON
            rewritten = self.rewrite(body, link_base)
            out_headers.pop("content-length", None)
            out_headers.pop("content-encoding", None)
            if parsed.study_search:
                out_headers.pop("etag", None)  # the PACS's tag names what it sent, not this
            done(len(rewritten), True)
            return Response(rewritten, status_code=200, headers=out_headers)
        out_headers.pop("content-encoding", None)  # both clients hand on decoded bytes
        encoded = bool(upstream.headers.get("content-encoding"))
        if encoded:
            out_headers.pop("content-length", None)
        size = _content_length(upstream)
        stream_check = (
            StreamCheck(
                target, upstream.headers.get("content-type", ""), check.lookup, check.policy
            )
            if check is not None and target is not None
            else None
        )
        if not encoded and size is not None and size <= _BUFFER_MAX:
            # A frame, a rendered image, an instance: read whole and sent in one write. A
            # streamed answer costs a task group, a disconnect listener and a send per chunk.
            try:
                body = await upstream.read()
            except RelayError as exc:
                raise UpstreamError() from exc
            finally:
                await upstream.close()
            if stream_check is not None and check is not None:
                try:
                    stream_check.feed(body)
                    stream_check.finish()
                except Violation as violation:
                    await _report_cut(check, violation)
                    raise IntegrityViolation() from None
                for note in stream_check.served_unchecked:
                    await check.report(note)
            done(len(body), len(body) == size)
            return Response(body, status_code=200, headers=out_headers)
        if stream_check is not None and check is not None:
            return StreamingResponse(
                _checked_relay(upstream, done, stream_check, check),
                status_code=200,
                headers=out_headers,
                background=BackgroundTask(upstream.close),
            )
        return StreamingResponse(
            _relay(upstream, done),
            status_code=200,
            headers=out_headers,
            background=BackgroundTask(upstream.close),
        )

    def rewrite(self, body: bytes, link_base: str) -> bytes:
        """Point every URL into the PACS's DICOMweb root back through the link instead."""
        text = body.decode("utf-8", "replace")
        target = link_base.rstrip("/") + "/"
        for root in self._roots:
            text = text.replace(root + "/", target)
            text = text.replace(root.replace("/", "\\/") + "\\/", target)
        return text.encode()


def _root_spellings(root: str) -> list[str]:
    """The ways the PACS may spell its own DICOMweb root in URLs it emits, longest first.

    Orthanc builds RetrieveURL and BulkDataURI from the Host header it was sent (which drops a
    default port) and may say http or https; both schemes, with and without the port.
    """
    spellings = {root, unquote(root)}
    parts = urlsplit(root)
    if parts.hostname:
        netloc = parts.netloc.rsplit("@", 1)[-1]
        hosts = {netloc}
        if parts.port is None:
            hosts |= {f"{netloc}:80", f"{netloc}:443"}
        for scheme in ("http", "https"):
            for netloc in hosts:
                spellings.add(f"{scheme}://{netloc}{parts.path}")
                spellings.add(f"{scheme}://{netloc}{unquote(parts.path)}")
    return sorted(spellings, key=len, reverse=True)


def _content_length(response: PacsAnswer) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _ignore(_size: int, _complete: bool) -> None:
    return None


async def _relay(upstream: PacsAnswer, done: Callable[[int, bool], None]) -> AsyncIterator[bytes]:
    sent, complete = 0, False
    try:
        async for chunk in upstream.chunks():
            yield chunk
            sent += len(chunk)
        complete = True
    except RelayError:
        return  # the PACS broke off mid-stream; the client sees a short body, never a 500
    finally:
        done(sent, complete)  # also when the client went away (the generator is closed)


class CutOff(Exception):
    """Raised out of a checked stream so the server aborts the response (no terminating chunk,
    a short body against its Content-Length): the client can tell the body is broken. The
    server's log says so in one line (:class:`broker.logs.DeliberateAbortFilter`)."""

    deliberate_abort = True


async def _report_cut(check: ReadCheck, violation: Violation) -> None:
    try:
        await check.report(violation.finding)
    except Exception:  # noqa: BLE001 - cut off either way; the report logged its own failure
        return


async def _checked_relay(
    upstream: PacsAnswer,
    done: Callable[[int, bool], None],
    stream_check: StreamCheck,
    check: ReadCheck,
) -> AsyncIterator[bytes]:
    """:func:`_relay`, with each chunk checked before it is sent and the last one held back
    until the end of the answer was checked too."""
    sent, complete = 0, False
    pending: bytes | None = None
    try:
        async for chunk in upstream.chunks():
            stream_check.feed(chunk)
            if pending is not None:
                yield pending
                sent += len(pending)
            pending = chunk
        stream_check.finish()
        for note in stream_check.served_unchecked:
            await check.report(note)
        if pending is not None:
            yield pending
            sent += len(pending)
        complete = True
    except Violation as violation:
        await _report_cut(check, violation)
        raise CutOff(str(violation)) from None
    except RelayError:
        return  # the PACS broke off mid-stream; the client sees a short body, never a 500
    finally:
        done(sent, complete)
