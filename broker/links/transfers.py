"""What flows inside a decision window, aggregated per link and series and flushed every second.

A viewer reads a study as hundreds of requests (metadata, then every frame). Inside a window
those requests are not recorded one by one with an acknowledgement each: the window's grant
(``link.granted``) is already durable. Each request is added to the aggregate of its link and
series: the SOP Instance UIDs and frame numbers read, bytes, request count, first and last time.
A flusher writes one ``link.transferred`` event per aggregate at least every
``TELERAD_LINKS__TRANSFER_FLUSH_SECONDS`` (1 s) and on shutdown; the events are shaped so that
the FHIR (BALP Read) and DICOM PS3.15 "DICOM Instances Transferred" (110104) exports map each
one to one record.

Crash bound: a process killed with ``kill -9`` loses at most the per-instance detail of the
last flush interval (plus the flush whose acknowledgement was in flight); never a grant, which
is acknowledged before the first byte. A flush Kafka does not acknowledge is kept and retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.audit import AuditEvent, AuditSink, EventKind, Outcome

__all__ = ["TransferLog", "Transferred", "upstream_parts"]

log = logging.getLogger("telerad.audit")

_MAX_INSTANCES = 2000  # per aggregate; beyond this it is flushed early (events stay small)


def upstream_parts(upstream: str) -> tuple[str | None, str | None, tuple[int, ...]]:
    """(series UID, SOP Instance UID, frame numbers) named by a validated upstream path."""
    parts = upstream.split("/")
    series = parts[3] if len(parts) > 3 and parts[2] == "series" else None
    sop = parts[5] if len(parts) > 5 and parts[4] == "instances" else None
    frames: tuple[int, ...] = ()
    if len(parts) > 7 and parts[6] == "frames":
        frames = tuple(int(f) for f in parts[7].split(","))
    return series, sop, frames


@dataclass(frozen=True)
class Transferred:
    """Who read through which window (the part of an aggregate's key that names the reader)."""

    link_id: str
    grant_id: str | None
    decision_id: str | None
    subject: str
    issuer: str
    session_id: str | None
    study_uid: str
    operation: str
    client_ip: str | None
    user_agent: str | None


@dataclass
class _Aggregate:
    who: Transferred
    series_uid: str | None
    instances: dict[str, set[int]] = field(default_factory=dict)
    requests: int = 0
    bytes: int = 0
    failed: int = 0  # answers that were not a complete 200
    first: float = 0.0
    last: float = 0.0

    def add(self, sop: str | None, frames: tuple[int, ...], size: int, ok: bool, at: float) -> None:
        if sop is not None:
            self.instances.setdefault(sop, set()).update(frames)
        self.requests += 1
        self.bytes += size
        self.failed += 0 if ok else 1
        self.first = at if self.requests == 1 else min(self.first, at)
        self.last = max(self.last, at)

    def merge(self, other: _Aggregate) -> None:
        for sop, frames in other.instances.items():
            self.instances.setdefault(sop, set()).update(frames)
        self.requests += other.requests
        self.bytes += other.bytes
        self.failed += other.failed
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)

    def event(self) -> AuditEvent:
        who = self.who
        return AuditEvent(
            kind=EventKind.LINK_TRANSFERRED,
            outcome=Outcome.SUCCESS if self.failed == 0 else Outcome.FAILURE,
            time=datetime.fromtimestamp(self.last, UTC),
            subject=who.subject,
            issuer=who.issuer,
            action="redeem",
            study_uid=who.study_uid,
            operations=[who.operation],
            decision_id=who.decision_id,
            client_ip=who.client_ip,
            user_agent=who.user_agent,
            session_id=who.session_id,
            link_id=who.link_id,
            detail={
                "grant_event": who.grant_id,
                "series_uid": self.series_uid,
                "instances": [
                    {"sop_instance_uid": sop, "frames": sorted(frames)}
                    for sop, frames in sorted(self.instances.items())
                ],
                "requests": self.requests,
                "failed": self.failed,
                "bytes": self.bytes,
                "first": datetime.fromtimestamp(self.first, UTC).isoformat(),
                "last": datetime.fromtimestamp(self.last, UTC).isoformat(),
            },
        )


class TransferLog:
    """Aggregates the reads of open windows and flushes them as ``link.transferred`` events."""

    def __init__(
        self,
        audit: AuditSink,
        *,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._every = flush_seconds
        self._clock = clock
        # by reader (link, grant, holder's context) and series
        self._pending: dict[tuple[Transferred, str | None], _Aggregate] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.flushed = 0  # events acknowledged
        self.failures = 0  # flushes that were not acknowledged (kept, retried)

    def record(
        self,
        who: Transferred,
        upstream: str,
        *,
        size: int,
        ok: bool,
        at: float | None = None,
    ) -> None:
        """Add one answered request (``size`` bytes sent; ``ok``: a complete 200)."""
        series, sop, frames = upstream_parts(upstream)
        key = (who, series)
        aggregate = self._pending.get(key)
        if aggregate is None:
            aggregate = self._pending[key] = _Aggregate(who, series)
        aggregate.add(sop, frames, size, ok, self._clock() if at is None else at)
        if len(aggregate.instances) >= _MAX_INSTANCES:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is pending (one produce, one wait); kept for the next flush on failure."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            await self._audit.emit_many([a.event() for a in batch.values()])
        except Exception as exc:  # noqa: BLE001 - kept and retried; the grants are durable
            self.failures += 1
            log.warning("transfer records not acknowledged; retrying: %s", type(exc).__name__)
            for key, aggregate in batch.items():
                newer = self._pending.get(key)
                if newer is not None:
                    aggregate.merge(newer)
                self._pending[key] = aggregate
            return 0
        self.flushed += len(batch)
        return len(batch)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._every)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="transfer-flusher")

    async def close(self) -> None:
        """Stop the flusher and write what is left (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()
