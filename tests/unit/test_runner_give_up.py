"""A batch run of an audit consumer that can never finish says why and stops (exit 4)."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import pytest
from kafka.structs import TopicPartition

from broker.audit.cloudevents import to_record
from broker.audit.events import AuditEvent, EventKind, Outcome
from streams.cli import _stall_guarded
from streams.runner import ConsumerRunner, StalledError

TP = TopicPartition("audit", 0)


class Record:
    def __init__(self, offset: int, event: AuditEvent) -> None:
        self.topic, self.partition, self.offset = TP.topic, TP.partition, offset
        self.key, self.value, self.headers = to_record(event, source="/test")


class PollingConsumer:
    """Polls like kafka-python: nothing until assigned, then the records from the position."""

    def __init__(self, records: list[Record], *, assigned_after_polls: int | None = 0) -> None:
        self.records = records
        self.assigned_after = assigned_after_polls
        self.polls = 0
        self.position = 0
        self.commits: list[int] = []
        self.closed = False

    def assignment(self) -> set[TopicPartition]:
        if self.assigned_after is None or self.polls <= self.assigned_after:
            return set()
        return {TP}

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        time.sleep(0.005)
        if not self.assignment():
            return {}
        batch = self.records[self.position : self.position + max_records]
        self.position += len(batch)
        return {TP: batch} if batch else {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets[TP].offset)

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> Any:
        return {TP: len(self.records)}

    def close(self, autocommit: bool, timeout_ms: int) -> None:
        self.closed = True


def _records(n: int) -> list[Record]:
    return [
        Record(i, AuditEvent(kind=EventKind.DECISION, outcome=Outcome.ALLOW, subject=f"npi:{i}"))
        for i in range(n)
    ]


def _runner(consumer: PollingConsumer, handler: Any) -> ConsumerRunner:
    return ConsumerRunner(
        "export-fhir",
        bootstrap="unused:9092",
        topic="audit",
        group_id="telerad-export-fhir",
        handler=handler,
        dead_letter_topic="dlq",
        consumer=consumer,
        retry_pause_seconds=0.01,
        check_every_seconds=3600,
    )


def test_a_batch_run_that_never_joins_gives_up_naming_topic_and_group() -> None:
    consumer = PollingConsumer([], assigned_after_polls=None)
    started = time.monotonic()
    with pytest.raises(StalledError) as raised:
        _runner(consumer, lambda events: None).run(idle_exit_seconds=0.05, give_up_seconds=0.3)
    took = time.monotonic() - started
    assert 0.3 <= took < 3, took
    assert "no partition of audit was assigned in consumer group telerad-export-fhir" in str(
        raised.value
    )
    assert consumer.closed


def test_a_batch_that_keeps_failing_gives_up_with_the_last_error() -> None:
    def handler(events: list[AuditEvent]) -> None:
        raise KeyError("period")

    consumer = PollingConsumer(_records(3))
    with pytest.raises(StalledError) as raised:
        _runner(consumer, handler).run(idle_exit_seconds=0.05, give_up_seconds=0.3)
    message = str(raised.value)
    assert message.startswith("the batch of audit/0 kept failing for 0 s (")
    assert "last error: KeyError: 'period'" in message
    assert consumer.commits == []  # nothing failed was committed past


def test_a_slow_join_then_work_is_not_a_stall() -> None:
    seen: list[str] = []
    consumer = PollingConsumer(_records(4), assigned_after_polls=10)
    stats = _runner(consumer, lambda events: seen.extend(e.id for e in events)).run(
        idle_exit_seconds=0.05, give_up_seconds=5
    )
    assert (stats.events, len(seen), consumer.commits) == (4, 4, [4])


def test_a_daemon_never_gives_up() -> None:
    consumer = PollingConsumer([], assigned_after_polls=None)
    runner = _runner(consumer, lambda events: None)
    threading.Timer(0.5, runner.stop_event.set).start()
    stats = runner.run(give_up_seconds=0.05)  # no idle exit: retried until stopped
    assert stats.events == 0 and consumer.polls > 10


def test_the_command_says_it_gave_up_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def stalled(args: argparse.Namespace) -> int:
        raise StalledError("no partition of audit was assigned")

    code = _stall_guarded(stalled)(argparse.Namespace(audit_command="export"))
    assert code == 4
    err = capsys.readouterr().err
    assert err == "telerad audit export: gave up: no partition of audit was assigned\n"
