"""A three-node KRaft cluster loses the audit partition's leader under a load of link issuance.

The audit topic has one partition, three replicas and ``min.insync.replicas=2``; the broker's
producer writes with ``acks=all``. Mid-load the partition's leader is SIGKILLed. Afterwards every
link the broker issued (every 200) is on the topic, read with a plain kafka-python consumer (not
the broker's code); the refusals are 503s, all inside one window while a new leader is elected;
and the broker issues links again without a restart. The window is printed (``-s`` shows it).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import pytest
from kafka import KafkaConsumer

from broker.audit.kafka_admin import admin_client, alter_topics
from broker.config import Settings
from devstack import services
from devstack.kafka_cluster import ADMIN, BROKER, CONSUMER, client_kwargs, kafka_env
from devstack.samples import sample_studies
from devstack.services import Service
from devstack.stack import Stack
from tests.integration.conftest import serve
from tests.integration.helpers import password_token

pytestmark = pytest.mark.integration

STUDY = next(s.study_uid for s in sample_studies() if s.key == "stolaf-ct-chest")
LINK_KEY = base64.urlsafe_b64encode(b"l" * 32).rstrip(b"=").decode()  # dev-only, test-only


@dataclass(frozen=True)
class Outcome:
    at: float
    status: int
    link_id: str | None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Service]:
    kafka = services.start_kafka(tmp_path / "three", nodes=3)
    try:
        yield kafka
    finally:
        kafka.stop()


def _leader(kafka: Service, topic: str) -> int:
    with admin_client(**client_kwargs(kafka, ADMIN)) as admin:
        (described,) = admin.describe_topics([topic])
    leader: int = described["partitions"][0]["leader_id"]
    return leader


def test_leader_killed_under_load_loses_no_grant(
    stack: Stack, broker_env: dict[str, str], cluster: Service
) -> None:
    suffix = uuid.uuid4().hex[:10]
    audit, control = f"audit-{suffix}", f"revocations-{suffix}"
    with admin_client(**client_kwargs(cluster, ADMIN)) as admin:
        alter_topics(
            admin,
            create={
                audit: (1, 3, {"min.insync.replicas": "2"}),
                control: (1, 3, {"min.insync.replicas": "2", "cleanup.policy": "compact"}),
            },
            partitions={},
            configs={},
        )
    env = kafka_env(cluster, BROKER) | {
        "TELERAD_KAFKA__AUDIT_TOPIC": audit,
        "TELERAD_KAFKA__REVOCATION_TOPIC": control,
        "TELERAD_KAFKA__REPLICATION_FACTOR": "3",
        "TELERAD_KAFKA__MIN_INSYNC_REPLICAS": "2",
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_LINKS__KEYS": json.dumps({"k1": LINK_KEY}),
        # four workers issue as one person for half a minute: load, not a person's use
        "TELERAD_RATE_LIMITS__ISSUE_BURST": "1000000",
    }
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()
    with mock.patch.dict(os.environ, env), serve(Settings()) as live:

        def issue(_: int) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    r = client.post(
                        f"{live.url}/api/links",
                        json={"study_uid": STUDY},
                        headers={"Authorization": f"Bearer {ada}"},
                    )
                    link = r.json().get("link_id") if r.status_code == 200 else None
                    with lock:
                        outcomes.append(Outcome(time.monotonic(), r.status_code, link))
                    time.sleep(0.02)  # bounded load: at most ~50 requests/s per worker

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(issue, i) for i in range(4)]
            time.sleep(4)
            leader = _leader(cluster, audit)
            killed_at = time.monotonic()
            procs = [cluster.process, *cluster.more]
            victim = procs[leader - 1]
            assert victim is not None and victim.pid is not None
            os.killpg(victim.pid, signal.SIGKILL)
            time.sleep(25)
            stop.set()
            for worker in workers:
                worker.result()

    before = [o for o in outcomes if o.at < killed_at]
    after = [o for o in outcomes if o.at >= killed_at]
    refused = [o for o in outcomes if o.status != 200]
    assert before and all(o.status == 200 for o in before), {o.status for o in before}
    assert {o.status for o in refused} <= {503}, {o.status for o in refused}
    window = (refused[-1].at - killed_at) if refused else 0.0
    recovered = [o for o in after if o.status == 200 and (not refused or o.at > refused[-1].at)]
    assert recovered, "the broker did not issue links again after the leader was re-elected"
    print(  # the figure the issue asks for
        f"\nleader node {leader} SIGKILLed: {len(refused)} of {len(after)} requests refused (503) "
        f"within {window:.1f} s of the kill; {len(before)} before, {len(recovered)} after"
    )
    # The controller fences a dead broker after broker.session.timeout.ms (9 s by default) and
    # only then elects a new leader; the producer then needs a metadata refresh. Measured here:
    # about 14 s on two loaded cores.
    assert window < 30, f"unavailable for {window:.1f} s"

    granted = {o.link_id for o in outcomes if o.status == 200}
    consumer = KafkaConsumer(
        audit,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
        **client_kwargs(cluster, CONSUMER),
    )
    try:
        on_topic = {json.loads(r.value).get("link_id") for r in consumer}
    finally:
        consumer.close()
    missing = granted - on_topic
    assert not missing, f"{len(missing)} of {len(granted)} issued links have no audit record"
