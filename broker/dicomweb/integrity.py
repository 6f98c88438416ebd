"""Checking what the proxy relays against the instances' fingerprints, as it streams.

Which reads are checked (:func:`read_target`): a whole instance
(``…/instances/{sop}``), its frames (``…/instances/{sop}/frames/{n,…}``), and the instances of a
series or study retrieve (each part of the multipart answer, named by the SOP Instance UID in
its own File Meta Information). Metadata, rendered images, thumbnails and bulk data are derived
by the PACS and have no fingerprint to be compared with; they are relayed unchecked.

:class:`StreamCheck` hashes each part as its bytes pass (SHA-256, incrementally) and compares
it, when the part ends, with the file's or the frame's recorded digest. The part's end is only
known when the next multipart delimiter (or the end of the body) arrives, and the chunk that
holds it is not relayed until the check passed, so a mismatching part never reaches the client
complete: the proxy raises :class:`Violation`, and the client sees the body break off. A part
whose ``transfer-syntax`` differs from the recorded one was transcoded by the PACS and cannot be
compared; it is handled like an instance without a fingerprint (the ``unfingerprinted``
obligation: serve it unchecked, or refuse it).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from broker.fingerprints import UNKNOWN_FULL, Recorded

__all__ = [
    "Finding",
    "ReadCheck",
    "ReadTarget",
    "StreamCheck",
    "Violation",
    "read_target",
    "sop_uid_of",
    "unusable",
]

Lookup = Callable[[str], "Recorded | Literal['unknown_index_full'] | None"]
Policy = Literal["serve", "refuse"]

_INSTANCE = re.compile(r"^studies/[^/]+/series/[^/]+/instances/(?P<sop>[^/]+)$")
_FRAMES = re.compile(r"^studies/[^/]+/series/[^/]+/instances/(?P<sop>[^/]+)/frames/(?P<n>[0-9,]+)$")
_RETRIEVE = re.compile(r"^studies/[^/]+(/series/[^/]+)?$")
_HEAD_MAX = 16 * 1024  # bytes of a part's start kept to read its File Meta Information
_HEADERS_MAX = 8 * 1024  # a part's headers; more is not a multipart answer we relay


@dataclass(frozen=True)
class ReadTarget:
    """What a checked read returns: one instance, frames of one instance, or many instances."""

    kind: Literal["instance", "frames", "instances"]
    sop_uid: str | None = None  # instance and frames
    frames: tuple[int, ...] = ()


def read_target(upstream: str) -> ReadTarget | None:
    """The check for a proxied path below the PACS's DICOMweb root; None: relayed unchecked."""
    if match := _FRAMES.match(upstream):
        numbers = tuple(int(n) for n in match["n"].split(","))
        return ReadTarget("frames", match["sop"], numbers)
    if match := _INSTANCE.match(upstream):
        return ReadTarget("instance", match["sop"])
    if _RETRIEVE.match(upstream):
        return ReadTarget("instances")
    return None


@dataclass(frozen=True)
class Finding:
    """One thing the check found: an altered part, or one it could not check."""

    finding: Literal["altered", "unfingerprinted", "transcoded", "index_full"]
    action: Literal["cut_off", "refused", "served"]  # what the proxy did about it
    sop_uid: str | None
    frame: int | None = None
    recorded_sha256: str | None = None
    found_sha256: str | None = None

    def detail(self) -> dict[str, object]:
        """The event detail (``integrity.violation``)."""
        out: dict[str, object] = {"finding": self.finding, "action": self.action}
        for key in ("sop_uid", "frame", "recorded_sha256", "found_sha256"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ReadCheck:
    """How the proxy checks one request: the fingerprints, the policy's ``unfingerprinted``
    obligation, and where findings go (an audit event; raises if it cannot be made durable)."""

    lookup: Lookup
    policy: Policy
    report: Callable[[Finding], Awaitable[None]]


class Violation(Exception):
    """The relayed bytes must not reach the client (whole)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(f"{finding.finding} ({finding.action}): {finding.sop_uid}")
        self.finding = finding


def unusable(
    recorded: Recorded | Literal["unknown_index_full"] | None,
    sop_uid: str | None,
    policy: Policy,
) -> Finding | None:
    """What to do with an instance before its bytes are read: None if it can be checked."""
    if isinstance(recorded, Recorded):
        return None
    if recorded == UNKNOWN_FULL:
        return Finding("index_full", "refused", sop_uid)  # fail closed, whatever the policy
    return Finding("unfingerprinted", "served" if policy == "serve" else "refused", sop_uid)


def sop_uid_of(head: bytes) -> str | None:
    """The Media Storage SOP Instance UID (0002,0003) of a DICOM Part 10 file's start."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    at = 132
    while at + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, at)
        if group != 0x0002:
            return None
        vr = head[at + 4 : at + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if at + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, at + 8)
            at += 12
        else:
            (length,) = struct.unpack_from("<H", head, at + 6)
            at += 8
        if element == 0x0003:
            if at + length > len(head):
                return None
            return head[at : at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        at += length
    return None


@dataclass
class _Part:
    content_type: str
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)


