"""Decision windows against the real stack: one decision per holder and link, ended everywhere."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import httpx
import pytest

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.audit.kafka import KafkaAuditSink
from broker.audit.sink import MemorySink
from broker.config import Settings
from devstack import services
from devstack._procs import free_port
from devstack.kafka_cluster import (
    ADMIN,
    BROKER,
    CONSUMER,
    client_kwargs,
    kafka_env,
    security_kwargs,
)
from devstack.samples import sample_studies
from devstack.stack import Stack, repo_root
from tests.integration.conftest import LiveBroker, serve
from tests.integration.helpers import (
    password_token,
    publish_worklist,
    run_exports,
    transfer_records,
)

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
CT = STUDY["stolaf-ct-chest"]
LINK_KEY = base64.urlsafe_b64encode(b"w" * 32).rstrip(b"=").decode()  # dev-only, test-only key


def token(stack: Stack, user: str) -> str:
    return password_token(stack.services["keycloak"].endpoints["hospital-a"], user)


def issue(url: str, bearer: str, study: str = CT.study_uid) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/api/links",
        json={"study_uid": study},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    link: dict[str, Any] = response.json()
    return link


def metadata(link: dict[str, Any], bearer: str, base: str | None = None) -> int:
    """GET the linked study's metadata (through replica ``base`` when given)."""
    target = link["url"]
    if base is not None:
        target = base + "/links/" + target.split("/links/", 1)[1]
    return httpx.get(
        f"{target}/metadata", headers={"Authorization": f"Bearer {bearer}"}, timeout=30
    ).status_code


