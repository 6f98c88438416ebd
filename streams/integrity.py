"""Imaging integrity: every instance on the PACS fingerprinted into the ledger, and swept.

``telerad integrity watch`` follows Orthanc's change feed (``/changes``, ``NewInstance``) and
records, once per instance, an ``instance.stored`` event on the audit topic (so the Merkle
ledger holds it and can prove it): SHA-256 of the stored DICOM file, SHA-256 of each frame as
WADO-RS serves it, the study/series/SOP Instance UIDs, transfer syntax, size and where it came
from. Its position in the feed is kept in a cursor file, written (atomically) only after Kafka
acknowledged the events before it, and event ids are derived from the instance and its hash,
so a restart neither skips an instance nor records it twice in the ledger. On its first start
it fingerprints what the PACS already holds (a resumable backfill, with progress) and then
follows the feed from where the PACS was when it started.

``telerad integrity verify`` re-reads every instance at a bounded rate and compares it with the
fingerprints in the ledger: altered, missing and never-recorded instances, one by one, as a
JSON report for the SIEM; the exit status is 1 on any finding.

Each fingerprint is also published to the compacted fingerprint topic, keyed by SOP Instance
UID, which every broker replica reads into memory to check what links relay as it streams
(``broker.fingerprints``, ``broker.dicomweb.integrity``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.upstream import RetryStaleTransport

__all__ = [
    "Cursor",
    "Fingerprint",
    "OrthancFeed",
    "fingerprints_in_ledger",
    "sweep",
    "watch",
]

_NAMESPACE = uuid.UUID("5b0f5a2e-6b53-4a49-9d2e-1c7b9e0e7f10")  # telerad instance.stored ids
_FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass(frozen=True)
class Fingerprint:
    """What an instance was when it was stored."""

    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax: str
    size: int
    file_sha256: str
    frame_sha256: list[str]
    pacs_id: str
    source: str  # the PACS, and its change sequence number (0: backfill)

    def event(self) -> AuditEvent:
        """The ``instance.stored`` event; its id is the instance's and its hash's, so a second
        recording of the same bytes is one leaf in the ledger."""
        return AuditEvent(
            id=str(uuid.uuid5(_NAMESPACE, f"{self.sop_uid}:{self.file_sha256}")),
            kind=EventKind.INSTANCE_STORED,
            outcome=Outcome.SUCCESS,
            study_uid=self.study_uid,
            detail={"fingerprint": asdict(self)},
        )


class OrthancFeed:
    """The Orthanc REST API and its DICOMweb plugin, as the watcher and the sweep read them."""

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None,
        *,
        name: str = "pacs",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport``: the PACS's (:func:`broker.tls.pacs_sync_transport`, its TLS settings);
        by default stale-connection retry with the system's trust store."""
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            auth=auth,
            timeout=60,
            transport=transport if transport is not None else RetryStaleTransport(),
        )
        self.name = name

    def close(self) -> None:
        self._http.close()

    def last_change(self) -> int:
        answer = self._http.get("/changes", params={"last": ""})
        answer.raise_for_status()
        return int(answer.json()["Last"])

    def changes(self, since: int, limit: int = 100) -> tuple[list[str], int, bool]:
        """New instances after ``since``: (Orthanc ids, last sequence number, done)."""
        answer = self._http.get("/changes", params={"since": since, "limit": limit})
        answer.raise_for_status()
        body = answer.json()
        ids = [c["ID"] for c in body["Changes"] if c.get("ChangeType") == "NewInstance"]
        return ids, int(body["Last"]), bool(body["Done"])

    def instances(self, since: int, limit: int = 100) -> list[str]:
        answer = self._http.get("/instances", params={"since": since, "limit": limit})
        answer.raise_for_status()
        return [str(i) for i in answer.json()]

    def fingerprint(self, pacs_id: str, seq: int) -> Fingerprint:
        """Read the instance's file and each of its frames, as stored and as served."""
        tags = self._http.get(f"/instances/{pacs_id}/simplified-tags")
        tags.raise_for_status()
        t = tags.json()
        data = self.file(pacs_id)
        meta = self._http.get(f"/instances/{pacs_id}/metadata", params={"expand": ""})
        meta.raise_for_status()
        syntax = str(meta.json().get("TransferSyntax", ""))
        frames = int(t.get("NumberOfFrames") or 1)
        study, series, sop = t["StudyInstanceUID"], t["SeriesInstanceUID"], t["SOPInstanceUID"]
        frame_hashes = []
        # Asked directly (one request, not a probe of the pixel data first): an instance without
        # pixel data (an SR, a KO) has no frames to serve, which Orthanc answers 400 or 404.
        served = self._http.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/"
            + ",".join(str(n) for n in range(1, frames + 1)),
            headers={"Accept": _FRAMES_ACCEPT},
        )
        if served.status_code not in (400, 404):
            served.raise_for_status()
            frame_hashes = [hashlib.sha256(p).hexdigest() for p in _parts(served)]
        return Fingerprint(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            transfer_syntax=syntax,
            size=len(data),
            file_sha256=hashlib.sha256(data).hexdigest(),
            frame_sha256=frame_hashes,
            pacs_id=pacs_id,
            source=f"{self.name}#{seq}",
        )

    def file(self, pacs_id: str) -> bytes:
        answer = self._http.get(f"/instances/{pacs_id}/file")
        answer.raise_for_status()
        return answer.content


