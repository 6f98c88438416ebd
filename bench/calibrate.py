"""What the load generator itself costs: the built-in client against httpx.AsyncClient.

Both send the same OPA request with the same concurrency; the figure is this process's CPU
time per answered request. On a two-core machine every millisecond the generator spends is
taken from the system under test, which is why the HTTP phases use the built-in client.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from bench.httpload import Target, build_request, run_level

__all__ = ["loadgen_cost"]


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def _httpx(url: str, body: bytes, concurrency: int, count: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while done < count:
                done += 1
                response = await client.post(
                    url, content=body, headers={"Content-Type": "application/json"}
                )
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up included
        started = _cpu()
        done = 0
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, _cpu() - started


async def loadgen_cost(
    url: str, body: bytes, concurrency: int = 16, count: int = 1000
) -> dict[str, Any]:
    """CPU ms per request of the built-in client and of httpx.AsyncClient, same requests."""
    raw = [build_request("POST", url, body=body, headers={"Content-Type": "application/json"})]
    started_cpu, started = _cpu(), time.perf_counter()
    builtin = await run_level(
        Target.of(url),
        raw,
        concurrency=concurrency,
        count=count,
        time_cap=60,
        warmup=count // 10,
        check=lambda status, _: status == 200,
    )
    builtin_cpu = _cpu() - started_cpu
    builtin_wall = time.perf_counter() - started
    n, httpx_cpu = await _httpx(url, body, concurrency, count)
    return {
        "concurrency": concurrency,
        "requests": count,
        "builtin_cpu_ms_per_request": round(1000 * builtin_cpu / (count * 1.1), 3),
        "builtin_wall_s": round(builtin_wall, 2),
        "httpx_cpu_ms_per_request": round(1000 * httpx_cpu / max(n, 1), 3),
        "builtin_errors": builtin.errors,
    }
