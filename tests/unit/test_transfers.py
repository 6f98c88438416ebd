"""Transfer records: the reads inside a window, aggregated per link and series, flushed, kept."""

from __future__ import annotations

import asyncio

import pytest

from broker.audit import EventKind, MemorySink, Outcome
from broker.links.transfers import TransferLog, Transferred, upstream_parts

STUDY = "1.2.3"
WHO = Transferred(
    link_id="L1",
    grant_id="grant-1",
    decision_id="dec-1",
    subject="npi:1",
    issuer="https://idp.example/realms/a",
    session_id=None,
    study_uid=STUDY,
    operation="view",
    client_ip="10.0.0.1",
    user_agent="viewer",
)


def frame(series: str, sop: str, frames: str) -> str:
    return f"studies/{STUDY}/series/{series}/instances/{sop}/frames/{frames}"


class TestUpstreamParts:
    @pytest.mark.parametrize(
        ("upstream", "expected"),
        [
            (f"studies/{STUDY}", (None, None, ())),
            ("studies", (None, None, ())),
            (f"studies/{STUDY}/metadata", (None, None, ())),
            (f"studies/{STUDY}/series/4", ("4", None, ())),
            (f"studies/{STUDY}/series/4/metadata", ("4", None, ())),
            (f"studies/{STUDY}/series/4/instances/5", ("4", "5", ())),
            (frame("4", "5", "1,3"), ("4", "5", (1, 3))),
            (frame("4", "5", "2") + "/rendered", ("4", "5", (2,))),
            (f"studies/{STUDY}/series/4/instances/5/bulk/7fe00010", ("4", "5", ())),
        ],
    )
    def test_names_series_instance_and_frames(
        self, upstream: str, expected: tuple[str | None, str | None, tuple[int, ...]]
    ) -> None:
        assert upstream_parts(upstream) == expected


class TestTransferLog:
    async def test_aggregated_per_link_and_series(self) -> None:
        audit = MemorySink()
        log = TransferLog(audit, clock=lambda: 100.0)
        log.record(WHO, f"studies/{STUDY}/metadata", size=10, ok=True, at=99.0)
        for n in (1, 2, 3):
            log.record(WHO, frame("4", "5", str(n)), size=100, ok=True, at=100.0 + n)
        log.record(WHO, frame("4", "6", "1"), size=50, ok=False, at=101.5)
        log.record(WHO, frame("7", "8", "1"), size=70, ok=True, at=102.0)
        assert len(log) == 3  # study level, series 4, series 7
        assert await log.flush() == 3
        assert len(log) == 0
        by_series = {e.detail["series_uid"]: e for e in audit.events}
        four = by_series["4"]
        assert four.kind is EventKind.LINK_TRANSFERRED
        assert four.outcome is Outcome.FAILURE  # one answer was cut short
        assert four.detail["instances"] == [
            {"sop_instance_uid": "5", "frames": [1, 2, 3]},
            {"sop_instance_uid": "6", "frames": [1]},
        ]
        assert (four.detail["requests"], four.detail["failed"], four.detail["bytes"]) == (4, 1, 350)
        assert four.detail["first"].startswith("1970-01-01T00:01:41")
        assert four.detail["last"].startswith("1970-01-01T00:01:43")
        assert four.detail["grant_event"] == "grant-1"
        assert (four.link_id, four.decision_id, four.study_uid) == ("L1", "dec-1", STUDY)
        assert by_series[None].detail["instances"] == []
        assert by_series["7"].outcome is Outcome.SUCCESS

    async def test_unacknowledged_flush_is_kept_and_retried(self) -> None:
        audit = MemorySink()
        log = TransferLog(audit)
        log.record(WHO, frame("4", "5", "1"), size=100, ok=True)
        audit.fail = True
        assert await log.flush() == 0
        assert log.failures == 1 and len(log) == 1
        log.record(WHO, frame("4", "5", "2"), size=100, ok=True)  # arrives meanwhile
        audit.fail = False
        assert await log.flush() == 1
        (event,) = audit.events
        assert event.detail["instances"] == [{"sop_instance_uid": "5", "frames": [1, 2]}]
        assert event.detail["requests"] == 2

    async def test_flushed_every_interval_and_on_close(self) -> None:
        audit = MemorySink()
        log = TransferLog(audit, flush_seconds=0.05)
        log.start()
        log.record(WHO, frame("4", "5", "1"), size=1, ok=True)
        for _ in range(100):
            if audit.events:
                break
            await asyncio.sleep(0.01)
        assert len(audit.events) == 1
        log.record(WHO, frame("4", "5", "2"), size=1, ok=True)
        await log.close()  # shutdown writes what is left
        assert len(audit.events) == 2 and len(log) == 0

    async def test_nothing_pending_writes_nothing(self) -> None:
        audit = MemorySink()
        assert await TransferLog(audit).flush() == 0
        assert audit.events == []
