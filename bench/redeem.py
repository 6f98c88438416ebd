"""Redemption: one whole study through a link (WADO-RS via the broker) vs straight from Orthanc.

Both sides fetch ``GET .../studies/{uid}`` with ``Accept: multipart/related;
type="application/dicom"`` and stream the body without keeping it. Per download: time to first
byte (request sent → first body byte, so it includes the broker's token check, policy decision
and two audit acknowledgements on the link side) and throughput (body bytes / total time).
Downloads alternate between the two sides so that both see the same machine state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.httpload import summarize

__all__ = ["Download", "compare"]

_ACCEPT = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class Download:
    """One retrieved study: status, bytes, time to first byte and total time (seconds)."""

    status: int
    nbytes: int
    ttfb: float
    total: float


async def fetch(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Download:
    """Stream one study, counting bytes."""
    started = time.perf_counter()
    first: float | None = None
    nbytes = 0
    async with client.stream("GET", url, headers={"Accept": _ACCEPT} | headers) as response:
        async for chunk in response.aiter_raw():
            if first is None:
                first = time.perf_counter()
            nbytes += len(chunk)
        status = response.status_code
    end = time.perf_counter()
    return Download(status, nbytes, (first or end) - started, end - started)


def _side(downloads: list[Download], wall: float) -> dict[str, Any]:
    ok = [d for d in downloads if d.status == 200]
    total_bytes = sum(d.nbytes for d in ok)
    per_request = [d.nbytes / d.total / 1e6 for d in ok if d.total > 0]
    return {
        "downloads": len(downloads),
        "errors": len(downloads) - len(ok),
        "bytes_per_download": ok[0].nbytes if ok else 0,
        "mb_per_s": round(total_bytes / wall / 1e6, 1) if wall > 0 else 0.0,
        "mb_per_s_per_download_p50": round(sorted(per_request)[len(per_request) // 2], 1)
        if per_request
        else 0.0,
        "ttfb": summarize([d.ttfb for d in ok]),
        "total": summarize([d.total for d in ok]),
    }


async def compare(
    *,
    direct_url: str,
    direct_auth: tuple[str, str],
    link_url: str,
    bearer: str,
    repetitions: int,
    concurrency: int,
) -> dict[str, Any]:
    """``repetitions`` rounds of ``concurrency`` parallel downloads on each side, alternating.

    ``mb_per_s`` is the aggregate rate of a side (its bytes over the wall time it ran).
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(120.0)
    async with (
        httpx.AsyncClient(auth=direct_auth, limits=limits, timeout=timeout) as direct_client,
        httpx.AsyncClient(limits=limits, timeout=timeout) as link_client,
    ):
        link_headers = {"Authorization": f"Bearer {bearer}"}

        async def round_of(side: str) -> tuple[list[Download], float]:
            started = time.perf_counter()
            if side == "direct":
                jobs = [fetch(direct_client, direct_url, {}) for _ in range(concurrency)]
            else:
                jobs = [fetch(link_client, link_url, link_headers) for _ in range(concurrency)]
            return list(await asyncio.gather(*jobs)), time.perf_counter() - started

        await round_of("direct")  # warm-up: page cache, connections, facts cache
        await round_of("link")
        results: dict[str, list[Download]] = {"direct": [], "link": []}
        walls = {"direct": 0.0, "link": 0.0}
        for _ in range(repetitions):
            for side in ("direct", "link"):
                downloads, wall = await round_of(side)
                results[side] += downloads
                walls[side] += wall
    direct = _side(results["direct"], walls["direct"])
    link = _side(results["link"], walls["link"])
    ratio = link["mb_per_s"] / direct["mb_per_s"] if direct["mb_per_s"] else 0.0
    return {
        "concurrency": concurrency,
        "repetitions": repetitions,
        "direct": direct,
        "link": link,
        "throughput_ratio": round(ratio, 3),
        "ttfb_added_p50_ms": round(link["ttfb"]["p50_ms"] - direct["ttfb"]["p50_ms"], 2),
        "same_size": direct["bytes_per_download"] == link["bytes_per_download"],
    }
