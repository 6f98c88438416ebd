"""A Docker engine for the dev/test stack: the one already reachable, or a private one we start.

Machines without a running engine can often still run Debian's ``dockerd`` (package
``docker.io``) as root. :meth:`DockerEngine.ensure` then starts one of its own, with everything
under the given run directory: data root, exec root, pid file and socket (never the machine's
``/var/run/docker.sock``). It runs with ``--storage-driver=vfs`` (no overlayfs needed),
``--iptables=false`` and ``--bridge=none``: containers use the host's network (``--network
host``), which is how the stack's containers reach each other and the tests reach them.

An engine we started is stopped (SIGTERM, then SIGKILL) by :meth:`DockerEngine.stop`; one that
was already there is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devstack._procs import ManagedProcess, ServiceStartError, progress

__all__ = ["DockerEngine", "EngineUnavailable", "engine_answers", "remove_stale_engines"]


class EngineUnavailable(RuntimeError):
    """No Docker engine is reachable and none can be started here; the message says why."""


def engine_answers(host: str, timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping at ``host`` (``unix://...`` or ``tcp://...``)."""
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    try:
        import docker

        client = docker.DockerClient(base_url=host, timeout=int(timeout) or 1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


@dataclass
class DockerEngine:
    """A reachable engine: where it listens, and the daemon process if we started it."""

    host: str
    process: ManagedProcess | None = None
    root: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def env(self) -> dict[str, str]:
        """Environment for clients (docker CLI, docker-py, testcontainers) of this engine."""
        return {
            "DOCKER_HOST": self.host,
            # Ryuk, testcontainers' reaper, is an image from Docker Hub; the stack stops its own.
            "TESTCONTAINERS_RYUK_DISABLED": "true",
        }

    @classmethod
    def ensure(cls, run_dir: Path | None = None, *, timeout: float = 60.0) -> DockerEngine:
        """The engine at ``$DOCKER_HOST`` or the default socket, else a private one started here.

        Raises :class:`EngineUnavailable` when none answers and ``dockerd`` cannot be started
        (not installed, not root).
        """
        configured = os.environ.get("DOCKER_HOST")
        for host in [configured] if configured else ["unix:///var/run/docker.sock"]:
            if engine_answers(host):
                progress(f"docker: using the engine at {host}")
                return cls(host)
        if configured:
            raise EngineUnavailable(f"DOCKER_HOST={configured} does not answer")
        return cls._start_private(run_dir, timeout=timeout)

    @classmethod
    def _start_private(cls, run_dir: Path | None, *, timeout: float) -> DockerEngine:
        dockerd = shutil.which("dockerd") or (
            "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
        )
        if dockerd is None:
            raise EngineUnavailable(
                "no Docker engine answers and dockerd is not installed "
                "(Debian: apt-get install docker.io)"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable(
                "no Docker engine answers, and a private dockerd needs root (this user is not)"
            )
        remove_stale_engines()
        # Unix socket paths are limited to 108 bytes and containerd nests its sockets under the
        # exec root, so the engine gets a short directory of its own (linked from run_dir).
        root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            link = run_dir / "docker-engine"
            link.unlink(missing_ok=True)
            link.symlink_to(root)
        host = f"unix://{root / 'docker.sock'}"
        argv = [
            dockerd,
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host={host}",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
        ]
        log_path = (run_dir or root) / "logs" / "dockerd.log"
        progress(f"docker: no engine reachable, starting a private dockerd at {host}")
        proc = ManagedProcess("dockerd", argv, log_path=log_path)
        proc.start()
        try:
            proc.wait_ready(lambda: engine_answers(host), timeout=timeout, interval=0.5)
        except ServiceStartError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise EngineUnavailable(f"a private dockerd did not start: {exc}") from None
        return cls(host, proc, root)

    def stop(self) -> None:
        """Stop the daemon if we started it, and remove its data root (images included)."""
        if self.process is None:
            return
        self.process.stop(timeout=30)
        self.process = None
        if self.root is not None:
            _remove_tree(self.root)


_PREFIX = "telerad-engine-"


def remove_stale_engines(parent: Path | None = None) -> list[Path]:
    """Remove the directories of private engines whose ``dockerd`` is gone (a killed test run
    leaves its data root behind: gigabytes, with vfs). Returns what was removed."""
    removed: list[Path] = []
    for root in sorted(Path(parent or tempfile.gettempdir()).glob(f"{_PREFIX}*")):
        pidfile = root / "dockerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue  # starting now, or not ours: leave it
        if Path(f"/proc/{pid}").exists() and "dockerd" in _cmdline(pid):
            continue
        progress(f"docker: removing {root}, left by an engine that is no longer running")
        _remove_tree(root)
        removed.append(root)
    return removed


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root)
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in points if m == prefix or m.startswith(prefix + "/")]


def _remove_tree(root: Path) -> None:
    """Remove the engine's directory; first unmount what the daemon left mounted under it
    (its network namespace file, when it was killed), and never remove through a mount."""
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    busy = _mounts_under(root)
    if busy:
        progress(f"docker: left {root} in place, still mounted: {', '.join(busy[:3])}")
        return
    shutil.rmtree(root, ignore_errors=True)
