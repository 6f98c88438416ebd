"""The audit consumers' health endpoints, against a real consumer on the real (secured) Kafka."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from broker.audit.cloudevents import to_record
from broker.audit.events import AuditEvent, EventKind, Outcome
from devstack._procs import free_port
from devstack.kafka_cluster import BROKER, CONSUMER, client_kwargs, security_kwargs
from devstack.services import Service
from devstack.stack import Stack
from streams.runner import ConsumerRunner

pytestmark = pytest.mark.integration


def _publish(kafka: Service, topic: str, n: int) -> list[str]:
    """``n`` audit events on ``topic``, as the broker's principal, acknowledged."""
    producer = KafkaProducer(**client_kwargs(kafka, BROKER))
    ids = []
    try:
        for i in range(n):
            event = AuditEvent(
                kind=EventKind.DECISION,
                outcome=Outcome.ALLOW,
                subject=f"npi:{i}",
                study_uid="1.2.3.4",  # one key: one partition, in order
                action="issue_link",
            )
            key, value, headers = to_record(event, source="/test")
            producer.send(topic, key=key, value=value, headers=headers).get(30)
            ids.append(event.id)
    finally:
        producer.close(5)
    return ids


def _wait_for(
    url: str, accept: Callable[[httpx.Response], bool], *, timeout: float = 90
) -> httpx.Response:
    """GET ``url`` until ``accept`` says yes; fails with the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if accept(last):
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url}: never accepted; last answer: {getattr(last, 'text', last)}")


def _is(status: int, **body: object) -> Callable[[httpx.Response], bool]:
    def accept(r: httpx.Response) -> bool:
        return r.status_code == status and all(r.json().get(k) == v for k, v in body.items())

    return accept


def test_export_consumer_probes(stack: Stack, tmp_path: Path) -> None:
    """`telerad audit export` serves /healthz and /readyz with its lag; SIGTERM closes them."""
    kafka = stack.services["kafka"]
    suffix = uuid.uuid4().hex[:10]
    topic = f"audit-{suffix}"
    ids = _publish(kafka, topic, 5)
    port = free_port()
    env = (
        os.environ
        | stack.consumer_env()
        | {
            "TELERAD_KAFKA__AUDIT_TOPIC": topic,
            "TELERAD_STREAMS__DEAD_LETTER_TOPIC": f"dlq-{suffix}",
            "TELERAD_STREAMS__EXPORT_DIR": str(tmp_path / "export"),
            "TELERAD_STREAMS__HEALTH_PORT": str(port),
        }
    )
    consumer = subprocess.Popen(
        [sys.executable, "-m", "broker", "audit", "export", "--group", f"export-{suffix}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        alive = _wait_for(f"{base}/healthz", _is(200))
        assert alive.json()["status"] == "ok", alive.text
        ready = _wait_for(f"{base}/readyz", _is(200, lag_total=0))
        body = ready.json()
        assert body["status"] == "ready", body
        assert set(body["lag"]) and all(k.startswith(f"{topic}/") for k in body["lag"]), body
        exported = (tmp_path / "export" / "audit-fhir.ndjson").read_text().splitlines()
        assert len(exported) == len(ids)  # lag 0 means it is all processed
        assert httpx.get(f"{base}/metrics", timeout=2).status_code == 404  # only its probes
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err[-2000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the port is released


def test_readiness_reports_lag_while_batches_fail(stack: Stack) -> None:
    """A consumer whose handler keeps failing is alive, unready, and says how far behind."""
    kafka = stack.services["kafka"]
    suffix = uuid.uuid4().hex[:10]
    topic = f"audit-{suffix}"
    _publish(kafka, topic, 4)
    release = threading.Event()
    handled: list[str] = []

    def handler(events: list[AuditEvent]) -> None:
        if not release.is_set():
            raise RuntimeError("the store is away")
        handled.extend(e.id for e in events)

    port = free_port()
    runner = ConsumerRunner(
        "health-test",
        bootstrap=kafka.endpoints["bootstrap"],
        topic=topic,
        group_id=f"health-{suffix}",
        handler=handler,
        dead_letter_topic=f"dlq-{suffix}",
        client_config=security_kwargs(kafka, CONSUMER),
        retry_pause_seconds=0.2,
        check_every_seconds=0.2,
        health_port=port,
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        failing = _wait_for(f"{base}/readyz", _is(503, lag_total=4))
        assert "the last batch failed (retrying)" in failing.json()["detail"], failing.text
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200  # alive all the same
        assert handled == []
        release.set()
        recovered = _wait_for(f"{base}/readyz", _is(200, lag_total=0))
        assert recovered.json()["status"] == "ready", recovered.text
        assert len(handled) == 4
    finally:
        runner.stop_event.set()
        thread.join(30)
    assert not thread.is_alive()
