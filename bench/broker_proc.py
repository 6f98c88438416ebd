"""The broker under test, as its own process (so the load generator does not share its loop)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack._procs import ManagedProcess, free_port

__all__ = ["BrokerProcess", "bench_keys", "start_broker"]


def bench_keys() -> dict[str, str]:
    """Fresh link, session and pseudonym keys shared by every worker of one run."""

    def key() -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()

    return {
        "TELERAD_LINKS__KEYS": json.dumps({"bench": key()}),
        "TELERAD_LINKS__ACTIVE_KEY": "bench",
        "TELERAD_IDENTITY__SESSION_KEYS": json.dumps({"bench": key()}),
        "TELERAD_IDENTITY__SESSION_ACTIVE_KEY": "bench",
        "TELERAD_PSEUDONYM_KEY": key(),
    }


@dataclass
class BrokerProcess:
    """A running broker: its URL, process and how it was started."""

    url: str
    workers: int
    command: list[str]
    process: ManagedProcess

    @property
    def pgid(self) -> int | None:
        """The broker's process group (its workers included)."""
        return self.process.pid

    def stop(self) -> None:
        """Stop the broker and every worker."""
        self.process.stop()


def _ready(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def start_broker(
    env: dict[str, str],
    run_dir: Path,
    *,
    workers: int = 1,
    log_name: str = "broker",
    whatif: str | None = None,
    whatif_path: str | None = None,
    source_root: Path | None = None,
) -> BrokerProcess:
    """Start the broker on a free port and wait until ``/readyz`` says every dependency is up.

    One worker runs ``telerad serve`` (the shipped command). More workers run uvicorn's
    process manager on :func:`bench.asgi.app`, because ``telerad serve`` cannot start workers.
    With ``whatif`` (features of :mod:`bench.audit_emit`) uvicorn runs
    :func:`bench.asgi.whatif_app`, with ``whatif_path`` (extra packages) on its path.
    With ``source_root`` (an exported tree of an earlier commit) the broker's code is taken
    from there, ahead of this checkout (same packages, same stack): a before/after comparison.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = env | {
        "TELERAD_PORT": str(port),
        "TELERAD_PUBLIC_URL": url,
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_INSTANCE_ID": f"bench-{port}",
        "PYTHONPATH": os.pathsep.join(
            [
                *([str(source_root)] if source_root is not None else []),
                str(Path(__file__).resolve().parents[1]),
                *([whatif_path] if whatif and whatif_path else []),
                os.environ.get("PYTHONPATH", ""),
            ]
        ).rstrip(os.pathsep),
    }
    if whatif:
        full_env["BENCH_WHATIF"] = whatif
    if workers == 1 and not whatif:
        command = [sys.executable, "-m", "broker", "serve", "--port", str(port)]
    else:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.asgi:whatif_app" if whatif else "bench.asgi:app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--no-server-header",
            "--log-level",
            "warning",
        ]
    process = ManagedProcess(
        log_name,
        command,
        log_path=run_dir / "logs" / f"{log_name}.log",
        env=full_env,
        # ``python -m`` puts the working directory first on sys.path: an earlier commit's tree
        # must be it, or the checkout's own broker would be imported instead
        cwd=source_root,
    )
    process.start()
    process.wait_ready(lambda: _ready(url), timeout=90)
    # every worker must be up, not only the first: new connections land on any of them
    process.wait_ready(lambda: all(_ready(url) for _ in range(8 * workers)), timeout=60)
    return BrokerProcess(url, workers, command, process)
