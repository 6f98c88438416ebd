"""The consumer loop every audit consumer shares.

* a consumer group, manual commits: ``offset + 1`` of a partition is committed only after the
  handler has processed that partition's records; the failure path never commits, it seeks back
  and retries after a pause (so a crash or a kill re-delivers, and handlers are idempotent by
  event id);
* poison records (not a CloudEvents audit event we can read, or not what ``decode`` reads) go
  to the dead-letter topic, with
  the reason and their origin in headers, and are committed past once the dead letter is acked;
* SIGTERM/SIGINT set a stop flag; the loop finishes the batch in hand and closes within a bound.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.audit.cloudevents import PoisonRecord, from_record
from broker.audit.events import AuditEvent
from broker.audit.kafka import make_consumer, make_producer
from streams.health import ConsumerHealth, KafkaView, health_server

__all__ = ["ConsumerRunner", "Origin", "RunStats", "StalledError"]

log = logging.getLogger("telerad.streams")

# A handler processes a batch; it may name events it can never process ({event id: reason}),
# which go to the dead letters instead of being retried for ever. With ``with_origin`` it is
# also told where the batch comes from. An exception with a true ``fatal`` attribute stops the
# run (it is raised from ``run``) instead of being retried: the handler's own store is gone.
Handler = Callable[..., Mapping[str, str] | None]
# How a record becomes an event (anything with an ``id``): an audit event by default; the
# worklist checker reads the RIS's events. It raises PoisonRecord for what it cannot read.
Decoder = Callable[[Any], Any]


def _audit_event(record: Any) -> AuditEvent:
    return from_record(record.value, record.headers)


class StalledError(RuntimeError):
    """A batch run made no progress for its give-up bound: never joined, or a batch kept failing.

    A daemon retries for ever (its readiness says why); a batch run (``--idle-exit``) that can
    never finish says so and stops, instead of waiting for a timeout around it.
    """


@dataclass(frozen=True)
class Origin:
    """Where a batch comes from: one partition's records ``first_offset..last_offset``."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int


@dataclass
class RunStats:
    """Counters of one run (also printed as the progress line)."""

    records: int = 0
    events: int = 0
    dead_letters: int = 0
    retries: int = 0
    commits: int = 0
    started: float = field(default_factory=time.monotonic)


