"""``ensure_all`` runs its three kinds of work side by side and reports the first failure."""

from __future__ import annotations

import threading

import pytest

from devstack import provision


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every provisioning step replaced by one recording the thread it ran on."""
    seen: dict[str, str] = {}

    def step(name: str) -> object:
        def run(*_: object) -> None:
            seen[name] = threading.current_thread().name

        return run

    for name in (
        "debian_packages",
        "go_tool",
        "kafka_classpath",
        "keycloak_home",
        "ohif_dist",
        "orthanc_binary",
        "orthanc_openssl3_shim",
        "chromium_binary",
        "container_tools",
    ):
        monkeypatch.setattr(provision, name, step(name))
    return seen


def test_the_three_kinds_run_side_by_side(
    calls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # each kind's first step waits for the other two: run one after another, they would time out
    meet = threading.Barrier(3, timeout=5)
    for name in ("debian_packages", "go_tool", "kafka_classpath"):
        monkeypatch.setattr(provision, name, lambda *_, n=name: calls.update({n: str(meet.wait())}))
    provision.ensure_all(tools=("opa",))
    assert {calls["debian_packages"], calls["go_tool"], calls["kafka_classpath"]} == {"0", "1", "2"}
    assert calls["keycloak_home"] == calls["ohif_dist"]  # after Kafka, on the same worker
    # the checks afterwards run on the caller's thread, once everything is installed
    assert calls["orthanc_openssl3_shim"] == threading.current_thread().name


def test_a_failure_lets_the_others_finish_and_is_raised(
    calls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_: str) -> None:
        raise provision.ProvisionError("building opa failed (exit 1)")

    monkeypatch.setattr(provision, "go_tool", broken)
    with pytest.raises(provision.ProvisionError, match="building opa"):
        provision.ensure_all(tools=("opa",))
    assert {"debian_packages", "kafka_classpath", "keycloak_home", "ohif_dist"} <= set(calls)
    assert "orthanc_openssl3_shim" not in calls  # nothing is checked on top of a failure
