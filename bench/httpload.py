"""A closed-loop HTTP/1.1 load generator for loopback: asyncio protocols and httptools.

Each simulated client owns one keep-alive connection and sends its next request as soon as the
previous answer is complete (closed loop), so ``concurrency`` is the number of requests in
flight. A level stops after a fixed number of requests or at a time cap, whichever comes
first; a warm-up on the same connections precedes the measured requests.

Why not httpx here: on a two-core machine the load generator competes with the system under
test, and httpx.AsyncClient costs several times more CPU per request than this minimal client
(see ``bench/README.md``); the figures would then measure the generator as much as the broker.
httpx is still used where its cost does not matter (tokens, set-up, the redemption downloads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Connection",
    "LevelResult",
    "Target",
    "build_request",
    "percentile",
    "run_level",
    "summarize",
]

Check = Callable[[int, bytes], bool]


@dataclass(frozen=True)
class Target:
    """Where requests go: host and port of one HTTP server."""

    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Target:
        """The target of an ``http://host:port/...`` URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)


def build_request(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The raw bytes of one HTTP/1.1 keep-alive request (sent as is, many times)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "User-Agent: telerad-bench/1",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection(asyncio.Protocol):
    """One keep-alive client connection; :meth:`send` returns (status, body)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (called by the event loop)."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a protocol error fails the request in flight."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """The server closed the connection: fail the request in flight."""
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        """Collect the body (the answers measured here are small)."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Resolve the request in flight with its status and body."""
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._body)
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))
        if not self._parser.should_keep_alive():
            self.close()

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its complete answer."""
        if self._transport is None or self.closed:
            raise ConnectionError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    @classmethod
    async def open(cls, target: Target) -> Connection:
        """A new connection to ``target``."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, target.host, target.port)
        return protocol


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    """mean/p50/p90/p99/p99.9/max in milliseconds of latencies given in seconds."""
    values = sorted(latencies)
    n = len(values)
    return {
        "mean_ms": round(1000 * sum(values) / n, 3) if n else 0.0,
        "p50_ms": round(1000 * percentile(values, 50), 3),
        "p90_ms": round(1000 * percentile(values, 90), 3),
        "p99_ms": round(1000 * percentile(values, 99), 3),
        "p999_ms": round(1000 * percentile(values, 99.9), 3),
        "max_ms": round(1000 * values[-1], 3) if n else 0.0,
    }


@dataclass
class LevelResult:
    """The outcome of one load level (one concurrency, one request mix)."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    latency: dict[str, float]
    capped: bool
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    cpu_percent: dict[str, float] = field(default_factory=dict)
    other_cpu_of_attempts: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            **self.latency,
            "capped_by_time": self.capped,
            "statuses": self.statuses,
            "first_error": self.first_error,
            "cpu_percent": self.cpu_percent,
            "other_cpu_of_attempts": self.other_cpu_of_attempts,
            # CPU time each process spent per answered request, in ms (the cost, not the rate)
            "cpu_ms_per_request": {
                name: round(10 * percent * self.seconds / self.requests, 3)
                for name, percent in self.cpu_percent.items()
                if self.requests and name not in ("machine_total", "other")
            },
        }


class _Tally:
    """Shared counters of one level."""

    def __init__(self, count: int, deadline: float) -> None:
        self.next = 0
        self.count = count
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.first_error: str | None = None
        self.capped = False

    def take(self) -> int | None:
        if self.next >= self.count:
            return None
        if time.perf_counter() >= self.deadline:
            self.capped = True
            return None
        index = self.next
        self.next += 1
        return index

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what[:300]


async def _client(
    target: Target,
    connection: Connection,
    requests: Sequence[bytes],
    check: Check,
    tally: _Tally,
    offset: int,
) -> None:
    perf = time.perf_counter
    latencies = tally.latencies
    while (index := tally.take()) is not None:
        raw = requests[(index + offset) % len(requests)]
        started = perf()
        try:
            if connection.closed:
                connection = await Connection.open(target)
            status, body = await connection.send(raw)
        except (OSError, httptools.HttpParserError) as exc:
            latencies.append(perf() - started)
            tally.error(f"{type(exc).__name__}: {exc}")
            tally.statuses["error"] = tally.statuses.get("error", 0) + 1
            continue
        latencies.append(perf() - started)
        key = str(status)
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if not check(status, body):
            tally.error(f"HTTP {status}: {body[:200]!r}")
    connection.close()


async def _run(
    target: Target,
    connections: list[Connection],
    requests: Sequence[bytes],
    check: Check,
    count: int,
    time_cap: float,
) -> tuple[_Tally, float]:
    tally = _Tally(count, time.perf_counter() + time_cap)
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(_client(target, c, requests, check, tally, i))
        for i, c in enumerate(connections)
    ]
    # The time cap stops new requests; answers in flight get a grace period, then are cut.
    done, pending = await asyncio.wait(tasks, timeout=time_cap + 30)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            tally.error(repr(task.exception()))
    return tally, time.perf_counter() - started


async def run_level(
    target: Target,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    count: int,
    time_cap: float,
    warmup: int,
    check: Check,
    cpu: Callable[[], Callable[[float], dict[str, float]]] | None = None,
) -> LevelResult:
    """Warm up, then send ``count`` requests with ``concurrency`` clients (or until the cap).

    ``requests`` are raw requests used round-robin; ``check(status, body)`` says whether an
    answer is a success. ``cpu()`` starts a CPU meter and returns a function that, given the
    elapsed seconds, reports CPU use per process (percent of one core) for the measured part.
    """

    async def open_all() -> list[Connection]:
        return list(await asyncio.gather(*(Connection.open(target) for _ in range(concurrency))))

    if warmup:
        await _run(target, await open_all(), requests, check, warmup, time_cap)
    connections = await open_all()
    stop_cpu = cpu() if cpu else None
    tally, seconds = await _run(target, connections, requests, check, count, time_cap)
    cpu_percent = stop_cpu(seconds) if stop_cpu else {}
    done = len(tally.latencies)
    return LevelResult(
        concurrency=concurrency,
        requests=done,
        errors=tally.errors,
        seconds=seconds,
        rps=done / seconds if seconds > 0 else 0.0,
        latency=summarize(tally.latencies),
        capped=tally.capped,
        statuses=tally.statuses,
        first_error=tally.first_error,
        cpu_percent=cpu_percent,
    )
