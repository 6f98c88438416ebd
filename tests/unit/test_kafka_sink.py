"""The Kafka sink's contract with a fake producer: events of one write go out together."""

from __future__ import annotations

from typing import Any

import pytest

from broker.audit import AuditEvent, AuditUnavailable, EventKind, Outcome
from broker.audit.kafka import KafkaAuditSink, make_producer


class FakeFuture:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def add_callback(self, callback: Any) -> None:
        if not self.fail:
            callback(None)

    def add_errback(self, errback: Any) -> None:
        if self.fail:
            errback(RuntimeError("not acknowledged"))


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = fail

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> FakeFuture:
        self.sent.append((topic, key))
        return FakeFuture(self.fail)

    def close(self, timeout: float) -> None:
        return None


def event(kind: EventKind) -> AuditEvent:
    return AuditEvent(kind=kind, outcome=Outcome.SUCCESS, study_uid="1.2.3", subject="npi:1")


async def test_one_write_hands_every_record_over_and_waits_for_all() -> None:
    producer = FakeProducer()
    sink = KafkaAuditSink(
        "unused:9092",
        "audit",
        source="/test",
        producer=producer,
        extra_topics=lambda e: ["control"] if e.kind is EventKind.REVOKED else [],
    )
    await sink.emit_many([event(EventKind.DECISION), event(EventKind.REVOKED)])
    await sink.close()
    assert producer.sent == [("audit", b"1.2.3"), ("audit", b"1.2.3"), ("control", b"1.2.3")]


async def test_any_record_not_acknowledged_fails_the_write() -> None:
    sink = KafkaAuditSink("unused:9092", "audit", source="/test", producer=FakeProducer(True))
    with pytest.raises(AuditUnavailable):
        await sink.emit_many([event(EventKind.DECISION), event(EventKind.LINK_ISSUED)])
    await sink.close()


def test_the_producer_commits_in_groups_without_linger() -> None:
    pytest.importorskip("kafka")
    producer = make_producer("127.0.0.1:1", api_version=(3, 0), bootstrap_timeout_ms=10)
    try:
        config = producer.config
        assert (config["linger_ms"], config["max_in_flight_requests_per_connection"]) == (0, 1)
        assert (config["acks"], config["enable_idempotence"]) == (-1, True)
    finally:
        producer.close(0)
