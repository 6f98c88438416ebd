"""Sampling profiles of the processes under load (py-spy), summarised where the time goes.

py-spy (``pip install py-spy``) attaches to a running process by pid without changing it and
samples every thread's Python stack (``--gil``-less, idle frames dropped). The raw output is
kept (collapsed stacks, loadable into speedscope or flamegraph.pl); :func:`summarize` turns it
into the shares of samples by frame, inclusive and exclusive, which ``bench/README.md`` quotes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BROKER_BUCKETS", "LEDGER_BUCKETS", "Profiler", "py_spy", "py_spy_version", "summarize"]

# Where a sample's time is charged: the first of these found walking from the leaf to the root.
BROKER_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("audit: JSON Schema check of each event (jsonschema)", ("jsonschema/", "referencing/")),
    ("audit: Kafka producer (kafka-python: batching, CRC, I/O)", ("kafka/",)),
    (
        "audit: sink (hand-off to the sender thread, ack bridging)",
        ("concurrent/futures/", "broker/audit/kafka.py", "queue.py"),
    ),
    ("audit: event model and CloudEvents record", ("broker/audit/",)),
    (
        "policy: OPA client (opa-python-client, aiohttp)",
        ("opa_client/", "aiohttp/", "broker/opa.py"),
    ),
    ("identity: bearer token check (joserfc, cache)", ("joserfc/", "broker/identity/")),
    ("links: sealing/opening (AES-GCM, pydantic)", ("broker/links/token.py", "broker/crypto.py")),
    ("facts: QIDO-RS and catalog", ("broker/dicomweb/facts.py",)),
    ("proxy: DICOMweb relay (httpx/httpcore)", ("broker/dicomweb/proxy.py", "httpx/", "httpcore/")),
    ("policy: enforcer (input, event)", ("broker/policy.py",)),
    ("links: endpoint logic", ("broker/links/endpoints.py", "broker/api.py")),
    ("pydantic models (request bodies, audit events, link claims)", ("pydantic",)),
    ("FastAPI/Starlette routing, dependencies, responses", ("fastapi/", "starlette/")),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("logging", ("logging/", "broker/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("asyncio/uvloop scheduling", ("asyncio/", "uvloop/", "anyio/")),
]


# The ledger consumer's work (pydantic and json are charged to the step that called them).
LEDGER_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("signing and publishing tree heads", ("maybe_sign", "sign_head", "publish")),
    ("SQLite append and commit (fsync)", ("streams/ledger_store.py",)),
    ("canonical event bytes (event_bytes: model_dump, json)", ("event_bytes",)),
    ("decoding records (from_record: headers, pydantic)", ("broker/audit/cloudevents.py",)),
    ("offset commits (one round trip per partition per poll)", ("commit",)),
    ("kafka-python fetch, record parsing, CRC", ("kafka/",)),
    ("bench bookkeeping (latency notes)", ("bench/ledger_worker.py",)),
]


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH; None if not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def py_spy_version() -> str | None:
    """``py-spy --version`` (None if not installed)."""
    exe = py_spy()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


@dataclass
class Profiler:
    """One py-spy recording of a process (and its subprocesses) into a collapsed-stack file."""

    pid: int
    out: Path
    rate: int = 200
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Start recording in the background; False if py-spy is not installed."""
        exe = py_spy()
        if exe is None:
            return False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--subprocesses",
                "--gil",  # only the thread holding the GIL: where the Python CPU goes
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        return True

    def stop(self) -> Path | None:
        """Stop recording (py-spy writes its file on SIGINT); the file, if any was written."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT: py-spy stops and writes what it has
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return self.out if self.out.exists() else None


_REPO = str(Path(__file__).resolve().parents[1])  # the checkout, wherever it is


def _frames(stack: str) -> list[str]:
    # a collapsed line is "frame;frame;...;frame count"; frames are "func (file:line)"
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        where = where.rstrip(")")
        file = where.rsplit(":", 1)[0]
        for marker in ("site-packages/", "/lib/python3", f"{_REPO}/"):
            if marker in file:
                file = file.split(marker, 1)[1]
        frames.append(f"{name} ({file})")
    return frames


def summarize(
    path: Path, top: int = 25, buckets: list[tuple[str, tuple[str, ...]]] | None = None
) -> dict[str, Any]:
    """Shares of samples by frame: ``inclusive`` (on the stack) and ``self`` (leaf).

    With ``buckets`` each sample is also charged to the first bucket whose pattern matches a
    frame, walking from the leaf towards the root (``other`` when none does). Samples were
    taken of the thread holding the GIL only, so shares are of the Python CPU time.
    """
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            leaf[frames[-1]] += count
        if buckets is not None:
            charged[_bucket(frames, buckets)] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": frame, "percent": round(100 * n / total, 1)}
            for frame, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "buckets": shares(charged) if total and buckets is not None else [],
        "inclusive": shares(inclusive) if total else [],
        "self": shares(leaf) if total else [],
    }


def _bucket(frames: list[str], buckets: list[tuple[str, tuple[str, ...]]]) -> str:
    for frame in reversed(frames):
        for name, patterns in buckets:
            if any(p in frame for p in patterns):
                return name
    return "other"
