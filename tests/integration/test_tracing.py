"""Traces against the real stack: one link issuance is one trace, and its audit events say so."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.app import create_app
from broker.audit.cloudevents import from_record
from broker.config import Settings
from devstack.kafka_cluster import CONSUMER, client_kwargs
from devstack.samples import sample_studies
from devstack.stack import Stack
from tests.integration.helpers import password_token

pytestmark = pytest.mark.integration

STUDY = {s.key: s.study_uid for s in sample_studies()}
LINK_KEY = base64.urlsafe_b64encode(b"t" * 32).rstrip(b"=").decode()  # test-only key


@pytest.fixture
def traced_env(broker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Tracing on; the broker's own Kafka sink on a fresh audit topic."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "TELERAD_TRACING__ENABLED": "true",
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-{suffix}",
        "TELERAD_LINKS__KEYS": json.dumps({"k1": LINK_KEY}),
    }
    with mock.patch.dict(os.environ, env):
        yield env


def _read_all(stack: Stack, topic: str) -> list[Any]:
    """Every record on ``topic`` now (assigned, from the beginning up to the end offsets)."""
    consumer = KafkaConsumer(**client_kwargs(stack.services["kafka"], CONSUMER))
    try:
        deadline = time.monotonic() + 60
        while not (numbers := consumer.partitions_for_topic(topic)):
            assert time.monotonic() < deadline, f"{topic} has no partitions"
            time.sleep(0.5)
        partitions = [TopicPartition(topic, p) for p in numbers]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{topic}: read {len(records)} records only"
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _trace_id(traceparent: str) -> int:
    version, trace_id, _span_id, _flags = traceparent.split("-")
    assert version == "00", traceparent
    return int(trace_id, 16)


async def test_link_issuance_is_one_trace(stack: Stack, traced_env: dict[str, str]) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings()
    assert settings.tracing.enabled
    app = create_app(settings, span_exporter=exporter)
    url = str(settings.public_url).rstrip("/")
    bearer = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=url, timeout=30) as client:
            exporter.clear()  # the start's spans (readiness, revision polls) are not this test's
            response = await client.post(
                "/api/links",
                json={"study_uid": STUDY["stolaf-ct-chest"], "operations": ["view"]},
                headers={"Authorization": f"Bearer {bearer}"},
            )
    assert response.status_code == 200, response.text

    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.name == "POST /api/links"]
    trace_id = server.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = sorted({s.name for s in in_trace})
    topic = traced_env["TELERAD_KAFKA__AUDIT_TOPIC"]
    assert "opa decision" in names, names
    assert f"{topic} publish" in names, names
    pacs_port = int(stack.services["orthanc"].endpoints["url"].rsplit(":", 1)[1])
    pacs = [s for s in in_trace if s.attributes and s.attributes.get("server.port") == pacs_port]
    assert pacs, f"no PACS call in the trace: {names}"
    assert all(s.attributes.get("http.response.status_code") == 200 for s in pacs if s.attributes)
    assert server.attributes and server.attributes["http.response.status_code"] == 200
    link_token = max(urlsplit(response.json()["url"]).path.split("/"), key=len)
    assert len(link_token) > 40, response.text
    for span in in_trace:  # no link token, no study UID in any span name or attribute
        text = span.name + json.dumps(dict(span.attributes or {}), default=str)
        assert STUDY["stolaf-ct-chest"] not in text, span.name
        assert link_token not in text, span.name

    records = _read_all(stack, topic)
    assert records, "nothing on the audit topic"
    for record in records:
        headers = dict(record.headers)
        event = from_record(record.value, record.headers)
        assert "ce_traceparent" in headers, (event.kind, headers)
        assert headers["ce_traceparent"].decode() == event.traceparent
        assert _trace_id(event.traceparent) == trace_id, event.kind
    kinds = {from_record(r.value, r.headers).kind.value for r in records}
    assert "link.issued" in kinds, kinds
