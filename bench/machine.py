"""A description of the machine and of the software versions a run measured."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

__all__ = ["describe"]

_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "httpx",
    "aiohttp",
    "opa-python-client",
    "kafka-python",
    "pydantic",
    "joserfc",
    "cryptography",
    "jsonschema",
    "crc32c",
    "py-spy",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cmdline(pid: int | None) -> list[str]:
    if pid is None:
        return []
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def _opa_version(pid: int | None) -> str | None:
    argv = _cmdline(pid)
    if not argv or not argv[0]:
        return None
    match = re.search(r"^Version: (\S+)", _run([argv[0], "version"]), re.MULTILINE)
    return match.group(1) if match else None


def _kafka_version(pid: int | None) -> dict[str, str | None]:
    argv = _cmdline(pid)
    classpath = next((a for i, a in enumerate(argv) if i > 0 and argv[i - 1] == "-cp"), "")
    match = re.search(r"kafka_[0-9.]+-([0-9][^/:]*?)\.jar", classpath) or re.search(
        r"kafka-([0-9][0-9.]*[0-9])/", classpath
    )
    java = argv[0] if argv else ""
    java_version = _run([java, "-version"]).splitlines()[0] if java else ""
    return {"kafka": match.group(1) if match else None, "kafka_java": java_version or None}


def _orthanc_version(url: str, auth: tuple[str, str]) -> str | None:
    try:
        return str(httpx.get(f"{url}/system", auth=auth, timeout=5).json().get("Version"))
    except (httpx.HTTPError, ValueError):
        return None


def _keycloak_version(pid: int | None) -> str | None:
    home = next((a.split("=", 1)[1] for a in _cmdline(pid) if a.startswith("-Dkc.home.dir=")), "")
    version = Path(home) / "version.txt"
    if not (home and version.exists()):
        return None
    return version.read_text().strip().removeprefix("Keycloak - Version ")


def _package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(
    pids: dict[str, int | None], orthanc: tuple[str, tuple[str, str]] | None
) -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, and the versions of OPA, Kafka, Keycloak, Orthanc.

    ``pids`` are the stack's service processes (versions are read from their binaries and
    command lines); ``orthanc`` is its URL and credentials.
    """
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "opa": _opa_version(pids.get("opa")),
        **_kafka_version(pids.get("kafka")),
        "keycloak": _keycloak_version(pids.get("keycloak")),
        "orthanc": _orthanc_version(*orthanc) if orthanc else None,
        "packages": _package_versions(),
        "load_average_at_start": [round(v, 2) for v in load],
    }