def _parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer, in order."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    parts: list[bytes] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        parts.append(payload if isinstance(payload, bytes) else b"")
    return parts


@dataclass
class Cursor:
    """Where the watcher is: the change feed's sequence number, and the backfill's progress."""

    path: Path
    seq: int | None = None
    backfill_from: int = 0
    backfill_done: bool = False

    @classmethod
    def load(cls, path: Path) -> Cursor:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(
            path,
            data.get("seq"),
            int(data.get("backfill_from", 0)),
            bool(data.get("backfill_done")),
        )

    def save(self) -> None:
        """Atomically, and durably, replace the cursor file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w") as out:
            json.dump(
                {
                    "seq": self.seq,
                    "backfill_from": self.backfill_from,
                    "backfill_done": self.backfill_done,
                },
                out,
            )
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)


@dataclass
class WatchStats:
    recorded: int = 0
    backfilled: int = 0
    started: float = field(default_factory=time.monotonic)


def watch(
    feed: OrthancFeed,
    emit: Callable[[list[AuditEvent]], None],
    cursor: Cursor,
    *,
    stop: Callable[[], bool],
    idle_exit_seconds: float | None = None,
    poll_seconds: float = 1.0,
    progress: Callable[[str], None] = lambda _: None,
) -> WatchStats:
    """Backfill on the first start, then follow the change feed until ``stop()``.

    ``emit`` must return only once the events are durable (Kafka acknowledged them); the
    cursor moves past them only then.
    """
    stats = WatchStats()
    if cursor.seq is None:
        cursor.seq = feed.last_change()  # what arrives after this, the feed brings
        cursor.save()
    while not cursor.backfill_done and not stop():
        batch = feed.instances(cursor.backfill_from, 100)
        if not batch:
            cursor.backfill_done = True
        else:
            emit([feed.fingerprint(i, 0).event() for i in batch])
            stats.backfilled += len(batch)
            cursor.backfill_from += len(batch)
            progress(f"backfill: {cursor.backfill_from} instances fingerprinted")
        cursor.save()
    idle_since = time.monotonic()
    while not stop():
        ids, last, done = feed.changes(cursor.seq, 100)
        if ids:
            emit([feed.fingerprint(i, last).event() for i in ids])
            stats.recorded += len(ids)
            idle_since = time.monotonic()
        if last != cursor.seq:
            cursor.seq = last
            cursor.save()
        if done:
            if idle_exit_seconds is not None and time.monotonic() - idle_since > idle_exit_seconds:
                break
            time.sleep(poll_seconds)
    return stats


def fingerprints_in_ledger(leaves: Iterator[bytes]) -> dict[str, Fingerprint]:
    """The newest fingerprint of each SOP Instance UID among the ledger's leaves."""
    found: dict[str, Fingerprint] = {}
    for data in leaves:
        event = json.loads(data)
        if event.get("kind") != EventKind.INSTANCE_STORED.value:
            continue
        raw = event.get("detail", {}).get("fingerprint")
        try:
            fingerprint = Fingerprint(**raw)
        except TypeError:
            continue
        found[fingerprint.sop_uid] = fingerprint
    return found


@dataclass
class SweepReport:
    checked: int = 0
    altered: list[dict[str, str]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    unrecorded: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.altered or self.missing or self.unrecorded)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "altered": self.altered,
            "missing": self.missing,
            "never_recorded": self.unrecorded,
            "seconds": round(self.seconds, 2),
        }


def sweep(
    feed: OrthancFeed,
    recorded: dict[str, Fingerprint],
    *,
    per_second: float = 50.0,
    progress: Callable[[str], None] = lambda _: None,
) -> SweepReport:
    """Re-read every stored file (at most ``per_second``) and compare with the ledger.

    The file's bytes are hashed as the PACS returns them, before anything parses them, so an
    encrypted or overwritten file is named even when the PACS can no longer read it.
    """
    report = SweepReport()
    started = time.monotonic()
    by_pacs_id = {f.pacs_id: f for f in recorded.values()}
    seen: set[str] = set()
    offset = 0
    while batch := feed.instances(offset, 100):
        offset += len(batch)
        for pacs_id in batch:
            due = started + report.checked / per_second
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            report.checked += 1
            then = by_pacs_id.get(pacs_id)
            try:
                found = hashlib.sha256(feed.file(pacs_id)).hexdigest()
            except httpx.HTTPStatusError as exc:
                found = f"unreadable ({exc.response.status_code})"
            if then is None:
                report.unrecorded.append({"pacs_id": pacs_id, "found_sha256": found})
                continue
            seen.add(then.sop_uid)
            if found != then.file_sha256:
                report.altered.append(
                    {
                        "sop_uid": then.sop_uid,
                        "study_uid": then.study_uid,
                        "pacs_id": pacs_id,
                        "recorded_sha256": then.file_sha256,
                        "found_sha256": found,
                    }
                )
        progress(f"sweep: {report.checked} instances checked")
    for sop_uid, then in recorded.items():
        if sop_uid not in seen:
            report.missing.append({"sop_uid": sop_uid, "study_uid": then.study_uid})
    report.seconds = time.monotonic() - started
    return report