class StreamCheck:
    """Hashes one DICOMweb answer's parts as they stream and compares them with the record.

    :meth:`feed` each chunk *before* relaying it and :meth:`finish` at the end, before the last
    chunk is relayed; either raises :class:`Violation` when the proxy must cut the answer off.
    :attr:`served_unchecked` lists what was relayed without a check (the policy said serve).
    """

    def __init__(
        self, target: ReadTarget, content_type: str, lookup: Lookup, policy: Policy
    ) -> None:
        self._target = target
        self._lookup = lookup
        self._policy = policy
        self.served_unchecked: list[Finding] = []
        self._index = 0  # parts finished
        boundary = _boundary(content_type)
        self._multipart = boundary is not None
        # the stream is read as if it began with CRLF, so every delimiter is CRLF--boundary
        self._delimiter = b"\r\n--" + (boundary or "").encode("latin-1")
        self._buffer = bytearray(b"\r\n") if self._multipart else bytearray()
        self._state: Literal["preamble", "delimiter", "headers", "body", "end"] = "preamble"
        self._part: _Part | None = None
        if not self._multipart:
            self._state = "body"
            self._part = _Part(content_type)

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the answer; raise :class:`Violation` on a mismatch."""
        if not self._multipart:
            self._body(chunk)
            return
        self._buffer += chunk
        while self._step():
            pass

    def finish(self) -> None:
        """The answer ended: check the last part, and that every expected part came."""
        if self._multipart:
            if self._state != "end":
                # cut off upstream, or not multipart as announced: nothing more to compare
                return
        elif self._part is not None:
            self._close_part()
        if self._target.kind == "frames" and self._index < len(self._target.frames):
            return  # fewer frames than asked: the client sees a short answer, not a wrong one

    def _step(self) -> bool:
        """Advance the parser over the buffer; True while there may be more to do."""
        buffer, delimiter = self._buffer, self._delimiter
        if self._state in ("preamble", "body"):
            found = buffer.find(delimiter)
            if found < 0:
                keep = len(delimiter) - 1  # the start of a delimiter may be at the end
                if len(buffer) > keep:
                    self._body_upto(len(buffer) - keep)
                    del buffer[: len(buffer) - keep]
                return False
            # The delimiter ends the part: it is checked now, before the chunk that completes
            # the delimiter is relayed, so an altered part never reaches the client whole.
            self._body_upto(found)
            if self._state == "body":
                self._close_part()
            del buffer[: found + len(delimiter)]
            self._state = "delimiter"
            return True
        if self._state == "delimiter":
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"--"):
                self._state = "end"
                buffer.clear()
                return False
            self._state = "headers"
            return True
        if self._state == "headers":
            # after the delimiter: transport padding, CRLF, then headers up to an empty line
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _HEADERS_MAX:
                    raise Violation(Finding("altered", "cut_off", self._target.sop_uid))
                return False
            headers = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            self._part = _Part(_header(headers, "content-type"))
            self._state = "body"
            return True
        buffer.clear()  # after the closing delimiter (epilogue): ignored
        return False

    def _body_upto(self, end: int) -> None:
        """The buffer's first ``end`` bytes are body: hashed in place, not copied."""
        with memoryview(self._buffer) as view, view[:end] as data:
            self._body(data)

    def _body(self, data: bytes | memoryview) -> None:
        part = self._part
        if part is None or self._state != "body" or not data:
            return
        part.hasher.update(data)
        if len(part.head) < _HEAD_MAX:
            part.head += data[: _HEAD_MAX - len(part.head)]

    def _close_part(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        number = self._index
        self._index += 1
        target = self._target
        frame: int | None = None
        if target.kind == "instances":
            sop_uid = sop_uid_of(bytes(part.head))
        else:
            sop_uid = target.sop_uid
        recorded = self._lookup(sop_uid) if sop_uid else None
        problem = unusable(recorded, sop_uid, self._policy)
        if problem is None and isinstance(recorded, Recorded):
            syntax = _param(part.content_type, "transfer-syntax")
            stored = recorded.transfer_syntax
            if syntax and syntax != "*" and stored and syntax != stored:
                action: Literal["refused", "served"] = (
                    "served" if self._policy == "serve" else "refused"
                )
                problem = Finding("transcoded", action, sop_uid)
        if problem is not None:
            if problem.action == "served":
                self.served_unchecked.append(problem)
                return
            raise Violation(_cut(problem))
        assert isinstance(recorded, Recorded)
        found = part.hasher.digest()
        if target.kind == "frames":
            frame = target.frames[number] if number < len(target.frames) else None
            wanted = (
                recorded.frame_sha256[frame - 1]
                if frame is not None and 0 < frame <= len(recorded.frame_sha256)
                else None
            )
        else:
            wanted = recorded.file_sha256
        if wanted != found:
            raise Violation(
                Finding(
                    "altered",
                    "cut_off",
                    sop_uid,
                    frame=frame,
                    recorded_sha256=wanted.hex() if wanted else None,
                    found_sha256=found.hex(),
                )
            )


def _cut(problem: Finding) -> Finding:
    """A refusal found mid-stream is a cut-off (bytes of the answer may already be out)."""
    return Finding(problem.finding, "cut_off", problem.sop_uid, problem.frame)


def _boundary(content_type: str) -> str | None:
    if not content_type.split(";")[0].strip().lower().startswith("multipart/"):
        return None
    return _param(content_type, "boundary")


def _param(content_type: str, name: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"') or None
    return None


def _header(block: str, name: str) -> str:
    for line in block.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""
