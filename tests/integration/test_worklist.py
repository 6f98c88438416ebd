"""The RIS's worklist against the real stack: Kafka (TLS, SCRAM, ACLs), OPA, Keycloak, Orthanc.

Assignment and unassignment move a study into and out of a radiologist's decisions on two
replicas within a second; a replica started after the events decides the same from its first
request; only the RIS's principal can write the topic; a malformed record changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from unittest import mock

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from broker.worklist import WorklistEvent, WorklistKind, to_record
from devstack import services
from devstack.kafka_cluster import BROKER, CONSUMER, INTRUDER, RIS, client_kwargs, kafka_env
from devstack.samples import sample_studies
from devstack.stack import Stack, repo_root
from tests.integration.conftest import serve
from tests.integration.helpers import (
    browser_login,
    decided,
    password_token,
    publish_worklist,
    replica_settings,
    seconds_until_decided,
)

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
# st-olaf, not sensitive: ada is privileged and licensed there; her reading group's coverage is
# taken out of a private OPA's data (below), so only an explicit assignment lets her read it
# (the tests' fresh worklist topics start with no assignment)
J2K = STUDY["stolaf-mr-j2k"]
EVE = "npi:1000000001"


def assign(stack: Stack, topic: str, readers: list[str], **fields: Any) -> None:
    """Publish the RIS's assignment of the study under test (at its facility)."""
    publish_worklist(stack, topic, J2K.study_uid, readers, facility=J2K.facility, **fields)


@pytest.fixture
def worklist(broker_env: dict[str, str], tmp_path: Any) -> Iterator[str]:
    """A fresh worklist topic, and a private OPA whose data has no group coverage."""
    policies = repo_root() / "policies"
    opa = services.start_opa(tmp_path, policy_paths=[policies / "telerad", policies / "data"])
    try:
        url = opa.endpoints["url"]
        no_coverage = [{"op": "replace", "path": "/coverage", "value": {}}]
        assert httpx.patch(f"{url}/v1/data/telerad", json=no_coverage).status_code == 204
        topic = f"worklist-{uuid.uuid4().hex[:10]}"
        env = {"TELERAD_KAFKA__WORKLIST_TOPIC": topic, "TELERAD_OPA__URL": url}
        with mock.patch.dict(os.environ, env):
            yield topic
    finally:
        opa.stop()


@pytest.fixture
def eve(stack: Stack) -> str:
    return password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")


class TestAssignment:
    def test_assign_and_unassign_reach_both_replicas_within_a_second(
        self, stack: Stack, worklist: str, eve: str
    ) -> None:
        with ExitStack() as running:
            replicas = [running.enter_context(serve(replica_settings())) for _ in range(2)]
            assert [decided(r, eve, J2K.study_uid)["allow"] for r in replicas] == [False, False]
            assign(stack, worklist, [EVE], reader=EVE)
            took = [seconds_until_decided(r, eve, J2K.study_uid, allow=True) for r in replicas]
            print(f"assignment in force after {took} s")  # shown with -s
            assert max(took) < 1.0, took
            reasons = [c["code"] for c in decided(replicas[1], eve, J2K.study_uid)["reasons"]]
            assert "assigned_on_worklist" in reasons
            assign(stack, worklist, [], reader=EVE)
            took = [seconds_until_decided(r, eve, J2K.study_uid, allow=False) for r in replicas]
            assert max(took) < 1.0, took
            refused = decided(replicas[0], eve, J2K.study_uid)
            assert [c["code"] for c in refused["reasons"]] == ["not_assigned"], refused

    def test_a_replica_started_later_decides_the_same_from_its_first_request(
        self, stack: Stack, worklist: str, eve: str
    ) -> None:
        assign(stack, worklist, [EVE, "npi:1000000005"])
        assign(stack, worklist, [EVE], kind="unassigned", reader="npi:1000000005")
        with serve(replica_settings()) as late:
            ready = httpx.get(f"{late.url}/readyz", timeout=30).json()
            assert ready["checks"]["worklist-topic"]["ready"] is True, ready
            assert "2 applied" in ready["checks"]["worklist-topic"]["detail"], ready
            assert decided(late, eve, J2K.study_uid)["allow"] is True

    async def test_the_worklist_page_lists_the_assigned_study_with_its_priority(
        self, stack: Stack, worklist: str
    ) -> None:
        assign(stack, worklist, [EVE], priority="stat")
        with serve(replica_settings()) as live:
            async with httpx.AsyncClient(timeout=30) as client:

                async def plain_http_cookies(_: httpx.Response) -> None:
                    for cookie in client.cookies.jar:  # Keycloak's Secure cookies over http
                        cookie.secure = False

                client.event_hooks["response"] = [plain_http_cookies]
                signed_in = await browser_login(
                    client, live.url, idp="hospital-a", username="ada", next_path="/"
                )
                assert signed_in.status_code == 303, signed_in.text
                page = await client.get(f"{live.url}/")
            assert page.status_code == 200, page.text
            row = page.text.split(f'data-study-uid="{J2K.study_uid}"', 1)[1].split("</tr>")[0]
            assert "priority-stat" in row and "assigned by ris-test" in row, row
            assert page.text.count("data-study-uid=") == 1  # nothing else is eve's on this topic


