"""The environment the chart gives each container is one ``broker.config.Settings`` accepts.

The chart only references secrets, so the test writes dummy secret files in the documented
formats under the file names the chart projects, and builds ``Settings`` from the rendered
variables plus those files: a renamed setting, a typo or a wrong format fails here, not at the
first deploy. Unknown top-level ``TELERAD_*`` names (which pydantic-settings ignores) fail too.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from broker.app import link_keyring, session_keyring
from broker.config import ClaimMapping, IssuerSettings, Settings
from broker.crypto import b64u_decode
from tests.helm.conftest import CHART, RELEASE, SCENARIOS, Chart, Doc, Rendered

_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")

# The documented content of each file the chart may project into TELERAD_SECRETS_DIR
# (helm/telerad-broker/README.md, "Secrets"); dummy values, supplied by the test.
_SECRET_FILES: dict[str, Any] = {
    "TELERAD_LINKS": {"keys": {"2025-06": _KEY}},
    "TELERAD_IDENTITY": {"session_keys": {"2025-06": _KEY}},
    "TELERAD_PSEUDONYM_KEY": _KEY,
    "TELERAD_ISSUERS": [
        {
            "name": "hospital-a",
            "issuer": "https://idp.hospital-a.example/realms/radiology",
            "audiences": ["telerad-broker"],
            "client_id": "telerad-broker",
            "client_secret": "dummy-client-secret",
            "claims": {"roles": "realm_access.roles"},
        }
    ],
    "TELERAD_PACS": {"password": "dummy-pacs-password"},
}


def unknown_names(env: dict[str, str]) -> list[str]:
    """``TELERAD_*`` names that do not name a settings field (``__`` walks nested sections)."""
    unknown = []
    for name in env:
        if name == "TELERAD_SECRETS_DIR":
            continue  # read by the Settings class itself, at import
        if not name.startswith("TELERAD_"):
            unknown.append(name)
            continue
        model: type[BaseModel] | None = Settings
        for part in name.removeprefix("TELERAD_").lower().split("__"):
            field = model.model_fields.get(part) if model is not None else None
            if field is None:
                unknown.append(name)
                break
            annotation = field.annotation
            is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            model = annotation if is_model else None
    return unknown


def container_env(rendered: Rendered, workload: Doc, container: Doc) -> dict[str, str]:
    """Variables from the container's ConfigMaps (envFrom) and its own ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env |= rendered.get("ConfigMap", ref)["data"]
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal values and files, no valueFrom"
        env[item["name"]] = item["value"]
    return env


def secret_files(workload: Doc, container: Doc, directory: Path) -> Path | None:
    """Write the dummy secret files the pod would see in TELERAD_SECRETS_DIR."""
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    if "secrets" not in mounts:
        return None
    for source in volumes["secrets"]["projected"]["sources"]:
        for item in source["secret"]["items"]:
            assert item["path"] in _SECRET_FILES, f"undocumented secret file {item['path']}"
            content = _SECRET_FILES[item["path"]]
            (directory / item["path"]).write_text(
                content if isinstance(content, str) else json.dumps(content)
            )
    return Path(mounts["secrets"])


