"""Fixtures for the chart's tests: helm (built on first use), renders of the ci/ scenarios, checkov.

Every test renders with ``helm template`` (no cluster) for one Kubernetes version, and parses the
YAML; the scenarios' renders are shared across the session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.provision import cache_dir, go_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "telerad-broker"
SCENARIOS = ("minimal", "production", "bundle", "strimzi-mtls")
KUBE_VERSION = "1.31.0"
NAMESPACE = "telerad"
RELEASE = "telerad-broker"
CHECKOV_VERSION = "3.3.30"

Doc = dict[str, Any]


class RenderError(AssertionError):
    """``helm template`` refused the values; the message is helm's."""


@dataclass(frozen=True)
class Rendered:
    """The documents one ``helm template`` produced."""

    docs: tuple[Doc, ...]
    text: str

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> Doc:
        """The one document of a kind (and name); fails when there is not exactly one."""
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"{len(found)} {kind} named {name}: {[d['metadata'] for d in found]}"
        )
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def workloads(self) -> list[Doc]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]

    def containers(self) -> list[tuple[str, Doc]]:
        """(workload name/container name, container) of every container, init containers too."""
        out = []
        for w in self.workloads():
            spec = w["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                out.append((f"{w['metadata']['name']}/{c['name']}", c))
        return out

    def broker(self) -> Doc:
        return self.get("Deployment", RELEASE)

    def container(self, workload: Doc, name: str) -> Doc:
        (found,) = [
            c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name
        ]
        return found


def merge_values(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def scenario_values(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return loaded


class Chart:
    """Runs helm against the chart with a scenario's values plus overrides."""

    def __init__(self, helm: Path, workdir: Path) -> None:
        self.helm = helm
        self.workdir = workdir
        self._count = 0

    def _values_file(self, scenario: str | None, overrides: Mapping[str, Any] | None) -> Path:
        values = merge_values(scenario_values(scenario) if scenario else {}, overrides or {})
        self._count += 1
        path = self.workdir / f"values-{self._count}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=os.environ | {"HELM_CACHE_HOME": str(self.workdir / "helm-cache")},
        )

    def template(
        self, scenario: str | None = "minimal", overrides: Mapping[str, Any] | None = None
    ) -> Rendered:
        """The rendered documents; :class:`RenderError` with helm's message when refused."""
        key = json.dumps([scenario, overrides], sort_keys=True)
        return _template_cached(self, key)

    def _template(self, scenario: str | None, overrides: Mapping[str, Any] | None) -> Rendered:
        values = self._values_file(scenario, overrides)
        proc = self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(values),
        )
        if proc.returncode != 0:
            raise RenderError(proc.stderr.strip())
        docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
        return Rendered(docs, proc.stdout)

    def refusal(self, scenario: str | None, overrides: Mapping[str, Any] | None = None) -> str:
        """helm's error message for values the chart must refuse."""
        with pytest.raises(RenderError) as caught:
            self.template(scenario, overrides)
        return str(caught.value)

    def lint(self, scenario: str) -> subprocess.CompletedProcess[str]:
        values = self._values_file(scenario, None)
        return self.run(
            "lint",
            str(CHART),
            "--strict",
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(values),
        )


@cache
def _template_cached(chart: Chart, key: str) -> Rendered:
    scenario, overrides = json.loads(key)
    return chart._template(scenario, overrides)


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm, built from the Go module proxy into the cache on a cold machine."""
    return go_tool("helm")


@pytest.fixture(scope="session")
def chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chart]:
    yield Chart(helm, tmp_path_factory.mktemp("helm"))
    _template_cached.cache_clear()


@pytest.fixture(scope="session")
def rendered(chart: Chart) -> dict[str, Rendered]:
    """Each ci/ scenario, rendered once."""
    return {name: chart.template(name) for name in SCENARIOS}


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in its own virtualenv under the cache, created on first use.

    Not in the project's venv: checkov pins ``packaging<24``, which pytest 9 cannot run with.
    ``CHECKOV=/path/to/checkov`` uses another one.
    """
    if override := os.environ.get("CHECKOV"):
        return Path(override)
    venv = cache_dir() / "tools" / f"checkov-{CHECKOV_VERSION}"
    exe = venv / "bin" / "checkov"
    if (venv / ".complete").exists():
        return exe
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"],
        check=True,
        timeout=900,
    )
    (venv / ".complete").touch()
    return exe
