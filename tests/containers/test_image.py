"""The broker's image, built from the Dockerfile and run as the chart runs it, against the stack."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack._procs import free_port
from devstack.stack import Stack
from tests.containers.conftest import BuiltImage, restricted

pytestmark = pytest.mark.integration

# What must never be in the image: the dev stack's credentials (devstack, the realms' files).
_DEV_CREDENTIALS = (
    "dev-broker-secret",
    "dev-consent-secret",
    "dev-only-orthanc",
    "dev-only-admin",
    "dev-password",
)
_BUILD_TOOLS = ("gcc", "cc", "c++", "make", "git", "cargo", "rustc", "clang", "ld", "as", "pip")

# Run with the image's own python: what it holds, as JSON.
_INSPECT = r"""
import importlib.util, json, os, pathlib
def executables(roots):
    out = set()
    for root in roots:
        p = pathlib.Path(root)
        if p.is_dir():
            out |= {f"{root}/{e.name}" for e in p.iterdir() if os.access(e, os.X_OK)}
    return sorted(out)
def has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
paths = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
venv = pathlib.Path("/opt/venv")
needles = NEEDLES
found = []
for f in venv.rglob("*"):
    if f.is_file() and f.suffix in (".py", ".json", ".txt", ".toml", ".cfg", ".env", ".pem"):
        text = f.read_text(errors="replace")
        found += [f"{f}: {n}" for n in needles if n in text]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "executables": executables(paths),
    "venv_bin": sorted(e.name for e in (venv / "bin").iterdir()) if venv.is_dir() else [],
    "broker_stack": has("devstack"),
    "streams": has("streams"),
    "pip": has("pip"),
    "credentials": found,
    "writable_root": os.access("/", os.W_OK),
}))
"""


def _inspect(image: BuiltImage, tag: str) -> dict[str, Any]:
    script = _INSPECT.replace("NEEDLES", repr(list(_DEV_CREDENTIALS)))
    out = image.client.containers.run(
        tag, ["-c", script], entrypoint="python", remove=True, **restricted()
    )
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class TestBuiltImage:
    def test_config_runs_telerad_as_uid_10001(self, broker_image: BuiltImage) -> None:
        config = broker_image.client.images.get(broker_image.tag).attrs["Config"]
        assert config["User"] == "10001:10001", config
        assert config["Entrypoint"] == ["telerad"], config
        assert config["Cmd"] == ["serve", "--host", "0.0.0.0", "--port", "8000"], config  # noqa: S104
        assert not config.get("Healthcheck"), config
        names = [e.split("=", 1)[0] for e in config["Env"]]
        assert not [n for n in names if "SECRET" in n or "PASSWORD" in n], names

    def test_holds_the_broker_and_nothing_of_the_dev_stack(self, broker_image: BuiltImage) -> None:
        found = _inspect(broker_image, broker_image.tag)
        assert (found["uid"], found["gid"]) == (10001, 10001), found
        assert not found["writable_root"], found
        assert not found["broker_stack"], "devstack (the dev stack) is in the image"
        assert found["streams"], found
        assert not found["pip"], "pip is left in the image"
        assert found["credentials"] == [], found["credentials"]

    def test_no_build_or_shell_tools_beyond_the_base(self, broker_image: BuiltImage) -> None:
        image = _inspect(broker_image, broker_image.tag)
        base = _inspect(broker_image, broker_image.base)
        assert set(image["executables"]) == set(base["executables"]), set(
            image["executables"]
        ) ^ set(base["executables"])
        names = {Path(e).name for e in image["executables"]} | set(image["venv_bin"])
        assert not names & set(_BUILD_TOOLS), names & set(_BUILD_TOOLS)

    def test_audit_ledger_runs(self, broker_image: BuiltImage) -> None:
        out = broker_image.run("audit", "ledger", "--help")
        assert out.startswith("usage: telerad audit ledger"), out


@pytest.fixture
def served(broker_image: BuiltImage, stack: Stack, tmp_path: Path) -> Iterator[str]:
    """``telerad serve`` in the image (uid 10001, read-only root, no capabilities), on the stack."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stack.broker_env() | {"TELERAD_PUBLIC_URL": url}
    mounts = {}
    if facts := env.get("TELERAD_FACTS_FILE"):
        # mounted read-only where the chart mounts it, readable by uid 10001
        shared = tmp_path / "facts"
        shared.mkdir()
        shutil.copy(facts, shared / "facts.json")
        for path in (shared, shared / "facts.json"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        mounts[str(shared)] = {"bind": "/etc/telerad/facts", "mode": "ro"}
        env["TELERAD_FACTS_FILE"] = "/etc/telerad/facts/facts.json"
    names = ("CA_FILE", "CERT_FILE", "KEY_FILE")
    tls_files = {
        n: env[f"TELERAD_PACS__TLS__{n}"] for n in names if f"TELERAD_PACS__TLS__{n}" in env
    }
    if tls_files:
        # the stack's Orthanc CA (and client certificate), where the chart mounts them
        shared = tmp_path / "pacs-tls"
        shared.mkdir(mode=0o755)
        for name, source in tls_files.items():
            copy = shared / Path(source).name
            shutil.copy(source, copy)
            copy.chmod(0o644)
            env[f"TELERAD_PACS__TLS__{name}"] = f"/var/run/secrets/telerad-pacs-tls/{copy.name}"
        mounts[str(shared)] = {"bind": "/var/run/secrets/telerad-pacs-tls", "mode": "ro"}
    started = time.monotonic()
    container = broker_image.client.containers.run(
        broker_image.tag,
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        detach=True,
        environment=env,
        volumes=mounts,
        **restricted(),
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"no /healthz after 90 s:\n{container.logs().decode()[-3000:]}")
        print(f"the broker's container answered /healthz {time.monotonic() - started:.1f} s in")
        yield url
    finally:
        container.remove(force=True)


class TestServedImage:
    def test_healthz_and_readyz_answer_against_the_stack(self, served: str) -> None:
        health = httpx.get(f"{served}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        ready = httpx.get(f"{served}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready", body
        assert set(body["checks"]) >= {"opa", "kafka", "pacs"}, body
