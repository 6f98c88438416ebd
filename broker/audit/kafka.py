"""Our typed adapter over kafka-python: the only module of ``broker`` that imports ``kafka``.

The audit guarantee is *acknowledged before answered*: :meth:`KafkaAuditSink.emit` returns only
once Kafka has acknowledged the record with ``acks=all`` (idempotent producer), within a deadline;
otherwise it raises :class:`AuditUnavailable` and the caller refuses the request (503). Batching
adapts to load (group commit): with no produce request in flight a record is sent at once
(``linger_ms=0``); while one is in flight (one per broker connection) the next batch gathers, so
waiting costs one round trip per batch, not per event, and one client never waits for a linger.
A broker process killed with ``kill -9`` therefore loses nothing it granted: every grant it
answered is already in Kafka. Retries inside the idempotent producer do not duplicate;
a client that retries a whole request after a 503 may produce a second event with a new id.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from broker.audit.cloudevents import to_record
from broker.audit.events import AuditEvent
from broker.audit.sink import AuditUnavailable
from broker.tracing import tracer

if TYPE_CHECKING:
    from broker.config import KafkaSettings

__all__ = [
    "KafkaAuditSink",
    "TopicFollower",
    "cluster_brokers",
    "make_consumer",
    "make_producer",
    "security_config",
]

log = logging.getLogger("telerad.audit")


def security_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The kafka-python keyword arguments that secure a client, for every client we build.

    One place, so the producer, the control-topic consumer, the readiness probe and every audit
    consumer authenticate the same way. A secret read from a mounted file is read here, at each
    (re)connection, so a rotated secret is picked up without a restart. Missing credentials raise
    ``ValueError``: a client is never built weaker than configured (fail closed).
    """
    protocol = kafka.security_protocol
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol == "PLAINTEXT":
        return config
    # TLS: the server's certificate is verified, host name included (kafka-python's context is
    # PROTOCOL_TLS_CLIENT, TLS 1.2 or later, CERT_REQUIRED).
    config["ssl_check_hostname"] = True
    if kafka.ssl_ca_file is not None:
        config["ssl_cafile"] = str(kafka.ssl_ca_file)
    if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
        config["ssl_certfile"] = str(kafka.ssl_cert_file)
        config["ssl_keyfile"] = str(kafka.ssl_key_file)
        if kafka.ssl_key_password is not None:
            config["ssl_password"] = kafka.ssl_key_password.get_secret_value()
    if protocol == "SASL_SSL":
        password = (
            kafka.sasl_password.get_secret_value()
            if kafka.sasl_password is not None
            else kafka.sasl_password_file.read_text().strip()
            if kafka.sasl_password_file is not None
            else None
        )
        if not kafka.sasl_username or not password:
            raise ValueError(
                "Kafka SASL_SSL needs TELERAD_KAFKA__SASL_USERNAME and "
                "TELERAD_KAFKA__SASL_PASSWORD (or TELERAD_KAFKA__SASL_PASSWORD_FILE)"
            )
        config |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": password,
        }
    elif "ssl_certfile" not in config:
        raise ValueError(
            "Kafka SSL without SASL is mutual TLS: it needs TELERAD_KAFKA__SSL_CERT_FILE and "
            "TELERAD_KAFKA__SSL_KEY_FILE"
        )
    return config


def make_producer(bootstrap: str, **overrides: Any) -> Any:
    """A kafka-python producer with the durability settings the audit trail relies on."""
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        # Group commit: nothing waits for a batch to fill (linger 0), and with one request in
        # flight per broker, whatever arrives meanwhile gathers into the next batch. One client
        # pays one round trip; 64 clients share round trips.
        "linger_ms": 0,
        "max_in_flight_requests_per_connection": 1,
        "batch_size": 262144,
        "max_block_ms": 2000,  # send() never hangs a request when Kafka is unreachable
        "request_timeout_ms": 5000,
        "retries": 5,
        "client_id": "telerad-broker",
    }
    return KafkaProducer(**(config | overrides))


def make_consumer(bootstrap: str, *topics: str, **overrides: Any) -> Any:
    """A kafka-python consumer with manual commits (the stream consumers commit after work)."""
    from kafka import KafkaConsumer

    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 500,
        "client_id": "telerad-consumer",
        # kafka-python drops a subscribed topic that one metadata answer lacked (a node whose
        # metadata cache lags a topic just created) until the next refresh, 5 min by default:
        # no partition is assigned all that time. Refresh every 5 s instead; it is one small
        # request to one node.
        "metadata_max_age_ms": 5000,
    }
    return KafkaConsumer(*topics, **(config | overrides))


def cluster_brokers(bootstrap: str, timeout_ms: int, **security: Any) -> int:
    """How many brokers the cluster reports (a readiness probe); ``security``: see above."""
    from kafka import KafkaAdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    # A refused connection is answered here: kafka-python's client would leave sockets behind.
    socket.create_connection((host, int(port)), timeout=timeout_ms / 1000).close()
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=timeout_ms,
        client_id="telerad-readiness",
        **security,
    )
    try:
        return len(admin.describe_cluster().get("brokers", []))
    finally:
        admin.close()


