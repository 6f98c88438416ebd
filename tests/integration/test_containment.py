"""Containment as an attacker meets it: a stolen radiologist token pulls study after study; the
alerts consumer contains that person on every replica, the ledger holds it, an operator lifts it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from broker.config import Settings
from devstack._procs import free_port
from devstack.kafka_cluster import CONSUMER, RESPONDER, kafka_env
from devstack.samples import sample_studies
from devstack.stack import Stack
from streams.ledger_store import LedgerStore
from tests.integration.conftest import LiveBroker, serve
from tests.integration.helpers import password_token
from tests.integration.test_audit_stream import topics

__all__ = ["topics"]  # the fixture, shared with the audit stream's tests

pytestmark = pytest.mark.integration


def issue(live: LiveBroker, bearer: str, study_uid: str) -> httpx.Response:
    return httpx.post(
        f"{live.url}/api/links",
        json={"study_uid": study_uid},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )


def telerad(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def until(check: Any, seconds: float = 15.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "never happened"
        time.sleep(0.1)
    return time.monotonic() - started


def test_bulk_access_contains_the_person_on_every_replica_until_lifted(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    me = {"Authorization": f"Bearer {ada}"}
    kafka = stack.services["kafka"]
    env = (
        os.environ
        | kafka_env(kafka, RESPONDER)
        | {
            "TELERAD_STREAMS__CONTAIN_RULES": '["bulk_access"]',
            "TELERAD_STREAMS__ALERTS_BULK_STUDIES": "4",
            "TELERAD_STREAMS__LEDGER_PATH": str(tmp_path / "ledger.db"),
            "TELERAD_STREAMS__LEDGER_KEY_PATH": str(tmp_path / "key.pem"),
            "TELERAD_STREAMS__SEGMENTS_TOPIC": f"segments-{uuid.uuid4().hex[:8]}",
        }
    )
    with serve(Settings()) as a:
        with mock.patch.dict(os.environ, {"TELERAD_PUBLIC_URL": f"http://127.0.0.1:{free_port()}"}):
            settings_b = Settings()
        with serve(settings_b) as b:
            chest = next(s for s in sample_studies() if s.key == "stolaf-ct-chest")
            link = issue(a, ada, chest.study_uid)
            assert link.status_code == 200, link.text
            on_a = link.json()["url"] + "/metadata"
            on_b = on_a.replace(a.url, b.url)
            assert httpx.get(on_a, headers=me, timeout=30).status_code == 200
            assert httpx.get(on_b, headers=me, timeout=30).status_code == 200

            # the thief's pattern: one study after another (allowed or not, it is asking)
            for study in sample_studies():
                issue(a, ada, study.study_uid)

            alerts = telerad(
                env, "alerts", "--group", f"alerts-{uuid.uuid4().hex[:8]}", "--idle-exit", "3"
            )
            assert alerts.returncode == 0, alerts.stderr[-3000:]
            for replica in (a, b):
                took = until(
                    lambda r=replica: (
                        httpx.get(f"{r.url}/api/me", headers=me, timeout=30).status_code == 401
                    )
                )
                print(
                    f"\ncontained on {replica.url} {took:.2f} s after the alerts consumer stopped"
                )
            # the link issued before the containment stops working on both replicas
            for existing in (on_a, on_b):
                assert httpx.get(existing, headers=me, timeout=30).status_code in (401, 403)
            assert issue(b, ada, chest.study_uid).status_code == 401

            lifted = telerad(
                env,
                "containment",
                "lift",
                "npi:1000000001",
                "--reason",
                "false positive: a teaching session",
            )
            assert lifted.returncode == 0, lifted.stderr[-2000:]
            for replica in (a, b):
                until(
                    lambda r=replica: (
                        httpx.get(f"{r.url}/api/me", headers=me, timeout=30).status_code == 200
                    )
                )
    # the ledger holds the containment, with its rule and evidence, and the lift
    ledger = env | kafka_env(kafka, CONSUMER)
    assert telerad(ledger, "ledger", "--create-key", "--idle-exit", "4").returncode == 0
    with LedgerStore(tmp_path / "ledger.db") as store:
        import json

        events = [json.loads(store.leaf(i)[1]) for i in range(store.size())]
    revoked = [e for e in events if e["kind"] == "revoked" and e["subject"] == "npi:1000000001"]
    assert [e["reasons"] for e in revoked] == [["containment:bulk_access"], ["containment_lifted"]]
    assert revoked[0]["detail"]["containment"]["evidence"]
