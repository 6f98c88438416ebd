"""checkov over every scenario's rendered manifests: only documented findings may fail."""

from __future__ import annotations

import json
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from tests.helm.conftest import REPO, SCENARIOS, Rendered

SKIPS: list[dict[str, Any]] = yaml.safe_load((REPO / "helm" / "checkov-skips.yaml").read_text())[
    "skips"
]


def _covered(skip: dict[str, Any], finding: dict[str, str]) -> bool:
    return (
        skip["check"] == finding["check"]
        and finding["scenario"] in skip["scenarios"]
        and any(fnmatch(finding["resource"], pattern) for pattern in skip["resources"])
    )


def test_skips_are_explained() -> None:
    for skip in SKIPS:
        assert set(skip) == {"check", "resources", "scenarios", "reason"}, skip
        assert len(skip["reason"]) > 40, skip["check"]
        assert set(skip["scenarios"]) <= set(SCENARIOS), skip["check"]


def test_checkov_finds_nothing_unexplained(
    rendered: dict[str, Rendered], checkov: Path, tmp_path: Path
) -> None:
    for name, result in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(result.text)
    proc = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: some check failed
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (kubernetes,) = [r for r in reports if r["check_type"] == "kubernetes"]
    assert kubernetes["summary"]["parsing_errors"] == 0, kubernetes["summary"]
    assert kubernetes["summary"]["passed"] > 100, kubernetes["summary"]
    findings = [
        {
            "check": c["check_id"],
            "scenario": Path(c["file_path"]).stem,
            "resource": c["resource"],
            "name": c["check_name"],
        }
        for c in kubernetes["results"]["failed_checks"]
    ]
    unexplained = [f for f in findings if not any(_covered(s, f) for s in SKIPS)]
    assert not unexplained, json.dumps(unexplained, indent=2)
    unused = [s["check"] for s in SKIPS if not any(_covered(s, f) for f in findings)]
    assert not unused, f"entries in helm/checkov-skips.yaml match no finding any more: {unused}"
