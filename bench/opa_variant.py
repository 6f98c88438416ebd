"""A second OPA with the stack's exact policy but without per-request console logging.

The stack's OPA logs every request (``--log-level=info``) and every decision to the console
(``decision_logs.console=true``, which is how the broker gets decision ids). This what-if
starts a copy of that OPA process (same binary, same bundle or files, same working directory)
with ``--log-level=error`` and decision logs off, to size what logging costs OPA alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from devstack._procs import ManagedProcess, free_port

__all__ = ["start_quiet_opa"]


def start_quiet_opa(
    stack_opa_pid: int, log_path: Path, *, decision_logs: bool
) -> tuple[ManagedProcess, str]:
    """Start the copy (request logs off; decision logs kept or not); its process and URL.

    Without decision logs OPA returns no ``decision_id``, which the broker records in every
    audit event: that variant only sizes the cost, it is not a configuration to run.
    """
    argv = Path(f"/proc/{stack_opa_pid}/cmdline").read_bytes().decode().split("\0")
    cwd = Path(os.readlink(f"/proc/{stack_opa_pid}/cwd"))
    port = free_port()
    quiet = []
    for arg in (a for a in argv if a):
        if arg.startswith("--addr="):
            arg = f"--addr=127.0.0.1:{port}"
        elif arg.startswith("--log-level="):
            arg = "--log-level=error"
        elif arg.startswith("--set=decision_logs.") and not decision_logs:
            continue
        quiet.append(arg)
    name = "opa-no-request-log" + ("" if decision_logs else "-no-decision-log")
    process = ManagedProcess(name, quiet, log_path=log_path, cwd=cwd)
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout=30)
    return process, url