class ConsumerRunner:
    """Polls a topic in a consumer group and hands batches of events to ``handler``."""

    def __init__(
        self,
        name: str,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        handler: Handler,
        dead_letter_topic: str,
        poll_ms: int = 500,
        max_records: int = 500,
        retry_pause_seconds: float = 1.0,
        consumer: Any = None,
        with_origin: bool = False,
        client_config: Mapping[str, Any] | None = None,  # security_config(settings.kafka)
        health: ConsumerHealth | None = None,
        check_every_seconds: float = 5.0,  # how often lag and Kafka's answers are checked
        health_host: str = "127.0.0.1",
        health_port: int | None = None,  # /healthz and /readyz while run() runs; None: none
        health_stale_seconds: float = 60.0,  # liveness: the loop turned within this
        decode: Decoder = _audit_event,
    ) -> None:
        self.name = name
        self._decode = decode
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})
        self._topic = topic
        self._group = group_id
        self._last_error: str | None = None
        self._handler = handler
        self._dlq = dead_letter_topic
        self._poll_ms = poll_ms
        self._max_records = max_records
        self._pause = retry_pause_seconds
        self._with_origin = with_origin
        self._consumer = consumer or make_consumer(
            bootstrap,
            topic,
            group_id=group_id,
            client_id=f"telerad-{name}",
            max_poll_records=max_records,
            **self._client_config,
        )
        self._producer: Any = None
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self.health = health or ConsumerHealth(name, stale_seconds=health_stale_seconds)
        self._check_every = check_every_seconds
        self._checked_at: float | None = None
        self._health_address = (health_host, health_port)
        self._failing: set[Any] = set()  # partitions whose last batch failed

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask the loop to stop after the batch in hand."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(
        self, *, idle_exit_seconds: float | None = None, give_up_seconds: float | None = None
    ) -> RunStats:
        """Consume until stopped (or until idle for ``idle_exit_seconds``, for batch use).

        A batch run also gives up, raising :class:`StalledError`, when for ``give_up_seconds``
        it has had no partition assigned or its batches kept failing.
        """
        idle_since = time.monotonic()
        stalled_since: float | None = None
        host, port = self._health_address
        server = health_server(self.health, host, port) if port is not None else None
        try:
            while not self.stop_event.is_set():
                self._maybe_check()  # between batches, so lag counts unprocessed records
                batch = self._consumer.poll(timeout_ms=self._poll_ms, max_records=self._max_records)
                self.health.beat()
                now = time.monotonic()
                assigned = bool(self._consumer.assignment())
                if assigned and not self._failing:
                    stalled_since = None
                elif stalled_since is None:
                    stalled_since = now
                elif (
                    idle_exit_seconds is not None
                    and give_up_seconds is not None
                    and now - stalled_since > give_up_seconds
                ):
                    raise StalledError(self._stall_reason(give_up_seconds, assigned=assigned))
                if not batch:
                    if not assigned:
                        # still joining the group (a killed member's partitions are handed on
                        # only after its session times out): that is not idleness
                        idle_since = now
                    elif idle_exit_seconds is not None and now - idle_since > idle_exit_seconds:
                        break
                    continue
                idle_since = now
                for partition, records in batch.items():
                    self._process(partition, records)
        finally:
            if server is not None:
                server.stop()
            self.close()
        return self.stats

    def _stall_reason(self, seconds: float, *, assigned: bool) -> str:
        if not assigned:
            return (
                f"no partition of {self._topic} was assigned in consumer group {self._group} "
                f"for {seconds:.0f} s (Kafka unreachable, the group or topic not authorised, "
                "or the topic missing)"
            )
        failing = ", ".join(sorted(f"{tp.topic}/{tp.partition}" for tp in self._failing))
        return (
            f"the batch of {failing} kept failing for {seconds:.0f} s "
            f"({self.stats.retries} retries; last error: {self._last_error})"
        )

    def _maybe_check(self) -> None:
        """Now and then: are partitions assigned, do their leaders answer, how far behind?"""
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self._check_every:
            return
        self._checked_at = now
        self.health.observe(self._kafka_view())

    def _kafka_view(self) -> KafkaView:
        assignment = sorted(self._consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not assignment:
            return KafkaView(ok=False, detail="no partitions assigned (joining the group)")
        try:
            ends = self._consumer.end_offsets(assignment, timeout_ms=2000)
            lag = {}
            for tp in assignment:
                # between two polls every record handed out was processed (and committed) or
                # sought back to: the position is the next record to process
                done = self._consumer.position(tp, timeout_ms=2000)
                if done is None:
                    return KafkaView(ok=False, detail=f"no position on {tp.topic}/{tp.partition}")
                lag[f"{tp.topic}/{tp.partition}"] = max(0, ends[tp] - done)
        except Exception as exc:  # noqa: BLE001 - Kafka did not answer: not ready, said by name
            return KafkaView(ok=False, detail=f"Kafka did not answer: {type(exc).__name__}")
        return KafkaView(ok=True, detail=f"consuming {len(assignment)} partition(s)", lag=lag)

    def _process(self, partition: Any, records: list[Any]) -> None:
        from kafka.structs import OffsetAndMetadata

        events: list[Any] = []
        records_by_id: dict[str, Any] = {}
        try:
            for record in records:
                self.stats.records += 1
                try:
                    event = self._decode(record)
                except PoisonRecord as exc:
                    self._dead_letter(record, str(exc))
                    continue
                events.append(event)
                records_by_id[event.id] = record
            if self._with_origin:
                origin = Origin(
                    partition.topic, partition.partition, records[0].offset, records[-1].offset
                )
                rejected = self._handler(events, origin)
            else:
                rejected = self._handler(events) if events else None
            for event_id, reason in (rejected or {}).items():
                self._dead_letter(records_by_id[event_id], f"handler: {reason}")
        except Exception as exc:
            if getattr(exc, "fatal", False):
                log.error("%s: stopping: %s", self.name, exc)
                raise
            self.stats.retries += 1
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "%s: batch failed (%s); will retry from offset %d",
                self.name,
                type(exc).__name__,
                records[0].offset,
            )
            self._failing.add(partition)
            self.health.batch_done(failed=True)
            self._consumer.seek(partition, records[0].offset)
            self.stop_event.wait(self._pause)
            return
        self.stats.events += len(events)
        last = records[-1].offset
        self._consumer.commit({partition: OffsetAndMetadata(last + 1, "", -1)})
        self.stats.commits += 1
        self._failing.discard(partition)
        self.health.batch_done(failed=bool(self._failing))

    def _dead_letter(self, record: Any, reason: str) -> None:
        if self._producer is None:
            self._producer = make_producer(self._bootstrap, **self._client_config)
        headers = [
            *(record.headers or []),
            ("dlq_reason", reason.encode()[:512]),
            ("dlq_origin", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq_consumer", self.name.encode()),
        ]
        self._producer.send(self._dlq, key=record.key, value=record.value, headers=headers).get(
            timeout=10
        )
        self.stats.dead_letters += 1
        log.warning("%s: record sent to %s: %s", self.name, self._dlq, reason)

    def close(self) -> None:
        """Close within a bound; uncommitted work is simply delivered again next time."""
        try:
            self._consumer.close(autocommit=False, timeout_ms=5000)
        finally:
            if self._producer is not None:
                self._producer.close(5)
                self._producer = None
