"""The viewer pattern: a study opened as OHIF opens it, straight from Orthanc and through a link.

One *study open* is: the study's metadata (``GET .../studies/{uid}/metadata``), then every frame
of every instance (``GET .../series/{s}/instances/{i}/frames/1``, ``Accept:
multipart/related; type="application/octet-stream"``) over ``connections`` parallel keep-alive
connections (OHIF uses about six), each sending its next frame request as soon as the previous
answer is complete. Each link open uses a fresh link, so its first request asks the policy and
opens the decision window, as a real viewer's does.

Per side: frames/s (frames over the wall time from the metadata request to the last frame), per
frame latency p50/p99/p99.9 (request written → answer complete), time to the last frame, and the
CPU each process group spent per frame. Opens alternate between the sides so that both see the
same machine state. The client is :class:`bench.httpload.Connection` (asyncio + httptools), as
for the other HTTP figures: httpx would cost more CPU than the broker on two cores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.httpload import Connection, Target, build_request, summarize

__all__ = ["StudyOpen", "open_study", "side_by_side"]

_FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"'


@dataclass(frozen=True)
class StudyOpen:
    """One study opened: frames fetched, errors, wall time and per-frame latencies (seconds)."""

    frames: int
    errors: int
    wall: float
    metadata: float
    latencies: list[float]
    bytes: int


def frame_paths(root: str, study_uid: str, metadata: list[dict[str, Any]]) -> list[str]:
    """Every frame's URL path below ``root`` (a DICOMweb root), from DICOM JSON metadata."""
    out = []
    for ds in metadata:
        series = ds["0020000E"]["Value"][0]
        sop = ds["00080018"]["Value"][0]
        frames = int(ds.get("00280008", {}).get("Value", [1])[0] or 1)
        for frame in range(1, frames + 1):
            out.append(f"{root}/studies/{study_uid}/series/{series}/instances/{sop}/frames/{frame}")
    return out


async def open_study(
    root: str, study_uid: str, headers: dict[str, str], connections: int
) -> StudyOpen:
    """Metadata, then every frame over ``connections`` connections (closed loop)."""
    target = Target.of(root)
    host = urlsplit(root).netloc
    conns = [await Connection.open(target) for _ in range(connections)]
    try:
        started = time.perf_counter()
        meta_url = f"{root}/studies/{study_uid}/metadata"
        status, body = await conns[0].send(
            build_request("GET", meta_url, headers=headers | {"Accept": "application/dicom+json"})
        )
        metadata_done = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"metadata answered {status}: {body[:200]!r}")
        paths = frame_paths(root, study_uid, json.loads(body))
        queue = list(reversed(paths))
        latencies: list[float] = []
        errors = 0
        nbytes = 0

        async def worker(conn: Connection) -> None:
            nonlocal errors, nbytes
            while queue:
                url = queue.pop()
                raw = build_request("GET", url, headers=headers | {"Accept": _FRAME_ACCEPT})
                sent = time.perf_counter()
                try:
                    code, answer = await conn.send(raw)
                except (ConnectionError, OSError):
                    errors += 1
                    return
                latencies.append(time.perf_counter() - sent)
                if code == 200:
                    nbytes += len(answer)
                else:
                    errors += 1

        await asyncio.gather(*(worker(c) for c in conns))
        wall = time.perf_counter() - started
        del host
        return StudyOpen(len(paths), errors, wall, metadata_done - started, latencies, nbytes)
    finally:
        for conn in conns:
            conn.close()


def _side(opens: list[StudyOpen], cpu: dict[str, float], cpu_seconds: float) -> dict[str, Any]:
    frames = sum(o.frames for o in opens)
    wall = sum(o.wall for o in opens)
    latencies = [t for o in opens for t in o.latencies]
    per_frame_ms = {
        name: round(10 * percent * cpu_seconds / frames, 3)  # % of a core * s / frames → ms
        for name, percent in cpu.items()
        if frames
    }
    return {
        "opens": len(opens),
        "frames_per_open": opens[0].frames if opens else 0,
        "errors": sum(o.errors for o in opens),
        "frames_per_s": round(frames / wall, 1) if wall else 0.0,
        "frame": summarize(latencies),
        "time_to_last_frame_ms": summarize([o.wall for o in opens]),
        "metadata_ms": summarize([o.metadata for o in opens]),
        "bytes_per_open": opens[0].bytes if opens else 0,
        "cpu_ms_per_frame": per_frame_ms,
    }


async def side_by_side(
    *,
    direct_root: str,
    direct_auth: tuple[str, str],
    study_uid: str,
    new_link_root: Callable[[], Awaitable[tuple[str, str]]],
    bearer: str,
    opens: int,
    connections: int,
    cpu: Any,
) -> dict[str, Any]:
    """``opens`` study opens per side, alternating; ``new_link_root()`` issues a fresh link and
    gives its DICOMweb root and link id. ``cpu`` is a :class:`bench.procstat.CpuMeter`."""
    basic = base64.b64encode(f"{direct_auth[0]}:{direct_auth[1]}".encode()).decode()
    direct_headers = {"Authorization": f"Basic {basic}"}
    link_headers = {"Authorization": f"Bearer {bearer}"}
    # warm-up: connections, page cache, the facts cache, the bearer cache
    await open_study(direct_root, study_uid, direct_headers, connections)
    root, _ = await new_link_root()
    await open_study(root, study_uid, link_headers, connections)
    results: dict[str, list[StudyOpen]] = {"direct": [], "link": []}
    usage: dict[str, dict[str, float]] = {"direct": {}, "link": {}}
    seconds = {"direct": 0.0, "link": 0.0}
    for _ in range(opens):
        for side in ("direct", "link"):
            if side == "direct":
                root, headers = direct_root, direct_headers
            else:
                root, _ = await new_link_root()  # issuance is not part of the open
                headers = link_headers
            stop = cpu.start()
            started = time.perf_counter()
            opened = await open_study(root, study_uid, headers, connections)
            elapsed = time.perf_counter() - started
            used = stop(elapsed)
            results[side].append(opened)
            seconds[side] += elapsed
            for name, percent in used.items():
                usage[side][name] = usage[side].get(name, 0.0) + percent * elapsed
    out: dict[str, Any] = {"connections": connections}
    for side in ("direct", "link"):
        total = seconds[side]
        mean_percent = {k: v / total for k, v in usage[side].items()} if total else {}
        out[side] = _side(results[side], mean_percent, total)
    d, link = out["direct"], out["link"]
    out["frames_per_s_ratio"] = (
        round(link["frames_per_s"] / d["frames_per_s"], 3) if d["frames_per_s"] else 0.0
    )
    out["added_p50_ms"] = round(link["frame"]["p50_ms"] - d["frame"]["p50_ms"], 2)
    out["added_p99_ms"] = round(link["frame"]["p99_ms"] - d["frame"]["p99_ms"], 2)
    out["same_bytes"] = d["bytes_per_open"] == link["bytes_per_open"]
    return out
