"""The chart's policy: an exact copy of policies/, and the sidecar's arguments work on real OPA.

The live test lays the rendered ConfigMap out the way the kubelet does (``..<timestamp>`` dir,
``..data`` link, one link per top-level entry), runs the OPA the policy is checked with using the
sidecar's own arguments (only the mount paths and ports replaced), and asks for a decision.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.provision import go_tool
from tests.helm.conftest import CHART, REPO, Doc, Rendered

_CHART_POLICIES = CHART / "policies"


def _repo_policy_files() -> dict[str, bytes]:
    """What the chart must carry: the non-test Rego under policies/telerad and the data."""
    files = {
        str(p.relative_to(REPO / "policies")): p.read_bytes()
        for p in sorted((REPO / "policies" / "telerad").rglob("*.rego"))
        if not p.name.endswith("_test.rego")
    }
    files["data/data.json"] = (REPO / "policies" / "data" / "data.json").read_bytes()
    return files


class TestPolicyCopy:
    def test_chart_copy_equals_the_repository_policy(self) -> None:
        chart = {
            str(p.relative_to(_CHART_POLICIES)): p.read_bytes()
            for p in sorted(_CHART_POLICIES.rglob("*"))
            if p.is_file()
        }
        wanted = _repo_policy_files()
        assert chart.keys() == wanted.keys(), (
            "helm/telerad-broker/policies/ differs from policies/: copy with\n"
            "  rm -r helm/telerad-broker/policies/telerad && (cd policies && "
            "find telerad -name '*.rego' ! -name '*_test.rego' -exec cp --parents {} "
            "../helm/telerad-broker/policies/ \\;) && cp policies/data/data.json "
            "helm/telerad-broker/policies/data/"
        )
        stale = [path for path in wanted if chart[path] != wanted[path]]
        assert not stale, f"out of date in helm/telerad-broker/policies/: {stale}"

    def test_configmap_carries_every_file(self, rendered: dict[str, Rendered]) -> None:
        data = rendered["minimal"].get("ConfigMap", "telerad-broker-opa")["data"]
        for path, content in _repo_policy_files().items():
            key = path.removeprefix("data/").replace("/", "__")
            assert data[key].encode() == content, path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kubelet_layout(root: Path, files: dict[str, str]) -> None:
    """A ConfigMap volume as the kubelet writes it (atomic writer)."""
    stamp = root / "..2025_01_01_00_00_00.000000001"
    for path, text in files.items():
        target = stamp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for top in {path.split("/", 1)[0] for path in files}:
        (root / top).symlink_to(f"..data/{top}")


def _mount_volumes(rendered: Rendered, opa: Doc, tmp_path: Path) -> dict[str, Path]:
    """Lay out each ConfigMap volume of the sidecar; mount path -> local directory."""
    pod = rendered.broker()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mapped: dict[str, Path] = {}
    for mount in opa["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        data = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
        files = {item["path"]: data[item["key"]] for item in volume["configMap"]["items"]}
        local = tmp_path / mount["name"]
        local.mkdir()
        _kubelet_layout(local, files)
        mapped[mount["mountPath"]] = local
    return mapped


def _local_args(args: list[str], mapped: dict[str, Path], api: int, diag: int) -> list[str]:
    out = []
    for arg in args:
        if arg.startswith("--addr="):
            arg = f"--addr=127.0.0.1:{api}"
        elif arg.startswith("--diagnostic-addr="):
            arg = f"--diagnostic-addr=127.0.0.1:{diag}"
        for mount, local in mapped.items():
            arg = arg.replace(mount, str(local))
        out.append(arg)
    return out


@pytest.fixture
def run_opa(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(rendered: Rendered) -> tuple[int, int, Path]:
        opa = rendered.container(rendered.broker(), "opa")
        mapped = _mount_volumes(rendered, opa, tmp_path)
        api, diag = _free_port(), _free_port()
        args = _local_args(opa["args"], mapped, api, diag)
        log = tmp_path / "opa.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen([str(go_tool("opa")), *args], stdout=out, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{diag}/health", timeout=1).status_code == 200:
                    return api, diag, log
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"OPA did not become healthy:\n{log.read_text()}")

    yield run
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TestSidecarOnRealOpa:
    def test_chart_policy_decides_the_example(
        self, rendered: dict[str, Rendered], run_opa: Any
    ) -> None:
        api, _, log = run_opa(rendered["minimal"])
        example = json.loads((REPO / "policies" / "examples" / "issue_link.json").read_text())
        response = httpx.post(
            f"http://127.0.0.1:{api}/v1/data/telerad/access/decision",
            json={"input": example},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        decision = response.json()["result"]
        assert decision["allow"] is True, decision
        # Decisions go to the sidecar's log (decision_logs.console).
        deadline = time.monotonic() + 5
        while "decision_id" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "decision_id" in log.read_text()

    def test_the_api_answers_the_decision_query_and_nothing_else(
        self, rendered: dict[str, Rendered], run_opa: Any
    ) -> None:
        api, diag, _ = run_opa(rendered["minimal"])
        base = f"http://127.0.0.1:{api}"
        # What the broker sends (opa-python-client, with provenance), readiness included.
        ready = httpx.post(
            f"{base}/v1/data/telerad/access/decision?provenance=True",
            json={"input": {}},
            timeout=5,
        )
        assert ready.status_code == 200 and ready.json()["result"]["allow"] is False, ready.text
        refused = [
            httpx.put(f"{base}/v1/policies/backdoor", content=b"package telerad.access", timeout=5),
            httpx.put(f"{base}/v1/data/telerad/radiologists", json={}, timeout=5),
            httpx.patch(f"{base}/v1/data/telerad", json=[], timeout=5),
            httpx.get(f"{base}/v1/data", timeout=5),
            httpx.get(f"{base}/v1/policies", timeout=5),
            httpx.post(f"{base}/v1/query", json={"query": "data"}, timeout=5),
            httpx.post(f"{base}/v1/data/telerad/radiologists", json={}, timeout=5),
        ]
        for response in refused:
            assert response.status_code == 401, (response.request.url, response.text)
        assert httpx.get(f"http://127.0.0.1:{diag}/health", timeout=5).status_code == 200

    def test_chart_rego_passes_strict_check(
        self, rendered: dict[str, Rendered], tmp_path: Path
    ) -> None:
        data = rendered["minimal"].get("ConfigMap", "telerad-broker-opa")["data"]
        for key, text in data.items():
            if key.endswith(".rego"):
                (tmp_path / key).write_text(text)
        proc = subprocess.run(
            [str(go_tool("opa")), "check", "--strict", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fmt = subprocess.run(
            [str(go_tool("opa")), "fmt", "--list", str(tmp_path / "system__authz.rego")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert fmt.stdout == "", f"the chart's authz policy is not opa-fmt'ed: {fmt.stdout}"

    def test_bundle_config_gates_readiness_on_the_bundle(
        self, rendered: dict[str, Rendered], run_opa: Any
    ) -> None:
        _, diag, _ = run_opa(rendered["bundle"])
        # The bundle server is unreachable here: healthy, but not ready.
        bundles = httpx.get(f"http://127.0.0.1:{diag}/health?bundles", timeout=5)
        assert bundles.status_code != 200, bundles.text
        config = yaml.safe_load(
            rendered["bundle"].get("ConfigMap", "telerad-broker-opa")["data"]["config.yaml"]
        )
        assert config["bundles"]["telerad"]["signing"]["keyid"] in config["keys"]
