"""`telerad stack up --with-broker` (what `make run` runs): ready, then Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack._procs import free_port

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry reaches ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_with_broker_then_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "stack",
            "up",
            "--parts",
            "kafka,opa,orthanc",
            "--with-broker",
            "--port",
            str(port),
            "--run-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"TELERAD_STACK_BACKEND": "process"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "broker ready" in line or proc.poll() is not None:
            break
    assert any("broker ready" in line for line in lines), "".join(lines)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert {"opa", "kafka", "pacs"} <= set(ready.json()["checks"])
    for _ in range(10):  # the next lines say where to point a browser and as whom to sign in
        if any("in a browser and sign in as a dev user" in line for line in lines):
            break
        lines.append(proc.stdout.readline())
    assert any(f"open http://127.0.0.1:{port}/ in a browser" in line for line in lines), lines
    # the viewer is served: OHIF's own files from the provisioned dist, its config from us
    assert httpx.get(f"http://127.0.0.1:{port}/manifest.json", timeout=10).status_code == 200
    config = httpx.get(f"http://127.0.0.1:{port}/app-config.js", timeout=10)
    assert config.status_code == 200 and "showStudyList: false" in config.text
    children = _descendants(proc.pid)
    assert len(children) >= 4  # kafka, opa, orthanc, the broker (and their own children)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, "".join([*lines, proc.stdout.read()])
    proc.stdout.close()
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
