"""The read-path integrity check: multipart parsing, hashing, cut-off points, the index."""

from __future__ import annotations

import hashlib
import io
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.dicomweb.integrity import (
    ReadTarget,
    StreamCheck,
    Violation,
    read_target,
    sop_uid_of,
)
from broker.fingerprints import UNKNOWN_FULL, FingerprintIndex, Recorded

SOP_A, SOP_B = "1.2.3.4.1", "1.2.3.4.2"
BOUNDARY = "b0undary"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def dicom_file(sop_uid: str, pixels: bytes) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PatientName = pixels.hex()[:16]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(parts: list[bytes], part_type: str = "application/dicom") -> bytes:
    body = b"preamble to ignore"
    for part in parts:
        body += f"\r\n--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part
    return body + f"\r\n--{BOUNDARY}--\r\nepilogue".encode()


def content_type(part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={BOUNDARY}'


def recorded(file: bytes = b"", frames: tuple[bytes, ...] = ()) -> Recorded:
    return Recorded(
        hashlib.sha256(file).digest(),
        tuple(hashlib.sha256(f).digest() for f in frames),
        EXPLICIT_LE,
    )


def run(check: StreamCheck, body: bytes, size: int) -> int:
    """Feed ``body`` in chunks of ``size``; the number of chunks relayed (feed passed)."""
    relayed = 0
    for at in range(0, len(body), size):
        check.feed(body[at : at + size])
        relayed += 1
    check.finish()
    return relayed


class TestReadTarget:
    def test_shapes(self) -> None:
        base = "studies/1.2/series/1.3/instances/1.4"
        assert read_target(base) == ReadTarget("instance", "1.4")
        assert read_target(base + "/frames/1,3") == ReadTarget("frames", "1.4", (1, 3))
        assert read_target("studies/1.2") == ReadTarget("instances")
        assert read_target("studies/1.2/series/1.3") == ReadTarget("instances")
        for unchecked in ("studies/1.2/metadata", base + "/rendered", base + "/bulk/7fe00010"):
            assert read_target(unchecked) is None, unchecked


class TestSopUid:
    def test_reads_the_file_meta(self) -> None:
        assert sop_uid_of(dicom_file(SOP_A, b"x")) == SOP_A

    def test_not_dicom(self) -> None:
        assert sop_uid_of(b"\x00" * 300) is None
        assert sop_uid_of(b"short") is None


class TestFrames:
    frames = (b"frame one " * 100, b"frame two " * 100)

    def check(self, lookup: Recorded | None, policy: Literal["serve", "refuse"]) -> StreamCheck:
        return StreamCheck(
            ReadTarget("frames", SOP_A, (1, 2)),
            content_type("application/octet-stream"),
            lambda uid: lookup if uid == SOP_A else None,
            policy,
        )

    @settings(max_examples=60, deadline=None)
    @given(size=st.integers(min_value=1, max_value=3000))
    def test_intact_frames_pass_at_any_chunking(self, size: int) -> None:
        body = multipart(list(self.frames), "application/octet-stream")
        check = self.check(recorded(b"f", self.frames), "refuse")
        assert run(check, body, size) == -(-len(body) // size)

    @settings(max_examples=60, deadline=None)
    @given(size=st.integers(min_value=1, max_value=3000))
    def test_altered_frame_is_cut_before_its_delimiter_is_relayed(self, size: int) -> None:
        body = multipart([self.frames[0], b"X" + self.frames[1][1:]], "application/octet-stream")
        check = self.check(recorded(b"f", self.frames), "serve")
        relayed = 0
        with pytest.raises(Violation) as caught:
            for at in range(0, len(body), size):
                check.feed(body[at : at + size])
                relayed += 1
        finding = caught.value.finding
        assert (finding.finding, finding.action, finding.frame) == ("altered", "cut_off", 2)
        assert finding.found_sha256 != finding.recorded_sha256
        # what reached the client ends before the delimiter after frame 2 is complete
        delimiter_end = body.rindex(f"\r\n--{BOUNDARY}--".encode()) + len(BOUNDARY) + 4
        assert relayed * size < delimiter_end

    def test_unfingerprinted_served_is_noted(self) -> None:
        check = self.check(None, "serve")
        run(check, multipart(list(self.frames), "application/octet-stream"), 512)
        assert [(f.finding, f.action) for f in check.served_unchecked] == [
            ("unfingerprinted", "served"),
            ("unfingerprinted", "served"),
        ]

    def test_unfingerprinted_refused_is_cut(self) -> None:
        check = self.check(None, "refuse")
        with pytest.raises(Violation) as caught:
            run(check, multipart(list(self.frames), "application/octet-stream"), 512)
        assert caught.value.finding.finding == "unfingerprinted"

    def test_transcoded_part_is_not_compared(self) -> None:
        body = multipart(
            [b"decompressed"], "application/octet-stream; transfer-syntax=1.2.840.10008.1.2"
        )
        check = StreamCheck(
            ReadTarget("frames", SOP_A, (1,)),
            content_type("application/octet-stream"),
            lambda _: recorded(b"f", (b"stored",)),
            "serve",
        )
        run(check, body, 7)
        assert [f.finding for f in check.served_unchecked] == ["transcoded"]


class TestInstances:
    def test_series_retrieve_names_the_altered_part(self) -> None:
        a, b = dicom_file(SOP_A, b"a"), dicom_file(SOP_B, b"b")
        records = {SOP_A: recorded(a), SOP_B: recorded(b)}
        ok = StreamCheck(ReadTarget("instances"), content_type(), records.get, "refuse")
        run(ok, multipart([a, b]), 1000)
        altered = b[:-10] + bytes([b[-10] ^ 1]) + b[-9:]
        bad = StreamCheck(ReadTarget("instances"), content_type(), records.get, "refuse")
        with pytest.raises(Violation) as caught:
            run(bad, multipart([a, altered]), 1000)
        assert caught.value.finding.sop_uid == SOP_B
        assert caught.value.finding.recorded_sha256 == hashlib.sha256(b).hexdigest()

    def test_single_part_instance_is_checked_at_the_end(self) -> None:
        a = dicom_file(SOP_A, b"a")
        check = StreamCheck(
            ReadTarget("instance", SOP_A), "application/dicom", {SOP_A: recorded(a)}.get, "serve"
        )
        for at in range(0, len(a), 100):
            check.feed(a[at : at + 100])  # nothing can be known before the end
        check.finish()
        bad = StreamCheck(
            ReadTarget("instance", SOP_A), "application/dicom", {SOP_A: recorded(a)}.get, "serve"
        )
        bad.feed(a[:-1] + b"!")
        with pytest.raises(Violation):
            bad.finish()

    def test_full_index_refuses_whatever_the_policy(self) -> None:
        a = dicom_file(SOP_A, b"a")
        check = StreamCheck(
            ReadTarget("instances"), content_type(), lambda _: UNKNOWN_FULL, "serve"
        )
        with pytest.raises(Violation) as caught:
            run(check, multipart([a]), 4096)
        assert caught.value.finding.finding == "index_full"


def stored(sop_uid: str, frames: int = 1, digest: str = "ab" * 32) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.INSTANCE_STORED,
        outcome=Outcome.SUCCESS,
        detail={
            "fingerprint": {
                "sop_uid": sop_uid,
                "file_sha256": digest,
                "frame_sha256": [digest] * frames,
                "transfer_syntax": EXPLICIT_LE,
            }
        },
    )


class TestFingerprintIndex:
    def test_newest_record_wins_and_costs_are_counted(self) -> None:
        index = FingerprintIndex(10_000)
        assert index.apply(stored(SOP_A, 1))
        used = index.bytes_used
        assert index.apply(stored(SOP_A, 3, "cd" * 32))
        assert index.bytes_used == used + 64 and len(index) == 1
        found = index.lookup(SOP_A)
        assert isinstance(found, Recorded) and found.file_sha256 == bytes.fromhex("cd" * 32)
        assert index.lookup(SOP_B) is None

    def test_bounded_and_fails_closed_when_full(self) -> None:
        index = FingerprintIndex(450)
        assert index.apply(stored(SOP_A))
        assert not index.apply(stored(SOP_B, 50))
        assert index.full and index.dropped == 1
        assert index.lookup(SOP_B) == UNKNOWN_FULL
        assert isinstance(index.lookup(SOP_A), Recorded)

    def test_malformed_records_are_ignored(self) -> None:
        index = FingerprintIndex(10_000)
        bad = stored(SOP_A, digest="zz")
        assert not index.apply(bad)
        short = stored(SOP_A, digest="ab")
        assert not index.apply(short)
        other = AuditEvent(kind=EventKind.LOGIN, outcome=Outcome.SUCCESS)
        assert not index.apply(other)
        assert len(index) == 0
