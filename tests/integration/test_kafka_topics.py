"""``telerad kafka topics`` against the real (secured) Kafka, and production readiness's floor."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.audit.kafka_admin import admin_client, describe_topic
from broker.config import Settings
from devstack.kafka_cluster import ADMIN, BROKER, client_kwargs, kafka_env
from devstack.stack import Stack

pytestmark = pytest.mark.integration

KEY = base64.urlsafe_b64encode(b"t" * 32).rstrip(b"=").decode()  # test-only


def _topics(suffix: str) -> dict[str, str]:
    return {
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-{suffix}",
        "TELERAD_KAFKA__FINGERPRINT_TOPIC": f"fingerprints-{suffix}",
        "TELERAD_KAFKA__WORKLIST_TOPIC": f"worklist-{suffix}",
        "TELERAD_STREAMS__DEAD_LETTER_TOPIC": f"dlq-{suffix}",
        "TELERAD_STREAMS__HEADS_TOPIC": f"heads-{suffix}",
        "TELERAD_STREAMS__ALERTS_TOPIC": f"telerad.alerts.{suffix}",
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "kafka", "topics", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_then_apply_then_nothing_to_do(stack: Stack) -> None:
    kafka = stack.services["kafka"]
    names = _topics(uuid.uuid4().hex[:10])
    env = stack.broker_env() | kafka_env(kafka, ADMIN) | names
    env["TELERAD_KAFKA__AUDIT_RETENTION_DAYS"] = "3650"

    dry = _run(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.count(" create  ") == 7, dry.stdout
    assert "retention.ms=315360000000" in dry.stdout, dry.stdout
    with admin_client(**client_kwargs(kafka, ADMIN)) as admin:
        assert describe_topic(admin, names["TELERAD_KAFKA__AUDIT_TOPIC"]) is None  # a plan only

    applied = _run(env)
    assert applied.returncode == 0, applied.stdout + applied.stderr[-2000:]
    with admin_client(**client_kwargs(kafka, ADMIN)) as admin:
        audit = describe_topic(admin, names["TELERAD_KAFKA__AUDIT_TOPIC"])
        control = describe_topic(admin, names["TELERAD_KAFKA__REVOCATION_TOPIC"])
    assert audit is not None and control is not None
    replication = int(env["TELERAD_KAFKA__REPLICATION_FACTOR"])  # 1, or 3 on a 3-node stack
    assert (audit.partitions, audit.replication_factor) == (6, replication)
    assert audit.configs["retention.ms"] == str(3650 * 86_400_000)
    assert audit.configs["cleanup.policy"] == "delete"
    assert audit.configs["min.insync.replicas"] == env["TELERAD_KAFKA__MIN_INSYNC_REPLICAS"]
    assert control.configs["cleanup.policy"] == "compact"

    again = _run(env, "--dry-run")
    assert again.stdout.count("  none  ") == 7, again.stdout

    env["TELERAD_KAFKA__AUDIT_RETENTION_DAYS"] = "30"
    changed = _run(env)
    assert changed.returncode == 0, changed.stdout + changed.stderr[-2000:]
    assert f"retention.ms {3650 * 86_400_000} -> {30 * 86_400_000}" in changed.stdout
    with admin_client(**client_kwargs(kafka, ADMIN)) as admin:
        audit = describe_topic(admin, names["TELERAD_KAFKA__AUDIT_TOPIC"])
    assert audit is not None and audit.configs["retention.ms"] == str(30 * 86_400_000)


def test_the_broker_principal_may_not_create_topics_by_plan(stack: Stack) -> None:
    """`telerad kafka topics` is an operator's command: the broker's principal cannot alter."""
    kafka = stack.services["kafka"]
    env = stack.broker_env() | kafka_env(kafka, BROKER) | _topics(uuid.uuid4().hex[:10])
    env["TELERAD_STREAMS__ALERTS_TOPIC"] = f"alerts-{uuid.uuid4().hex[:10]}"  # outside its ACLs
    refused = _run(env)
    assert refused.returncode == 1, refused.stdout + refused.stderr[-2000:]
    assert "AuthorizationFailed" in refused.stderr, refused.stderr[-2000:]


def _production(monkeypatch: pytest.MonkeyPatch, stack: Stack, **env: str) -> Settings:
    for key, value in (stack.broker_env() | env).items():
        monkeypatch.setenv(key, value)
    for key in ("TELERAD_KAFKA__REPLICATION_FACTOR", "TELERAD_KAFKA__MIN_INSYNC_REPLICAS"):
        monkeypatch.delenv(key, raising=False)  # production's floor: 3 and 2
    monkeypatch.setenv("TELERAD_ENVIRONMENT", "production")
    monkeypatch.setenv("TELERAD_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("TELERAD_LINKS__KEYS", f'{{"k1": "{KEY}"}}')
    monkeypatch.setenv("TELERAD_IDENTITY__SESSION_KEYS", f'{{"s1": "{KEY}"}}')
    monkeypatch.setenv("TELERAD_AUDIT_SINK", "kafka")
    return Settings()


def test_production_readiness_names_the_audit_topic_gap(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kafka = stack.services["kafka"]
    names = _topics(uuid.uuid4().hex[:10])
    setup = stack.broker_env() | kafka_env(kafka, ADMIN) | names
    # an audit topic below production's floor, as a cluster's defaults may leave it: RF 1
    setup |= {"TELERAD_KAFKA__REPLICATION_FACTOR": "1", "TELERAD_KAFKA__MIN_INSYNC_REPLICAS": "1"}
    assert _run(setup).returncode == 0
    with TestClient(create_app(_production(monkeypatch, stack, **names))) as client:
        deadline = time.monotonic() + 20
        while (body := client.get("/readyz").json())["checks"]["control-topic"]["ready"] is False:
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        response = client.get("/readyz")
    assert response.status_code == 503, response.text
    detail = response.json()["checks"]["kafka"]["detail"]
    assert "replication factor 1 < 3" in detail, detail
    assert "min.insync.replicas 1 < 2" in detail, detail

    monkeypatch.setenv("TELERAD_KAFKA__REPLICATION_FACTOR", "1")
    monkeypatch.setenv("TELERAD_KAFKA__MIN_INSYNC_REPLICAS", "1")
    with TestClient(create_app(Settings())) as client:
        deadline = time.monotonic() + 20
        while (response := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
    assert response.json()["checks"]["kafka"]["ready"] is True
