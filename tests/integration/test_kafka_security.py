"""The control topic as an attacker meets it: forged consent and revocations are refused by Kafka.

The stack's Kafka is secured (TLS, SCRAM, ACLs): only the broker's principal may write the
control topic. Here other principals (the audit consumers' own, and a valid SCRAM user with no
grants) and clients that do not authenticate try to publish a ``consent.changed permit`` for a
study whose patient opted out and a ``revoked`` for a radiologist; Kafka refuses each, and a
replica's decisions stay what they were. The same permit published as the broker's principal
does change the decision, so the refusals are what keeps it unchanged.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from broker.audit.cloudevents import from_record, to_record
from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.config import Settings
from devstack.kafka_cluster import BROKER, CONSUMER, INTRUDER, client_kwargs
from devstack.samples import sample_studies
from devstack.services import Service
from devstack.stack import Stack
from tests.integration.conftest import serve
from tests.integration.helpers import decided, password_token

pytestmark = pytest.mark.integration

STUDY = {s.key: s.study_uid for s in sample_studies()}
ADA = "npi:1000000001"


@pytest.fixture
def control_topic(broker_env: dict[str, str]) -> Iterator[str]:
    suffix = uuid.uuid4().hex[:10]
    names = {
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-{suffix}",
        "TELERAD_AUDIT_SINK": "kafka",
    }
    with mock.patch.dict(os.environ, names):
        yield names["TELERAD_KAFKA__REVOCATION_TOPIC"]


def _forgeries() -> list[AuditEvent]:
    permit = AuditEvent(
        kind=EventKind.CONSENT_CHANGED,
        outcome=Outcome.SUCCESS,
        study_uid=STUDY["stolaf-ct-optout"],
        detail={"consent": "permit", "by": "forged"},
    )
    revoked = AuditEvent(
        kind=EventKind.REVOKED,
        outcome=Outcome.SUCCESS,
        subject=ADA,
        detail={"revocation": {"kind": "subject", "value": ADA, "until": time.time() + 3600}},
    )
    return [permit, revoked]


def _publish(client: dict[str, Any], topic: str, events: list[AuditEvent]) -> None:
    producer = KafkaProducer(
        max_block_ms=5000,
        request_timeout_ms=5000,
        bootstrap_timeout_ms=5000,  # a refused bootstrap fails in 5 s, not 30
        retries=0,
        **client,
    )
    try:
        for event in events:
            key, value, headers = to_record(event, source="/forged")
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)
    finally:
        producer.close(2)


def _attackers(kafka: Service) -> dict[str, dict[str, Any]]:
    bootstrap = kafka.endpoints["bootstrap"]
    ca = kafka.extra["ca_file"]
    return {
        "the consumers' principal (may read the control topic)": client_kwargs(kafka, CONSUMER),
        "a valid SCRAM user with no grants": client_kwargs(kafka, INTRUDER),
        "a wrong password for the broker's principal": client_kwargs(kafka, BROKER)
        | {"sasl_plain_password": "guessed"},
        "plaintext, unauthenticated": {"bootstrap_servers": bootstrap},
        "TLS without SASL": {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SSL",
            "ssl_cafile": ca,
        },
        "TLS without a client certificate, on the mutual-TLS listener": {
            "bootstrap_servers": kafka.endpoints["bootstrap_mtls"],
            "security_protocol": "SSL",
            "ssl_cafile": ca,
        },
    }


def test_forged_control_events_are_refused_and_change_nothing(
    stack: Stack, control_topic: str
) -> None:
    kafka = stack.services["kafka"]
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    with serve(Settings()) as live:
        before = {s: decided(live, ada, STUDY[s]) for s in ("stolaf-ct-optout", "stolaf-ct-chest")}
        assert before["stolaf-ct-optout"]["allow"] is False
        assert [r["code"] for r in before["stolaf-ct-optout"]["reasons"]] == ["consent_denied"]
        assert before["stolaf-ct-chest"]["allow"] is True

        def attempt(client: dict[str, Any]) -> str:
            """How the forger's produce failed, and after how long (each waits on timeouts)."""
            started = time.monotonic()
            with pytest.raises(KafkaError) as caught:
                _publish(client, control_topic, _forgeries())
            return f"{type(caught.value).__name__} after {time.monotonic() - started:.1f} s"

        attackers = _attackers(kafka)
        with ThreadPoolExecutor(len(attackers)) as pool:  # independent clients, side by side
            refused = dict(zip(attackers, pool.map(attempt, attackers.values()), strict=True))
        print("refused:", json.dumps(refused, indent=2))
        refused = {who: how.split(" after ", 1)[0] for who, how in refused.items()}
        authorization = {"TopicAuthorizationFailedError"}
        assert refused["the consumers' principal (may read the control topic)"] in authorization
        assert refused["a valid SCRAM user with no grants"] in authorization

        time.sleep(3)  # the replica polls the control topic every 250 ms
        assert decided(live, ada, STUDY["stolaf-ct-optout"])["allow"] is False
        assert decided(live, ada, STUDY["stolaf-ct-chest"])["allow"] is True

        consumer = KafkaConsumer(
            control_topic,
            auto_offset_reset="earliest",
            consumer_timeout_ms=4000,
            **client_kwargs(kafka, CONSUMER),
        )
        try:
            on_topic = [from_record(r.value, r.headers) for r in consumer]
        finally:
            consumer.close()
        assert [e for e in on_topic if e.detail.get("by") == "forged"] == []

        # The same permit, written as the broker's principal, is applied: the refusals above
        # are what kept the decision unchanged.
        _publish(client_kwargs(kafka, BROKER), control_topic, _forgeries()[:1])
        deadline = time.monotonic() + 15
        while not decided(live, ada, STUDY["stolaf-ct-optout"])["allow"]:
            assert time.monotonic() < deadline, "an authorized consent change was not applied"
            time.sleep(0.3)