class KafkaAuditSink:
    """Writes audit events to Kafka and waits for the acknowledgement.

    Records go through one sender thread (kafka-python's ``send`` may block while it fetches
    metadata, which must never stall the event loop); acknowledgements come back from the
    producer's I/O thread as asyncio futures. Concurrent requests therefore share batches.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        source: str,
        ack_timeout_seconds: float = 2.0,
        extra_topics: Callable[[AuditEvent], list[str]] | None = None,
        producer: Any = None,
        max_pending: int = 10_000,
        client_config: Mapping[str, Any] | None = None,  # security_config(settings.kafka)
    ) -> None:
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})
        self._topic = topic
        self._source = source
        self._timeout = ack_timeout_seconds
        self._extra_topics = extra_topics or (lambda _: [])
        self._producer = producer
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue(maxsize=max_pending)
        self._sender: threading.Thread | None = None

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            self._producer = make_producer(self._bootstrap, **self._client_config)
        return self._producer

    async def emit(self, event: AuditEvent) -> None:
        """Return once Kafka acknowledged ``event``; raise :class:`AuditUnavailable` otherwise."""
        await self.emit_many([event])

    async def emit_many(self, events: Sequence[AuditEvent]) -> None:
        """Return once Kafka acknowledged every one of ``events`` (handed to the producer
        together, so they share a batch and one round trip); :class:`AuditUnavailable` if not."""
        with tracer().start_as_current_span(
            f"{self._topic} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "publish",
                "messaging.destination.name": self._topic,
                "messaging.batch.message_count": len(events),
            },
        ):
            await self._emit_many(events)

    async def _emit_many(self, events: Sequence[AuditEvent]) -> None:
        loop = asyncio.get_running_loop()
        records: list[_Record] = []
        for event in events:
            key, value, headers = to_record(event, source=self._source)
            for topic in [self._topic, *self._extra_topics(event)]:
                records.append(_Record(topic, key, value, headers, loop.create_future()))
        try:
            self._start_sender()
            self._queue.put_nowait(_Outgoing(loop, records))
            await asyncio.wait_for(asyncio.gather(*(r.ack for r in records)), self._timeout)
        except Exception as exc:  # whatever failed, the events are not durable: fail closed
            log.error(
                "audit event not acknowledged by Kafka",
                extra={"event_id": ",".join(e.id for e in events), "error": type(exc).__name__},
            )
            raise AuditUnavailable() from exc  # its own message: nothing of Kafka reaches clients

    def _start_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(
                target=self._send_loop, name="audit-sender", daemon=True
            )
            self._sender.start()

    def _send_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                producer = self._ensure_producer()
                for record in item.records:
                    sent = producer.send(
                        record.topic, key=record.key, value=record.value, headers=record.headers
                    )
                    _settle_on_ack(item.loop, sent, record.ack)
            except Exception as exc:  # noqa: BLE001 - reported to the waiting request, not lost
                for record in item.records:
                    item.loop.call_soon_threadsafe(_settle, record.ack, exc)

    async def start(self) -> None:
        """Connect early (a failure here only logs: emit() fails closed, readiness reports it)."""
        self._start_sender()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._ensure_producer), self._timeout * 3)
        except Exception as exc:  # noqa: BLE001 - Kafka may be down at start; emit() fails closed
            log.warning("Kafka producer not connected at start: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._sender is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._sender.join, 10)
            self._sender = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await asyncio.to_thread(producer.close, 5)


@dataclass(frozen=True)
class _Record:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    ack: asyncio.Future[None]


@dataclass(frozen=True)
class _Outgoing:
    loop: asyncio.AbstractEventLoop
    records: list[_Record]


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if not future.done():
        future.set_result(None) if exc is None else future.set_exception(exc)


def _settle_on_ack(
    loop: asyncio.AbstractEventLoop, sent: Any, future: asyncio.Future[None]
) -> None:
    """Resolve ``future`` in its loop when kafka-python's future completes."""
    sent.add_callback(lambda _: loop.call_soon_threadsafe(_settle, future, None))
    sent.add_errback(lambda exc: loop.call_soon_threadsafe(_settle, future, exc))


