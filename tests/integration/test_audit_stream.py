"""The audit stream against real Kafka: durable before granted, ledger, kills, outages, replicas."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from kafka import KafkaConsumer

from broker.audit.cloudevents import from_record
from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.audit.kafka import KafkaAuditSink
from broker.config import Settings
from devstack import services
from devstack._procs import free_port
from devstack.kafka_cluster import (
    BROKER,
    CONSUMER,
    client_kwargs,
    kafka_env,
    security_kwargs,
)
from devstack.samples import sample_studies
from devstack.services import Service
from devstack.stack import Stack
from streams.ledger import LedgerConsumer, load_private_key
from streams.ledger_store import LedgerStore
from streams.merkle import leaf_hash, verify_inclusion
from streams.runner import ConsumerRunner
from tests.integration.conftest import serve
from tests.integration.helpers import decision, password_token, run_exports, telerad

pytestmark = pytest.mark.integration

STUDY = {s.key: s.study_uid for s in sample_studies()}
LINK_KEY = base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()  # dev-only, test-only key


def token(stack: Stack, user: str) -> str:
    return password_token(stack.services["keycloak"].endpoints["hospital-a"], user)


@pytest.fixture
def topics(broker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fresh topics for this test, so no other test's events are in the way."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-{suffix}",
        "TELERAD_STREAMS__DEAD_LETTER_TOPIC": f"dlq-{suffix}",
        "TELERAD_STREAMS__HEADS_TOPIC": f"heads-{suffix}",
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_LINKS__KEYS": json.dumps({"k1": LINK_KEY}),
    }
    with mock.patch.dict(os.environ, names):
        yield names


def run_ledger(kafka: Service, topic: str, db: Path, key_path: Path) -> LedgerConsumer:
    store = LedgerStore(db)
    ledger = LedgerConsumer(store, load_private_key(key_path, create=True), head_every_leaves=10**9)
    runner = ConsumerRunner(
        "ledger-test",
        bootstrap=kafka.endpoints["bootstrap"],
        topic=topic,
        group_id=f"ledger-{uuid.uuid4().hex[:8]}",
        handler=ledger.handle,
        dead_letter_topic=f"dlq-{topic}",
        client_config=security_kwargs(kafka, CONSUMER),
    )
    runner.run(idle_exit_seconds=4)
    return ledger


def test_request_event_topic_and_inclusion_proof(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    with serve(Settings()) as live:
        response = decision(live, token(stack, "ada"), STUDY["stolaf-ct-chest"])
    assert response.status_code == 200, response.text
    decision_id = response.json()["decision_id"]
    kafka = stack.services["kafka"]
    topic = topics["TELERAD_KAFKA__AUDIT_TOPIC"]
    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10000,
        **client_kwargs(kafka, CONSUMER),
    )
    try:
        records = list(consumer)
    finally:
        consumer.close()
    ours = [r for r in records if json.loads(r.value).get("decision_id") == decision_id]
    assert len(ours) == 1, [json.loads(r.value) for r in records]
    record = ours[0]
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"org.telerad.decision.v1"
    assert record.key == STUDY["stolaf-ct-chest"].encode()  # one study's events stay in order
    event = from_record(record.value, record.headers)
    assert (event.subject, event.outcome, event.action) == (
        "npi:1000000001",
        Outcome.ALLOW,
        "issue_link",
    )

    ledger = run_ledger(kafka, topic, tmp_path / "ledger.db", tmp_path / "key.pem")
    head = ledger.maybe_sign(force=True)
    assert head is not None
    index, proof = ledger.store.inclusion_proof(event.id, head.size)
    _, data, _ = ledger.store.leaf(index)
    assert verify_inclusion(leaf_hash(data), index, head.size, proof, head.root)
    public = load_private_key(tmp_path / "key.pem", create=False).public_key()
    assert head.verify(public)
    ledger.store.close()


def test_kafka_outage_grants_nothing_and_loses_nothing(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    kafka = services.start_kafka(tmp_path / "own")
    ada = token(stack, "ada")
    env = kafka_env(kafka, BROKER) | {"TELERAD_KAFKA__ACK_TIMEOUT_SECONDS": "1.5"}
    outcomes: dict[str, list[httpx.Response]] = {}
    try:
        with mock.patch.dict(os.environ, env), serve(Settings()) as live:
            chest = STUDY["stolaf-ct-chest"]

            def burst() -> list[httpx.Response]:
                asks = ThreadPoolExecutor(8).map(lambda _: decision(live, ada, chest), range(16))
                return list(asks)

            outcomes["before"] = burst()
            kafka.stop()
            outcomes["during"] = burst()
            kafka = services.start_kafka(tmp_path / "own", fresh=False)
            deadline = time.monotonic() + 60
            while decision(live, ada, chest).status_code != 200:
                assert time.monotonic() < deadline, (
                    "the broker never recovered after Kafka came back"
                )
                time.sleep(1)
            outcomes["after"] = burst()
        assert [r.status_code for r in outcomes["before"]] == [200] * 16
        assert {r.status_code for r in outcomes["during"]} == {503}, [
            r.text for r in outcomes["during"]
        ]
        assert [r.status_code for r in outcomes["after"]] == [200] * 16
        granted = [
            r.json()["decision_id"] for phase in ("before", "after") for r in outcomes[phase]
        ]
        ledger = run_ledger(
            kafka, topics["TELERAD_KAFKA__AUDIT_TOPIC"], tmp_path / "l.db", tmp_path / "k.pem"
        )
        in_ledger: dict[str, int] = {}
        for i in range(ledger.store.size()):
            body = json.loads(ledger.store.leaf(i)[1])
            if body["kind"] == "decision":
                in_ledger[body["decision_id"]] = in_ledger.get(body["decision_id"], 0) + 1
        assert all(in_ledger.get(d) == 1 for d in granted), {d: in_ledger.get(d) for d in granted}
        ledger.store.close()
    finally:
        kafka.stop()


def _sink(kafka: Service, topic: str, source: str = "/test") -> KafkaAuditSink:
    """The broker's own sink, as the broker's principal."""
    return KafkaAuditSink(
        kafka.endpoints["bootstrap"],
        topic,
        source=source,
        ack_timeout_seconds=30,
        client_config=security_kwargs(kafka, BROKER),
    )


def _produce(kafka: Service, topic: str, n: int) -> list[str]:
    import asyncio

    sink = _sink(kafka, topic)
    events = [
        AuditEvent(
            kind=EventKind.DECISION,
            outcome=Outcome.ALLOW,
            subject=f"npi:{i % 7}",
            study_uid=f"1.2.3.{i % 11 + 1}",
            action="issue_link",
        )
        for i in range(n)
    ]

    async def go() -> None:
        await sink.start()
        for start in range(0, n, 500):
            await asyncio.gather(*(sink.emit(e) for e in events[start : start + 500]))
        await sink.close()

    asyncio.run(go())
    return [e.id for e in events]


def _ledger_size(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("SELECT count(*) FROM leaves").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_killed_consumer_loses_nothing_and_appends_nothing_twice(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    kafka = stack.services["kafka"]
    topic = topics["TELERAD_KAFKA__AUDIT_TOPIC"]
    ids = _produce(kafka, topic, 6000)
    env = (
        os.environ
        | kafka_env(kafka, CONSUMER)
        | {
            "TELERAD_STREAMS__LEDGER_PATH": str(tmp_path / "ledger.db"),
            "TELERAD_STREAMS__LEDGER_KEY_PATH": str(tmp_path / "key.pem"),
        }
    )
    argv = [sys.executable, "-m", "broker", "audit", "ledger", "--create-key", "--idle-exit", "4"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _ledger_size(tmp_path / "ledger.db") < 500:
        assert first.poll() is None and time.monotonic() < deadline, "the ledger never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    partial = _ledger_size(tmp_path / "ledger.db")
    assert 0 < partial < 6000, partial
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    with LedgerStore(tmp_path / "ledger.db") as store:
        assert store.size() == 6000
        assert {store.leaf(i)[0] for i in range(store.size())} == set(ids)
    verify = subprocess.run(
        [sys.executable, "-m", "broker", "audit", "verify", "--from-topic"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr[-2000:]
    assert json.loads(verify.stdout)["ok"] is True
    assert summary["size"] == 6000
    # tamper with one stored event: verify notices and fails
    with sqlite3.connect(tmp_path / "ledger.db") as con:
        con.execute(
            "UPDATE leaves SET data = replace(data, 'issue_link', 'issue_lynk') WHERE idx = 17"
        )
    tampered = subprocess.run(
        [sys.executable, "-m", "broker", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tampered.returncode == 1, tampered.stdout
    assert json.loads(tampered.stdout)["ok"] is False


def test_revocation_through_one_replica_holds_on_another(
    stack: Stack, topics: dict[str, str], broker_env: dict[str, str]
) -> None:
    ada = token(stack, "ada")
    headers = {"Authorization": f"Bearer {ada}"}
    port_b = free_port()
    with serve(Settings()) as a:
        with mock.patch.dict(
            os.environ,
            {
                "TELERAD_PUBLIC_URL": f"http://127.0.0.1:{port_b}",
                "TELERAD_INSTANCE_ID": "replica-b",
            },
        ):
            settings_b = Settings()
        with serve(settings_b) as b:
            issued = httpx.post(
                f"{a.url}/api/links", json={"study_uid": STUDY["stolaf-ct-chest"]}, headers=headers
            )
            assert issued.status_code == 200, issued.text
            link: dict[str, Any] = issued.json()
            on_b = link["url"].replace(a.url, b.url) + "/metadata"
            assert httpx.get(on_b, headers=headers, timeout=30).status_code == 200
            revoked = httpx.post(f"{a.url}/api/links/{link['link_id']}/revoke", headers=headers)
            assert revoked.status_code == 204, revoked.text
            deadline = time.monotonic() + 15
            while (status := httpx.get(on_b, headers=headers, timeout=30).status_code) != 410:
                assert status == 200 and time.monotonic() < deadline, status
                time.sleep(0.2)


def test_export_alerts_and_dead_letters(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    import asyncio
    from xml.etree import ElementTree

    from kafka import KafkaProducer

    kafka = stack.services["kafka"]
    topic = topics["TELERAD_KAFKA__AUDIT_TOPIC"]
    events = [
        AuditEvent(
            kind=EventKind.BREAK_GLASS,
            outcome=Outcome.ALLOW,
            subject="npi:1",
            study_uid="1.2.3",
            action="issue_link",
            purpose="stroke alert, attending away",
        ),
        AuditEvent(
            kind=EventKind.LINK_REDEEMED,
            outcome=Outcome.ALLOW,
            subject="npi:1",
            study_uid="1.2.3",
            action="redeem",
            operations=["view"],
        ),
    ]
    sink = _sink(kafka, topic)

    async def emit() -> None:
        await sink.start()
        for event in events:
            await sink.emit(event)
        await sink.close()

    asyncio.run(emit())
    poison = KafkaProducer(**client_kwargs(kafka, BROKER))
    poison.send(topic, key=b"1.2.3", value=b"{not json", headers=[("ce_specversion", b"1.0")]).get(
        30
    )
    poison.close()
    env = (
        os.environ
        | kafka_env(kafka, CONSUMER)
        | {
            "TELERAD_STREAMS__EXPORT_DIR": str(tmp_path / "export"),
        }
    )
    summaries = run_exports(topic, env)
    assert summaries == {f: {"events": 2, "written": 2} for f in ("fhir", "dicom")}, summaries
    fhir = [
        json.loads(line)
        for line in (tmp_path / "export" / "audit-fhir.ndjson").read_text().splitlines()
    ]
    assert [r["id"] for r in fhir] == [e.id for e in events]
    assert fhir[0]["resourceType"] == "AuditEvent"
    assert fhir[0]["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    xml_lines = (tmp_path / "export" / "audit-dicom-audit.xml.lines").read_text().splitlines()
    assert [ElementTree.fromstring(x).tag for x in xml_lines] == ["AuditMessage", "AuditMessage"]
    alerts = telerad(
        *("audit", "alerts", "--group", f"alerts-{topic}", "--idle-exit", "4"), env=env
    )
    assert alerts.returncode == 0, alerts.stderr[-2000:]
    consumer = KafkaConsumer(
        "telerad.alerts.v1",
        topics["TELERAD_STREAMS__DEAD_LETTER_TOPIC"],
        auto_offset_reset="earliest",
        **client_kwargs(kafka, CONSUMER),
        consumer_timeout_ms=8000,
    )
    try:
        got = list(consumer)
    finally:
        consumer.close()
    dead = [r for r in got if r.topic == topics["TELERAD_STREAMS__DEAD_LETTER_TOPIC"]]
    assert [r.value for r in dead] == [
        b"{not json"
    ] * 3  # once per consumer group: fhir, dicom, alerts
    assert all(dict(r.headers)["dlq_reason"] for r in dead)
    raised = [json.loads(r.value) for r in got if r.topic == "telerad.alerts.v1"]
    assert any(a["rule"] == "break_glass" and a["event_id"] == events[0].id for a in raised)


def test_kill_9_loses_nothing_acknowledged(
    stack: Stack, topics: dict[str, str], broker_env: dict[str, str]
) -> None:
    import threading

    port = free_port()
    env = os.environ | {"TELERAD_PORT": str(port), "TELERAD_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.2)
        ada = token(stack, "ada")
        granted: list[str] = []
        lock = threading.Lock()

        def one(_: int) -> None:
            try:
                r = httpx.post(
                    f"{url}/api/decisions",
                    json={"study_uid": STUDY["stolaf-ct-chest"]},
                    headers={"Authorization": f"Bearer {ada}"},
                    timeout=10,
                )
            except httpx.HTTPError:
                return  # the broker died under this request: it never answered yes
            if r.status_code == 200 and r.json()["allow"]:
                with lock:
                    granted.append(r.json()["decision_id"])
                    if len(granted) == 40:
                        os.killpg(broker.pid, signal.SIGKILL)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(400)))
        broker.wait(timeout=10)
        assert broker.returncode == -signal.SIGKILL
        assert 40 <= len(granted) < 400
    finally:
        if broker.poll() is None:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
    consumer = KafkaConsumer(
        topics["TELERAD_KAFKA__AUDIT_TOPIC"],
        auto_offset_reset="earliest",
        **client_kwargs(stack.services["kafka"], CONSUMER),
        consumer_timeout_ms=8000,
    )
    try:
        recorded = {json.loads(r.value).get("decision_id") for r in consumer}
    finally:
        consumer.close()
    missing = [d for d in granted if d not in recorded]
    assert missing == [], f"{len(missing)} acknowledged grants have no audit record"


def test_consent_change_on_the_stream_is_enforced(stack: Stack, topics: dict[str, str]) -> None:
    import asyncio

    ada = token(stack, "ada")
    study = STUDY["stolaf-ct-chest"]
    with serve(Settings()) as live:
        assert decision(live, ada, STUDY["stolaf-ct-chest"]).json()["allow"] is True
        change = AuditEvent(
            kind=EventKind.CONSENT_CHANGED,
            outcome=Outcome.SUCCESS,
            study_uid=study,
            detail={"consent": "deny", "by": "hospital consent registry"},
        )
        sink = _sink(
            stack.services["kafka"],
            topics["TELERAD_KAFKA__REVOCATION_TOPIC"],
            source="/hospital/consent-registry",
        )

        async def publish() -> None:
            await sink.start()
            await sink.emit(change)
            await sink.close()

        asyncio.run(publish())
        deadline = time.monotonic() + 15
        while (result := decision(live, ada, STUDY["stolaf-ct-chest"]).json())["allow"]:
            assert time.monotonic() < deadline, "the consent change never reached the broker"
            time.sleep(0.2)
        assert [r["code"] for r in result["reasons"]] == ["consent_denied"]