class TestForgedAndMalformed:
    @pytest.mark.parametrize("user", [INTRUDER, BROKER])
    def test_only_the_ris_may_write_the_worklist(
        self, stack: Stack, worklist: str, user: str
    ) -> None:
        assign(stack, worklist, [EVE])  # the topic exists
        event = WorklistEvent(
            kind=WorklistKind.ASSIGNED,
            study_uid=J2K.study_uid,
            facility="st-olaf",
            readers=["npi:1000000009"],
            assigning_system="forged",
        )
        key, value, headers = to_record(event, source="/forged")
        producer = KafkaProducer(
            **client_kwargs(stack.services["kafka"], user), max_block_ms=5000, retries=0
        )
        try:
            with pytest.raises(KafkaError):
                producer.send(worklist, key=key, value=value, headers=headers).get(timeout=10)
        finally:
            producer.close(5)

    def test_a_malformed_record_changes_nothing(
        self, stack: Stack, worklist: str, eve: str
    ) -> None:
        assign(stack, worklist, [EVE])
        key, value, headers = to_record(
            WorklistEvent(
                kind=WorklistKind.UNASSIGNED,
                study_uid=J2K.study_uid,
                facility="st-olaf",
                readers=[],
                assigning_system="ris-test",
            ),
            source="/ris",
        )
        producer = KafkaProducer(**client_kwargs(stack.services["kafka"], RIS))
        try:
            # the right study, a bad body (an unknown priority): refused, the study stays assigned
            bad = value.replace(b'"priority":"routine"', b'"priority":"whenever"')
            producer.send(worklist, key=key, value=bad, headers=headers).get(timeout=10)
            producer.send(worklist, key=key, value=b"{", headers=headers).get(timeout=10)
        finally:
            producer.close(5)
        with serve(replica_settings()) as live:
            listener = live.app.state.telerad.worklist_listener
            assert (listener.applied, listener.rejected) == (1, 2)
            assert decided(live, eve, J2K.study_uid)["allow"] is True

        # the checker, as the consumers' principal: both bad records on the dead-letter topic,
        # each with its reason and origin; the good one is not
        dlq = f"dlq-worklist-{uuid.uuid4().hex[:10]}"
        env = (
            dict(os.environ)
            | kafka_env(stack.services["kafka"], CONSUMER)
            | {"TELERAD_STREAMS__DEAD_LETTER_TOPIC": dlq}
        )
        checked = subprocess.run(
            [sys.executable, "-m", "broker", "audit", "worklist", "--idle-exit", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 0, checked.stderr[-2000:]
        assert json.loads(checked.stdout.strip().splitlines()[-1]) == {
            "events": 1,
            "dead_letters": 2,
            "kinds": {"assigned": 1},
        }
        consumer = KafkaConsumer(
            dlq,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
            **client_kwargs(stack.services["kafka"], CONSUMER),
        )
        try:
            letters = list(consumer)
        finally:
            consumer.close()
        reasons = [dict(r.headers)["dlq_reason"].decode() for r in letters]
        assert len(reasons) == 2, reasons
        assert all("not a valid worklist event" in r for r in reasons), reasons
        assert "priority" in reasons[0], reasons
        assert all(dict(r.headers)["dlq_origin"].startswith(worklist.encode()) for r in letters)