def build_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], secrets_dir: Path | None
) -> Settings:
    for name in [n for n in os.environ if n.startswith("TELERAD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_secrets_dir=secrets_dir)  # type: ignore[call-arg]


def _telerad_containers(rendered: Rendered) -> list[tuple[Doc, Doc]]:
    return [
        (w, c)
        for w in rendered.workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        if c["name"] != "opa"
    ]


class TestSettingsDrift:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_container_env_is_accepted(
        self,
        rendered: dict[str, Rendered],
        scenario: str,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        containers = _telerad_containers(rendered[scenario])
        assert containers
        for workload, container in containers:
            label = f"{scenario}: {workload['metadata']['name']}/{container['name']}"
            env = container_env(rendered[scenario], workload, container)
            assert not unknown_names(env), f"{label}: {unknown_names(env)}"
            directory = tmp_path / container["name"]
            directory.mkdir()
            mount = secret_files(workload, container, directory)
            if mount is not None:
                assert env["TELERAD_SECRETS_DIR"] == str(mount), label
            settings = build_settings(monkeypatch, env, directory if mount else None)
            assert settings.environment == "production", label
            assert settings.audit_sink == "kafka", label
            assert settings.kafka.bootstrap_servers == env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_the_broker_starts_with_its_secrets(
        self,
        rendered: dict[str, Rendered],
        scenario: str,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        r = rendered[scenario]
        broker = r.broker()
        container = r.container(broker, "broker")
        env = container_env(r, broker, container)
        mount = secret_files(broker, container, tmp_path)
        assert mount is not None
        settings = build_settings(monkeypatch, env, tmp_path)
        # What create_app refuses in production is present and well-formed.
        assert link_keyring(settings) and session_keyring(settings)
        assert settings.pseudonym_key is not None
        assert len(b64u_decode(settings.pseudonym_key.get_secret_value())) == 32
        assert settings.issuers, "no trusted issuer"
        assert settings.identity.session_cookie_secure is True
        assert str(settings.public_url).startswith("https://")
        # The non-secret half of a section and its secret file are merged, not replaced.
        assert settings.identity.scopes == "openid profile"
        # The broker asks the sidecar at the address the sidecar listens on.
        opa = r.container(broker, "opa")
        port = settings.opa.url.port
        assert settings.opa.url.host == "127.0.0.1"
        assert f"--addr=127.0.0.1:{port}" in opa["args"]

    def test_production_secrets_all_arrive(
        self, rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        r = rendered["production"]
        broker = r.broker()
        container = r.container(broker, "broker")
        secret_files(broker, container, tmp_path)
        settings = build_settings(monkeypatch, container_env(r, broker, container), tmp_path)
        assert settings.links.active_key == "2025-06"
        assert settings.identity.session_active_key == "2025-06"
        assert settings.pacs.username == "telerad-broker"
        assert settings.pacs.password is not None
        assert settings.pacs.password.get_secret_value() == "dummy-pacs-password"
        (issuer,) = settings.issuers
        assert issuer.client_secret is not None
        assert settings.facts_file == Path("/etc/telerad/facts/facts.json")

    def test_inline_issuers_without_a_secret(
        self, rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        r = rendered["bundle"]
        broker = r.broker()
        container = r.container(broker, "broker")
        secret_files(broker, container, tmp_path)
        settings = build_settings(monkeypatch, container_env(r, broker, container), tmp_path)
        (issuer,) = settings.issuers
        assert issuer.claims.roles == "realm_access.roles"
        assert issuer.client_secret is None

    def test_consumer_paths_point_at_their_mounts(self, rendered: dict[str, Rendered]) -> None:
        r = rendered["production"]
        for workload, container in _telerad_containers(r):
            env = container_env(r, workload, container)
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            for name in (
                "TELERAD_STREAMS__LEDGER_PATH",
                "TELERAD_STREAMS__LEDGER_KEY_PATH",
                "TELERAD_STREAMS__EXPORT_DIR",
                "TELERAD_STREAMS__INTEGRITY_CURSOR_PATH",
                "TELERAD_FACTS_FILE",
            ):
                if name in env:
                    assert any(env[name].startswith(m + "/") or env[name] == m for m in mounts), (
                        name,
                        env[name],
                    )

    def test_the_integrity_watcher_reads_the_pacs_as_the_broker_does(
        self, rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        r = rendered["production"]
        watcher = r.get("Deployment", f"{RELEASE}-integrity-watch")
        container = r.container(watcher, "watch")
        mount = secret_files(watcher, container, tmp_path)
        assert mount is not None
        env = container_env(r, watcher, container)
        settings = build_settings(monkeypatch, env, tmp_path)
        assert settings.streams.integrity_cursor_path == Path(
            "/var/lib/telerad/integrity/cursor.json"
        )
        assert settings.streams.health_port == 8081
        assert settings.pacs.username == "telerad-broker"
        assert settings.pacs.password is not None
        assert settings.pacs.password.get_secret_value() == "dummy-pacs-password"
        assert settings.kafka.sasl_username == "telerad-integrity"
        assert settings.kafka.fingerprint_topic == "telerad.fingerprints.v1"


def _cronjob_containers(rendered: Rendered) -> list[tuple[Doc, Doc]]:
    """(pod-like workload, container) of every CronJob: the Job template as the workload."""
    out = []
    for cronjob in rendered.all("CronJob"):
        pod = {"spec": {"template": cronjob["spec"]["jobTemplate"]["spec"]["template"]}}
        for container in pod["spec"]["template"]["spec"]["containers"]:
            out.append((pod, container))
    return out


class TestScheduledJobs:
    """The CronJobs (ledger backups, the integrity sweep) start with settings Settings accepts."""

    def test_every_cronjob_env_is_accepted(
        self, rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        r = rendered["production"]
        jobs = _cronjob_containers(r)
        assert len(jobs) == 2, "the production scenario backs up and sweeps"
        for i, (pod, container) in enumerate(jobs):
            env = container_env(r, pod, container)
            assert not unknown_names(env), unknown_names(env)
            directory = tmp_path / str(i)
            directory.mkdir()
            mount = secret_files(pod, container, directory)
            settings = build_settings(monkeypatch, env, directory if mount else None)
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            assert any(str(settings.streams.ledger_path).startswith(m + "/") for m in mounts)

    def test_the_sweep_gets_its_rate_and_the_pacs_password(
        self, rendered: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        r = rendered["production"]
        ((pod, container),) = [
            (p, c) for p, c in _cronjob_containers(r) if c["args"] == ["integrity", "verify"]
        ]
        assert secret_files(pod, container, tmp_path) is not None
        settings = build_settings(monkeypatch, container_env(r, pod, container), tmp_path)
        assert settings.streams.integrity_sweep_per_second == 20
        assert settings.pacs.password is not None


class TestTheDriftCheck:
    """The check above must itself catch what pydantic-settings lets through."""

    @pytest.mark.parametrize(
        "name",
        ["TELERAD_TYPO", "TELERAD_OPA__URLL", "TELERAD_LINKS__KEYS__X", "TELERAD_PACS__URL__HOST"],
    )
    def test_unknown_names_are_caught(self, name: str) -> None:
        assert unknown_names({name: "x"}) == [name]

    def test_extra_env_is_checked(
        self, chart: Chart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        typo = chart.template(
            "minimal", {"config": {"extraEnv": {"TELERAD_IDENTITY__MAX_TOKEN": "1"}}}
        )
        broker = typo.broker()
        env = container_env(typo, broker, typo.container(broker, "broker"))
        assert unknown_names(env) == ["TELERAD_IDENTITY__MAX_TOKEN"]
        good = chart.template(
            "minimal", {"config": {"extraEnv": {"TELERAD_IDENTITY__MAX_TOKEN_BYTES": 4096}}}
        )
        broker = good.broker()
        container = good.container(broker, "broker")
        env = container_env(good, broker, container)
        assert not unknown_names(env)
        secret_files(broker, container, tmp_path)
        assert build_settings(monkeypatch, env, tmp_path).identity.max_token_bytes == 4096

    def test_the_release_name_cannot_collide_with_settings(self, chart: Chart) -> None:
        # Service links are off, so a Service named like a setting cannot inject TELERAD_PORT.
        for workload in chart.template("minimal").workloads():
            assert workload["spec"]["template"]["spec"]["enableServiceLinks"] is False
        assert RELEASE


class TestSchemaFollowsSettings:
    """``config.issuers`` (inline issuers) mirrors ``IssuerSettings``, minus the secret."""

    def test_issuer_fields(self) -> None:
        schema = json.loads((CHART / "values.schema.json").read_text())
        issuer = schema["properties"]["config"]["properties"]["issuers"]["items"]
        assert set(issuer["properties"]) == set(IssuerSettings.model_fields) - {"client_secret"}
        assert set(issuer["properties"]["claims"]["properties"]) == set(ClaimMapping.model_fields)
