"""The Dockerfile's text invariants (hadolint is not reachable); tests/containers/ builds it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest

from tests.helm.conftest import REPO

_SECRETISH = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|PRIVATE|CREDENTIAL)", re.I)
_BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cargo|rustc|git)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "dangling line continuation"
    return out


def _global_args() -> dict[str, str]:
    """The ``ARG name=default`` lines before the first ``FROM`` (what ``FROM ${name}`` can use)."""
    args: dict[str, str] = {}
    for keyword, text in _instructions((REPO / "Dockerfile").read_text()):
        if keyword == "FROM":
            break
        assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
        name, _, default = text.partition("=")
        args[name] = default
    return args


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    instructions = _instructions((REPO / "Dockerfile").read_text())
    first_from = next(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    for keyword, args in instructions[first_from:]:
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.I)
            assert m, f"every stage is named: FROM {args}"
            stages.append(Stage(m[1], m[2]))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


GLOBAL_ARGS = _global_args()
STAGES = _stages()
FINAL = STAGES[-1]


class TestDockerfile:
    def test_multi_stage(self) -> None:
        assert len(STAGES) >= 2
        assert [s.name for s in STAGES] == ["builder", "viewer", "runtime"]

    @pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
    def test_every_stage_starts_from_the_base_argument(self, stage: Stage) -> None:
        # One base for all stages: the venv built in one runs on the Python of the other.
        assert stage.base == "${BASE}", stage.base

    def test_the_default_base_is_pinned_slim_python_311(self) -> None:
        assert list(GLOBAL_ARGS) == ["BASE"], GLOBAL_ARGS
        image, _, tag = GLOBAL_ARGS["BASE"].partition(":")
        assert image == "python", GLOBAL_ARGS
        assert re.fullmatch(r"3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", tag), GLOBAL_ARGS

    def test_runs_as_the_non_root_uid_10001(self) -> None:
        users = FINAL.all("USER")
        assert users and users[-1] in ("10001", "10001:10001"), users
        last_user = max(i for i, (kw, _) in enumerate(FINAL.instructions) if kw == "USER")
        assert all(kw != "RUN" for kw, _ in FINAL.instructions[last_user:]), "RUN after USER"

    def test_entrypoint_is_telerad_in_the_final_stage_only(self) -> None:
        assert [json.loads(e) for e in FINAL.all("ENTRYPOINT")] == [["telerad"]]
        for stage in STAGES[:-1]:
            assert not stage.all("ENTRYPOINT") and not stage.all("CMD") and not stage.all("USER")

    def test_final_stage_has_no_build_tools_or_sources(self) -> None:
        for run in FINAL.all("RUN"):
            assert "apt-get install" not in run and "apk add" not in run, run
            assert not _BUILD_TOOLS.search(run), run
            assert "pip install" not in run and "pip wheel" not in run, run
        copies = FINAL.all("COPY")
        assert copies == [
            "--from=builder /opt/venv /opt/venv",
            "--from=viewer /opt/telerad/viewer /opt/telerad/viewer",
        ], copies

    def test_the_viewer_is_the_pinned_package_checked_at_build(self) -> None:
        viewer = next(s for s in STAGES if s.name == "viewer")
        assert viewer.all("COPY") == ["broker/pages/ohif_package.py /ohif_package.py"]
        assert any("python /ohif_package.py /opt/telerad/viewer" in r for r in viewer.all("RUN"))
        assert "TELERAD_VIEWER_DIR=/opt/telerad/viewer" in FINAL.all("ENV")

    def test_no_remote_add_and_no_secrets(self) -> None:
        for stage in STAGES:
            for keyword, args in stage.instructions:
                assert keyword != "ADD", f"use COPY, not ADD {args}"
                if keyword in ("ENV", "ARG", "LABEL"):
                    for name in re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)=", args) or [
                        args.split()[0]
                    ]:
                        assert not _SECRETISH.search(name), f"{keyword} {args}"
                assert "--mount=type=secret" not in args

    def test_no_healthcheck(self) -> None:
        # Kubernetes probes (/healthz, /readyz) are the health checks.
        assert all(not s.all("HEALTHCHECK") for s in STAGES)


class TestDockerignore:
    def test_allow_list_keeps_secrets_and_the_dev_stack_out(self) -> None:
        lines = [
            line.strip()
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*", "the context is an allow-list"
        allowed = {line[1:] for line in lines if line.startswith("!")}
        assert allowed == {"pyproject.toml", "README.md", "broker/", "streams/"}
        for excluded in ("devstack/", "**/*.pem", "**/.stack.env"):
            assert excluded in lines, excluded

    def test_every_copied_path_is_allowed(self) -> None:
        builder = STAGES[0]
        sources = [args.split()[:-1] for args in builder.all("COPY")]
        assert sorted(s for group in sources for s in group) == [
            "README.md",
            "broker",
            "pyproject.toml",
            "streams",
        ]