class TopicFollower:
    """Follows one topic into this replica: a thread reads every partition from the earliest
    retained record and hands each event to ``apply``.

    It serves the control topic (``revoked``, ``consent.changed``, from every replica and the
    hospital's systems), the RIS's worklist topic and the fingerprint topic. ``decode`` turns a
    record's value, headers and key into what ``apply`` takes (default: a CloudEvent into an
    :class:`~broker.audit.events.AuditEvent`); a record it refuses
    (:class:`~broker.audit.cloudevents.PoisonRecord`) is counted in :attr:`rejected` and never
    applied. ``label`` names the topic in logs and readiness.

    No consumer group: every replica reads everything and commits nothing, so the partitions are
    assigned by hand (a group would only add rebalances, during which nothing is applied). New
    partitions are picked up within ``_PARTITIONS_EVERY_SECONDS`` (a missing topic is looked for
    every second: nothing to wait for until it exists). :attr:`caught_up` turns true once the
    follower has read every partition up to the end offset it saw when it was first assigned
    them: until then the replica is not ready, so its first request already refuses a link
    revoked before it started.
    """

    _PARTITIONS_EVERY_SECONDS = 10.0

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        apply: Callable[[Any], object],  # an AuditEvent, or what ``decode`` returns
        *,
        instance: str,
        client_config: Mapping[str, Any] | None = None,
        decode: Callable[[bytes | None, Any, bytes | None], Any] | None = None,
        label: str = "control topic",
        name: str | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})
        self._topic = topic
        self._apply = apply
        self._decode = decode
        self._label = label
        self._name = name or ("revocations" if decode is None else label.replace(" ", "-"))
        self._instance = instance
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ends: dict[Any, int] | None = None  # end offsets seen at start, by partition
        self.caught_up = threading.Event()
        self.applied = 0
        self.rejected = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from broker.audit.cloudevents import PoisonRecord, from_record

        decode = self._decode or (lambda value, headers, _key: from_record(value, headers))
        consumer = None
        checked = 0.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    # From the earliest retained record: a new replica learns every consent and
                    # revocation still in force.
                    consumer = make_consumer(
                        self._bootstrap,
                        group_id=None,
                        client_id=f"telerad-{self._name}-{self._instance}",
                        metadata_max_age_ms=5000,  # a topic created later is seen within 5 s
                        **self._client_config,
                    )
                    checked = 0.0
                assigned = bool(consumer.assignment())
                every = self._PARTITIONS_EVERY_SECONDS if assigned else 1.0
                if time.monotonic() - checked > every:
                    checked = time.monotonic()
                    assigned = self._assign(consumer)
                if not assigned:
                    # No such topic (yet): nothing to learn, so nothing to wait for; its
                    # partitions are assigned, from their beginning, once it exists.
                    if not self.caught_up.is_set():
                        self._confirm_missing()  # not merely hidden from us: that is no "ready"
                        log.info("%s %s does not exist yet", self._label, self._topic)
                        self._ends = {}
                        self.caught_up.set()
                    self._stop.wait(0.5)
                    continue
                for records in consumer.poll(timeout_ms=250).values():
                    for record in records:
                        try:
                            event = decode(record.value, record.headers, record.key)
                        except PoisonRecord as exc:
                            self.rejected += 1
                            log.warning("%s: ignored a malformed record: %s", self._label, exc)
                            continue
                        self._apply(event)
                        self.applied += 1
                if not self.caught_up.is_set():
                    self._check_caught_up(consumer)
            except Exception as exc:  # noqa: BLE001 - keep listening; Kafka may come back
                log.warning("%s listener: %s; retrying", self._label, type(exc).__name__)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _confirm_missing(self) -> None:
        """Return only if Kafka says the topic does not exist; raise if it is not authorized."""
        from broker.audit.kafka_admin import admin_client, describe_topic

        with admin_client(self._bootstrap, **self._client_config) as admin:
            if describe_topic(admin, self._topic) is not None:
                raise RuntimeError(f"{self._label} {self._topic} appeared; assigning it")

    def _assign(self, consumer: Any) -> bool:
        """Assign every partition of the topic (new ones from their beginning); False if none."""
        from kafka import TopicPartition

        # Asking for the topic's metadata also creates it where the cluster auto-creates topics.
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            return False
        wanted = {TopicPartition(self._topic, p) for p in partitions}
        new = wanted - set(consumer.assignment())
        if new:
            consumer.assign(sorted(wanted))
            consumer.seek_to_beginning(*sorted(new))
        return True

    def _check_caught_up(self, consumer: Any) -> None:
        assigned = list(consumer.assignment())
        if not assigned:
            return  # still joining its group
        if self._ends is None:
            self._ends = dict(consumer.end_offsets(assigned))
        if all(consumer.position(tp) >= end for tp, end in self._ends.items()):
            log.info(
                "%s read up to the end offsets seen at start (%d events applied)",
                self._label,
                self.applied,
            )
            self.caught_up.set()

    def progress(self) -> str:
        """For readiness: how far the listener is (raises while it has not caught up)."""
        if not self.caught_up.is_set():
            seen = "no partitions assigned yet" if self._ends is None else "reading"
            raise RuntimeError(
                f"{self._label} {self._topic} not yet read up to its end offsets ({seen})"
            )
        rejected = f", {self.rejected} rejected" if self.rejected else ""
        return (
            f"{self._label} read to the end offsets seen at start; {self.applied} applied{rejected}"
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
