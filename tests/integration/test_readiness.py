"""``/readyz`` checks every dependency by name, against the real stack."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from broker.app import create_app
from broker.config import Settings
from devstack import services
from devstack.services import Service
from devstack.stack import Stack, repo_root

pytestmark = pytest.mark.integration


def _settings(monkeypatch: pytest.MonkeyPatch, stack: Stack, **overrides: str) -> Settings:
    """Settings read from the environment, as the broker reads them, pointed at the stack."""
    for key, value in (stack.broker_env() | overrides).items():
        monkeypatch.setenv(key, value)
    return Settings()


def _ready_within(client: TestClient, seconds: float = 20) -> Response:
    """/readyz once 200: a replica just started is ready when it has read the control topic to
    the end offsets it saw at start (a moment after start)."""
    deadline = time.monotonic() + seconds
    while (response := client.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return response


def test_ready_when_every_dependency_answers(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(_settings(monkeypatch, stack))) as client:
        response = _ready_within(client)
    checks = response.json()["checks"]
    assert {"opa", "kafka", "pacs"} <= set(checks)
    assert sum(name.startswith("idp:") for name in checks) == 2
    assert all(check["ready"] for check in checks.values()), checks


def test_healthz_needs_no_dependency() -> None:
    settings = Settings(
        environment="development",
        opa={"url": "http://127.0.0.1:9"},
        kafka={"bootstrap_servers": "127.0.0.1:9", "security_protocol": "PLAINTEXT"},
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200, response.text


def _own_opa(tmp: Path) -> Service:
    policies = repo_root() / "policies"
    return services.start_opa(tmp, policy_paths=[policies / "telerad", policies / "data"])


def _own_orthanc(tmp: Path) -> Service:
    return services.start_orthanc(tmp)


@pytest.mark.parametrize(
    ("dependency", "start", "override"),
    [
        ("opa", _own_opa, lambda s: {"TELERAD_OPA__URL": s.endpoints["url"]}),
        ("pacs", _own_orthanc, services.orthanc_broker_env),
    ],
)
def test_unready_names_the_stopped_dependency(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    dependency: str,
    start: Callable[[Path], Service],
    override: Callable[[Service], dict[str, str]],
) -> None:
    own = start(tmp_path)
    try:
        with TestClient(create_app(_settings(monkeypatch, stack, **override(own)))) as client:
            before = _ready_within(client)
            own.stop()
            after = client.get("/readyz")
    finally:
        own.stop()
    assert before.status_code == 200, before.text
    assert after.status_code == 503, after.text
    checks = after.json()["checks"]
    assert [name for name, check in checks.items() if not check["ready"]] == [dependency]
    assert after.json()["status"] == "unready"