def study_instances(link: dict[str, Any], headers: dict[str, str]) -> list[tuple[str, str]]:
    """(series UID, SOP Instance UID) of every instance of the linked study, from its metadata."""
    answer = httpx.get(f"{link['url']}/metadata", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return sorted((ds["0020000E"]["Value"][0], ds["00080018"]["Value"][0]) for ds in answer.json())


def redeem_decisions(audit: MemorySink) -> list[AuditEvent]:
    """The policy decisions of action redeem."""
    return [e for e in audit.events if e.kind is EventKind.DECISION and e.action == "redeem"]


def grants(audit: MemorySink, link_id: str) -> list[AuditEvent]:
    return [e for e in audit.events if e.kind is EventKind.LINK_GRANTED and e.link_id == link_id]


class TestOneReplica:
    def test_the_first_redemption_decides_the_rest_reuse(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker.url, ada)
        for _ in range(5):
            assert metadata(link, ada) == 200
        assert len(redeem_decisions(live_broker.audit)) == 1
        (grant,) = grants(live_broker.audit, link["link_id"])
        decision = redeem_decisions(live_broker.audit)[0]
        assert grant.decision_id == decision.decision_id
        assert grant.detail["window_end"] - grant.detail["window_start"] == 30  # the policy's
        assert grant.detail["holder"] == "sub"
        assert grant.operations == ["view"]
        # the grant is recorded with its decision; the reads aggregated (one record per flush
        # second the five requests spanned), not five events
        records = transfer_records(live_broker.audit, link["link_id"], requests=5)
        assert sum(r.detail["requests"] for r in records) == 5
        assert len(records) < 5 and all(r.detail["grant_event"] == grant.id for r in records)
        assert not [e for e in live_broker.audit.events if e.kind is EventKind.LINK_REDEEMED]

    def test_frames_are_recorded_per_series_with_instances_and_frames(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker.url, ada)
        headers = {"Authorization": f"Bearer {ada}"}
        instances = study_instances(link, headers)
        for series, sop in instances:
            got = httpx.get(
                f"{link['url']}/series/{series}/instances/{sop}/frames/1",
                headers=headers | {"Accept": "multipart/related; type=application/octet-stream"},
                timeout=30,
            )
            assert got.status_code == 200, got.text
        everything = transfer_records(
            live_broker.audit, link["link_id"], requests=1 + len(instances)
        )
        series_records = [e for e in everything if e.detail["series_uid"] is not None]
        recorded = {
            (e.detail["series_uid"], i["sop_instance_uid"]): i["frames"]
            for e in series_records
            for i in e.detail["instances"]
        }
        assert recorded == {instance: [1] for instance in instances}
        assert all(e.detail["bytes"] > 0 and e.detail["failed"] == 0 for e in series_records)

    def test_another_link_or_holder_does_not_reuse_it(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada, ben = token(stack, "ada"), token(stack, "ben")
        first, second = issue(live_broker.url, ada), issue(live_broker.url, ada)
        assert metadata(first, ada) == 200
        assert metadata(second, ada) == 200  # its own decision
        assert len(redeem_decisions(live_broker.audit)) == 2
        # someone else with the link: refused before any window is looked at
        assert metadata(first, ben) == 403
        assert len(redeem_decisions(live_broker.audit)) == 2

    def test_concurrent_first_requests_ask_once(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker.url, ada)

        async def viewer() -> list[int]:
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {ada}"}, timeout=30
            ) as client:
                answers = await asyncio.gather(
                    *(client.get(f"{link['url']}/metadata") for _ in range(6))
                )
            return [a.status_code for a in answers]

        assert asyncio.run(viewer()) == [200] * 6
        assert len(redeem_decisions(live_broker.audit)) == 1
        assert len(grants(live_broker.audit, link["link_id"])) == 1

    def test_a_change_while_deciding_keeps_the_decision_single_use(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        state = live_broker.app.state.telerad
        fetch = state.facts.get

        async def facts_then_a_change(study_uid: str) -> Any:
            facts = await fetch(study_uid)
            state.revocations.changed("consent", study_uid)  # lands while the policy is asked
            return facts

        ada = token(stack, "ada")
        link = issue(live_broker.url, ada)
        state.facts.get = facts_then_a_change
        try:
            assert metadata(link, ada) == 200  # granted, recorded, served...
            assert len(state.windows) == 0  # ...but decided on facts that may be stale
            assert metadata(link, ada) == 200
            assert len(redeem_decisions(live_broker.audit)) == 2
        finally:
            state.facts.get = fetch

    def test_revoking_the_link_ends_its_window(self, live_broker: LiveBroker, stack: Stack) -> None:
        ada = token(stack, "ada")
        link = issue(live_broker.url, ada)
        assert metadata(link, ada) == 200
        windows = live_broker.app.state.telerad.windows
        assert len(windows) == 1
        revoked = httpx.post(
            f"{live_broker.url}/api/links/{link['link_id']}/revoke",
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert revoked.status_code == 204, revoked.text
        assert len(windows) == 0
        assert metadata(link, ada) == 410


@pytest.fixture
def topics(stack: Stack, broker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fresh Kafka topics (created up front, as a deployment has them: a listener subscribed to
    a topic that does not exist yet only sees it at its next metadata refresh), the Kafka sink,
    and one link key for every replica."""
    from kafka.admin import KafkaAdminClient, NewTopic

    suffix = uuid.uuid4().hex[:10]
    names = {
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-{suffix}",
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_LINKS__KEYS": json.dumps({"k1": LINK_KEY}),
    }
    admin = KafkaAdminClient(**client_kwargs(stack.services["kafka"], ADMIN))
    try:
        admin.create_topics(
            [NewTopic(names[k], 1, 1) for k in names if k.endswith("_TOPIC")], timeout_ms=10_000
        )
    finally:
        admin.close()
    with mock.patch.dict(os.environ, names):
        yield names


def publish(stack: Stack, topic: str, event: AuditEvent) -> None:
    """What the hospital's systems (or another replica) put on the control topic."""
    kafka = stack.services["kafka"]
    sink = KafkaAuditSink(
        kafka.endpoints["bootstrap"],
        topic,
        source="/hospital/test",
        client_config=security_kwargs(kafka, BROKER),  # only the broker may write it
    )

    async def run() -> None:
        await sink.start()
        await sink.emit(event)
        await sink.close()

    asyncio.run(run())


def second_replica() -> Settings:
    with mock.patch.dict(
        os.environ,
        {"TELERAD_PUBLIC_URL": f"http://127.0.0.1:{free_port()}", "TELERAD_INSTANCE_ID": "b"},
    ):
        return Settings()


def until(predicate: Any, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


class TestEveryReplica:
    def test_consent_change_ends_windows_and_the_next_request_is_denied(
        self, stack: Stack, topics: dict[str, str]
    ) -> None:
        ada = token(stack, "ada")
        with serve(Settings()) as a, serve(second_replica()) as b:
            link = issue(a.url, ada)
            assert metadata(link, ada) == 200
            assert metadata(link, ada, base=b.url) == 200  # a window on each replica
            windows_a = a.app.state.telerad.windows
            windows_b = b.app.state.telerad.windows
            assert (len(windows_a), len(windows_b)) == (1, 1)
            publish(
                stack,
                topics["TELERAD_KAFKA__REVOCATION_TOPIC"],
                AuditEvent(
                    kind=EventKind.CONSENT_CHANGED,
                    outcome=Outcome.SUCCESS,
                    study_uid=CT.study_uid,
                    detail={"consent": "deny", "by": "hospital consent registry"},
                ),
            )
            until(lambda: len(windows_a) == len(windows_b) == 0, "windows still open")
            # the window ended: the next request asks again, and the stream stops there
            assert metadata(link, ada) == 403
            assert metadata(link, ada, base=b.url) == 403

    def test_policy_revision_ends_windows_on_every_replica(
        self, stack: Stack, topics: dict[str, str]
    ) -> None:
        ada = token(stack, "ada")
        with serve(Settings()) as a, serve(second_replica()) as b:
            link = issue(a.url, ada)
            assert metadata(link, ada) == 200
            assert metadata(link, ada, base=b.url) == 200
            windows = [a.app.state.telerad.windows, b.app.state.telerad.windows]
            assert [len(w) for w in windows] == [1, 1]
            publish(
                stack,
                topics["TELERAD_KAFKA__REVOCATION_TOPIC"],
                AuditEvent(
                    kind=EventKind.POLICY_REVISED,
                    outcome=Outcome.SUCCESS,
                    policy_revision="policy-bundle.tar.gz@a-newer-revision",
                ),
            )
            until(lambda: [len(w) for w in windows] == [0, 0], "windows still open")
            assert metadata(link, ada) == 200  # decided again, a new window
            assert [len(w) for w in windows] == [1, 0]


class TestAssignmentChange:
    @pytest.fixture
    def own_opa(self, tmp_path: Any) -> Iterator[Any]:
        policies = repo_root() / "policies"
        paths = [policies / "telerad", policies / "data"]
        service = services.start_opa(tmp_path, policy_paths=paths)
        yield service
        service.stop()

    def test_assignment_change_ends_the_window(
        self, stack: Stack, topics: dict[str, str], own_opa: Any
    ) -> None:
        opa = own_opa.endpoints["url"]
        uid = CT.study_uid
        patch = [
            {"op": "add", "path": "/radiologists/npi:1000000002/licenses/-", "value": "US-CA"},
            {"op": "add", "path": "/radiologists/npi:1000000002/privileges/-", "value": "st-olaf"},
        ]
        assert httpx.patch(f"{opa}/v1/data/telerad", json=patch).status_code == 204
        worklist = f"worklist-{uuid.uuid4().hex[:10]}"
        publish_worklist(stack, worklist, uid, ["npi:1000000001", "npi:1000000002"])
        ben = token(stack, "ben")
        env = {"TELERAD_OPA__URL": opa, "TELERAD_KAFKA__WORKLIST_TOPIC": worklist}
        with mock.patch.dict(os.environ, env), serve(Settings()) as live:
            link = issue(live.url, ben)
            assert metadata(link, ben) == 200
            # the RIS takes ben off the study: his open window ends, the next request is refused
            publish_worklist(
                stack, worklist, uid, ["npi:1000000001"], kind="unassigned", reader="npi:1000000002"
            )
            until(lambda: metadata(link, ben) == 403, "the window was not ended")

    def test_closed_study_ends_the_window(
        self, stack: Stack, topics: dict[str, str], own_opa: Any
    ) -> None:
        opa = own_opa.endpoints["url"]
        no_coverage = [{"op": "replace", "path": "/coverage", "value": {}}]  # assignment only
        assert httpx.patch(f"{opa}/v1/data/telerad", json=no_coverage).status_code == 204
        uid = CT.study_uid
        worklist = f"worklist-{uuid.uuid4().hex[:10]}"
        publish_worklist(stack, worklist, uid, ["npi:1000000001"])
        ada = token(stack, "ada")
        env = {"TELERAD_OPA__URL": opa, "TELERAD_KAFKA__WORKLIST_TOPIC": worklist}
        with mock.patch.dict(os.environ, env), serve(Settings()) as live:
            link = issue(live.url, ada)
            assert metadata(link, ada) == 200
            publish_worklist(stack, worklist, uid, [], kind="closed")
            until(lambda: metadata(link, ada) == 403, "the window was not ended")


def read_topic(stack: Stack, topic: str) -> list[AuditEvent]:
    from kafka import KafkaConsumer

    from broker.audit.cloudevents import from_record

    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
        **client_kwargs(stack.services["kafka"], CONSUMER),
    )
    try:
        return [from_record(r.value, r.headers) for r in consumer]
    finally:
        consumer.close()


class TestTransfersDownstream:
    def test_transfers_reach_the_ledger_and_both_exports(
        self, stack: Stack, topics: dict[str, str], tmp_path: Any
    ) -> None:
        from xml.etree import ElementTree

        from tests.integration.test_audit_stream import run_ledger

        ada = token(stack, "ada")
        headers = {"Authorization": f"Bearer {ada}"}
        with serve(Settings()) as live:
            link = issue(live.url, ada)
            instances = study_instances(link, headers)
            for series, sop in instances:
                got = httpx.get(
                    f"{link['url']}/series/{series}/instances/{sop}/frames/1",
                    headers=headers,
                    timeout=30,
                )
                assert got.status_code == 200
        # the shutdown flushed what was pending
        topic = topics["TELERAD_KAFKA__AUDIT_TOPIC"]
        events = read_topic(stack, topic)
        ours = [e for e in events if e.link_id == link["link_id"]]
        transfers = [e for e in ours if e.kind is EventKind.LINK_TRANSFERRED]
        assert [e.kind for e in ours if e.kind is EventKind.LINK_GRANTED] == [
            EventKind.LINK_GRANTED
        ]
        # the metadata and every frame, however the flushes fell
        assert sum(e.detail["requests"] for e in transfers) == 1 + len(instances)
        kafka = stack.services["kafka"]
        ledger = run_ledger(kafka, topic, tmp_path / "ledger.db", tmp_path / "key.pem")
        assert ledger.appended == len(events)
        leaves = {ledger.store.leaf(i)[0] for i in range(ledger.store.size())}
        assert {e.id for e in transfers} <= leaves
        env = (
            os.environ
            | kafka_env(kafka, CONSUMER)
            | {
                "TELERAD_STREAMS__EXPORT_DIR": str(tmp_path / "export"),
            }
        )
        summaries = run_exports(topic, env)
        counts = {"events": len(events), "written": len(events)}
        assert summaries == {"fhir": counts, "dicom": counts}, summaries
        lines = (tmp_path / "export" / "audit-fhir.ndjson").read_text().splitlines()
        fhir = {r["id"]: r for r in map(json.loads, lines)}
        for event in transfers:
            resource = fhir[event.id]
            assert (resource["type"]["code"], resource["action"]) == ("rest", "R")
            assert resource["period"]["start"] <= resource["period"]["end"]
        xml = (tmp_path / "export" / "audit-dicom-audit.xml.lines").read_text().splitlines()
        event_ids = []
        for line in xml:
            found = ElementTree.fromstring(line).find("EventIdentification/EventID")
            assert found is not None
            event_ids.append(found.attrib["csd-code"])
        assert event_ids.count("110104") == len(transfers)


class TestKill9:
    def test_sigkill_mid_study_loses_no_grant(
        self, stack: Stack, topics: dict[str, str], broker_env: dict[str, str]
    ) -> None:
        """Studies opened one after another; the broker is killed with SIGKILL in the middle of
        the last one. Every link that answered a byte has its grant in Kafka; every study that
        finished more than a flush interval before the kill has its transfer records, exactly."""
        import signal
        import subprocess
        import sys
        import threading
        from concurrent.futures import ThreadPoolExecutor

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = os.environ | {"TELERAD_PORT": str(port), "TELERAD_PUBLIC_URL": url}
        broker = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ada = token(stack, "ada")
        headers = {"Authorization": f"Bearer {ada}"}
        answered: dict[str, int] = {}  # link id -> 200s received
        counting = threading.Lock()
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

            def open_study(link: dict[str, Any], requests: int, kill_after: int | None) -> None:
                frames = [
                    f"{link['url']}/series/{series}/instances/{sop}/frames/1"
                    for series, sop in study_instances(link, headers)
                ]
                answered[link["link_id"]] = 1  # the metadata above
                targets = [frames[i % len(frames)] for i in range(requests)]

                def get(target: str) -> None:
                    try:
                        status = httpx.get(target, headers=headers, timeout=10).status_code
                    except httpx.HTTPError:
                        return  # the broker died under this request
                    if status != 200:
                        return
                    with counting:
                        answered[link["link_id"]] += 1
                        if kill_after is not None and answered[link["link_id"]] == kill_after:
                            os.killpg(broker.pid, signal.SIGKILL)

                with ThreadPoolExecutor(6) as pool:
                    list(pool.map(get, targets))

            finished = []
            for _ in range(3):
                link = issue(url, ada)
                open_study(link, 30, None)
                finished.append(link["link_id"])
            time.sleep(2.5)  # more than a flush interval (1 s) and its acknowledgement
            last = issue(url, ada)
            open_study(last, 400, kill_after=40)
            broker.wait(timeout=10)
            assert broker.returncode == -signal.SIGKILL
            assert 40 <= answered[last["link_id"]] < 401
        finally:
            if broker.poll() is None:
                os.killpg(broker.pid, signal.SIGKILL)
                broker.wait()
        events = read_topic(stack, topics["TELERAD_KAFKA__AUDIT_TOPIC"])
        granted = {e.link_id for e in events if e.kind is EventKind.LINK_GRANTED}
        assert set(answered) <= granted, "a link answered without a durable grant"
        for link_id in finished:
            requests = sum(
                e.detail["requests"]
                for e in events
                if e.kind is EventKind.LINK_TRANSFERRED and e.link_id == link_id
            )
            assert requests == answered[link_id], (link_id, requests, answered[link_id])
