"""Enforcement end to end: real tokens (Keycloak), real study facts (Orthanc), real OPA."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import services
from devstack.samples import sample_studies
from devstack.stack import Stack, repo_root
from tests.integration.conftest import Broker
from tests.integration.helpers import (
    EVE_TOTP_BASE32,
    browser_login,
    password_token,
    publish_worklist,
)

pytestmark = pytest.mark.integration

STUDY = {s.key: s.study_uid for s in sample_studies()}
JUSTIFICATION = "Stroke alert: attending unreachable, CT needed now"


def token(stack: Stack, user: str, realm: str = "hospital-a") -> str:
    return password_token(stack.services["keycloak"].endpoints[realm], user, realm=realm)


async def decide(
    broker: Broker,
    bearer: str | None,
    study: str,
    operations: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    body = {"study_uid": STUDY[study], "operations": operations or ["view"], **extra}
    response = await broker.client.post(f"{broker.url}/api/decisions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def codes(decision: dict[str, Any]) -> list[str]:
    return [r["code"] for r in decision["reasons"]]


class TestRules:
    async def test_assigned_radiologist_is_allowed(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "ada"), "stolaf-ct-chest", ["view", "download"])
        assert result["allow"] is True, result
        assert codes(result) == ["assigned_on_worklist", "group_coverage", "privileged"]
        assert result["obligations"] == {
            "link_ttl_seconds": 600,
            "operations": ["download", "view"],
            "alert": False,
            "break_glass": False,
            "bearer_only_redeem": False,
            "redeem_window_seconds": 0,
            "unfingerprinted": "serve",
        }
        assert result["decision_id"]
        assert broker.audit.events[-1].decision_id == result["decision_id"]
        revision = broker.audit.events[-1].policy_revision
        assert revision is not None and revision.startswith("policy-bundle.tar.gz@"), revision

    async def test_no_license_no_privilege(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "ada"), "mercy-ct-head")
        assert result["allow"] is False
        assert codes(result) == [
            "not_assigned",
            "not_licensed",
            "not_privileged",
            "step_up_required",
        ]
        assert "step_up" not in result["obligations"]

    async def test_sensitive_needs_explicit_assignment(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "ada"), "stolaf-mr-bh")
        assert result["allow"] is False
        assert codes(result) == ["sensitive_requires_assignment", "step_up_required"]

    async def test_consent_opt_out_denies(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "ada"), "stolaf-ct-optout")
        assert (result["allow"], codes(result)) == (False, ["consent_denied"])

    async def test_download_needs_its_own_permission(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "ben"), "mercy-ct-head", ["view", "download"])
        assert result["allow"] is False
        assert "download_not_permitted" in codes(result)

    async def test_weak_authentication_asks_for_step_up(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "fay", "hospital-b"), "mercy-ct-head")
        assert (result["allow"], codes(result)) == (False, ["step_up_required"])
        assert result["obligations"]["step_up"] == {"acr": "2", "max_age": 3600}

    async def test_referring_physician_own_patient_view_only(
        self, broker: Broker, stack: Stack
    ) -> None:
        carla = token(stack, "carla")
        view = await decide(broker, carla, "stolaf-ct-chest")
        assert (view["allow"], codes(view)) == (True, ["referring_physician_own_patient"])
        download = await decide(broker, carla, "stolaf-ct-chest", ["view", "download"])
        assert (download["allow"], codes(download)) == (False, ["operation_not_permitted"])
        other = await decide(broker, carla, "mercy-ct-head")
        assert other["allow"] is False and "not_own_patient" in codes(other)

    async def test_auditor_never_gets_images(self, broker: Broker, stack: Stack) -> None:
        result = await decide(broker, token(stack, "dan"), "stolaf-ct-chest")
        assert (result["allow"], codes(result)) == (False, ["role_not_permitted"])

    async def test_break_glass_with_mfa(self, broker: Broker, stack: Stack) -> None:
        await browser_login(
            broker.client,
            broker.url,
            idp="hospital-a",
            username="eve",
            otp_secret=EVE_TOTP_BASE32,
            acr_values="2",
        )
        plain = await decide(broker, None, "stolaf-mr-bh")
        assert (plain["allow"], codes(plain)) == (
            False,
            ["not_assigned", "sensitive_requires_assignment"],
        )
        result = await decide(broker, None, "stolaf-mr-bh", break_glass_justification=JUSTIFICATION)
        assert result["allow"] is True, result
        assert codes(result) == ["break_glass", "privileged", "sensitive_study"]
        assert result["obligations"]["link_ttl_seconds"] == 180
        assert result["obligations"]["alert"] is True
        kinds = broker.audit.kinds()
        assert kinds[-2:] == ["decision", "break_glass"]
        assert broker.audit.events[-1].purpose == JUSTIFICATION

    async def test_break_glass_never_overrides_licensure(
        self, broker: Broker, stack: Stack
    ) -> None:
        result = await decide(
            broker, token(stack, "ada"), "mercy-ct-head", break_glass_justification=JUSTIFICATION
        )
        assert result["allow"] is False
        assert {"not_licensed", "not_privileged"} <= set(codes(result))

    async def test_unknown_study_is_404(self, broker: Broker, stack: Stack) -> None:
        response = await broker.client.post(
            f"{broker.url}/api/decisions",
            json={"study_uid": "1.2.3.4.5"},
            headers={"Authorization": f"Bearer {token(stack, 'ada')}"},
        )
        assert response.status_code == 404, response.text

    @pytest.mark.parametrize("uid", ["../../etc", "1.2.3;DROP", "x" * 65, "1..2", "01.2"])
    async def test_malformed_uid_is_a_clear_4xx(
        self, broker: Broker, stack: Stack, uid: str
    ) -> None:
        response = await broker.client.post(
            f"{broker.url}/api/decisions",
            json={"study_uid": uid},
            headers={"Authorization": f"Bearer {token(stack, 'ada')}"},
        )
        assert response.status_code in (400, 404), response.text

    async def test_unauthenticated_is_401(self, broker: Broker) -> None:
        response = await broker.client.post(
            f"{broker.url}/api/decisions", json={"study_uid": STUDY["stolaf-ct-chest"]}
        )
        assert response.status_code == 401


class TestFailClosed:
    @pytest.fixture
    def own_opa(self, tmp_path: Path) -> Any:
        policies = repo_root() / "policies"
        service = services.start_opa(
            tmp_path, policy_paths=[policies / "telerad", policies / "data"]
        )
        yield service
        service.stop()

    @pytest.fixture
    def broker_env(self, broker_env: dict[str, str], own_opa: Any) -> dict[str, str]:
        import os

        os.environ["TELERAD_OPA__URL"] = own_opa.endpoints["url"]
        return broker_env | {"TELERAD_OPA__URL": own_opa.endpoints["url"]}

    async def test_opa_stopped_denies_and_never_500s(
        self, broker: Broker, stack: Stack, own_opa: Any
    ) -> None:
        ada = token(stack, "ada")
        before = await decide(broker, ada, "stolaf-ct-chest")
        assert before["allow"] is True
        own_opa.stop()
        after = await decide(broker, ada, "stolaf-ct-chest")
        assert (after["allow"], codes(after)) == (False, ["policy_unavailable"])
        issue = await broker.client.post(
            f"{broker.url}/api/links",
            json={"study_uid": STUDY["stolaf-ct-chest"]},
            headers={"Authorization": f"Bearer {ada}"},
        )
        assert issue.status_code == 503, issue.text
        assert broker.audit.events[-1].outcome.value == "deny"
        port = broker.app.state.metrics_server.port  # /metrics has a listener of its own
        async with httpx.AsyncClient() as scraper:
            scraped = await scraper.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200, scraped.text
        assert 'telerad_policy_errors_total{code="policy_unavailable"} 2.0' in scraped.text
        on_main_port = await broker.client.get(f"{broker.url}/metrics")
        assert "telerad_" not in on_main_port.text  # never on the port an Ingress exposes

    async def test_data_changed_at_runtime_is_followed(
        self, broker: Broker, stack: Stack, own_opa: Any
    ) -> None:
        ben = token(stack, "ben")
        uid = STUDY["stolaf-ct-chest"]
        before = await decide(broker, ben, "stolaf-ct-chest")
        assert before["allow"] is False
        patch = [
            {"op": "add", "path": "/radiologists/npi:1000000002/licenses/-", "value": "US-CA"},
            {"op": "add", "path": "/radiologists/npi:1000000002/privileges/-", "value": "st-olaf"},
        ]
        response = httpx.patch(f"{own_opa.endpoints['url']}/v1/data/telerad", json=patch)
        assert response.status_code == 204, response.text
        credentialed = await decide(broker, ben, "stolaf-ct-chest")
        assert codes(credentialed) == ["not_assigned"]  # credentialing is bundle data
        # the assignment is the RIS's: an event on the (shared) worklist topic, undone after
        topic = broker.settings.kafka.worklist_topic
        publish_worklist(stack, topic, uid, ["npi:1000000001", "npi:1000000002"])
        try:
            deadline = time.monotonic() + 5
            while (after := await decide(broker, ben, "stolaf-ct-chest"))["allow"] is False:
                assert time.monotonic() < deadline, after
                await asyncio.sleep(0.05)
            assert codes(after) == ["assigned_on_worklist", "privileged"]
        finally:
            publish_worklist(stack, topic, uid, ["npi:1000000001"])
