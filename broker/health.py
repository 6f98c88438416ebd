"""Readiness: every dependency checked on each probe, concurrently, each within a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel

from broker.audit.kafka import cluster_brokers
from broker.config import Settings
from broker.identity.bearer import BearerValidator
from broker.opa import OpaGateway

__all__ = ["CheckReport", "CheckResult", "Readiness", "ReadinessChecker"]


@dataclass(frozen=True)
class CheckResult:
    """One dependency's state as reported by ``/readyz``."""

    name: str
    ready: bool
    detail: str
    latency_ms: float


class CheckReport(BaseModel):
    """One check in the ``/readyz`` body."""

    ready: bool
    detail: str
    latency_ms: float


class Readiness(BaseModel):
    """The ``/readyz`` body (200 when ready, 503 when not: the same shape either way)."""

    status: Literal["ready", "unready"]
    checks: dict[str, CheckReport]


class ReadinessChecker:
    """Checks OPA, Kafka, each trusted IdP and the PACS; any failure makes the broker unready."""

    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, opa: OpaGateway, bearer: BearerValidator
    ) -> None:
        self._settings = settings
        self._http = http
        self._opa = opa
        self._bearer = bearer
        self._checks: dict[str, Callable[[], Awaitable[str]]] = {
            "opa": self._check_opa,
            "kafka": self._check_kafka,
            "pacs": self._check_pacs,
        }
        for issuer in settings.issuers:
            url = str(issuer.issuer).rstrip("/")
            self._checks[f"idp:{url}"] = self._issuer_check(url)

    async def run(self) -> list[CheckResult]:
        """All checks at once; a check that overruns its deadline counts as failed."""
        return list(await asyncio.gather(*(self._one(n, c) for n, c in self._checks.items())))

    async def _one(self, name: str, check: Callable[[], Awaitable[str]]) -> CheckResult:
        started = time.perf_counter()
        try:
            detail = await asyncio.wait_for(check(), self._settings.readiness_timeout_seconds)
            ready = True
        except TimeoutError:
            detail, ready = "timed out", False
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency means "not ready"
            detail, ready = f"{type(exc).__name__}: {_short(exc)}", False
        return CheckResult(name, ready, detail, round((time.perf_counter() - started) * 1000, 1))

    async def _check_opa(self) -> str:
        await self._opa.check_ready()
        return "healthy, policy loaded"

    async def _check_kafka(self) -> str:
        bootstrap = self._settings.kafka.bootstrap_servers
        timeout_ms = int(self._settings.readiness_timeout_seconds * 1000)
        brokers = await asyncio.to_thread(cluster_brokers, bootstrap, timeout_ms)
        return f"{brokers} broker(s) reachable"

    async def _check_pacs(self) -> str:
        pacs = self._settings.pacs
        auth = (
            (pacs.username, pacs.password.get_secret_value())
            if pacs.username and pacs.password
            else None
        )
        url = str(pacs.url).rstrip("/") + "/studies"
        response = await self._http.get(
            url, params={"limit": "1"}, auth=auth or httpx.USE_CLIENT_DEFAULT
        )
        response.raise_for_status()
        return f"QIDO-RS answered {response.status_code}"

    def _issuer_check(self, issuer: str) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            await self._bearer.keys(issuer).discovery()  # also refreshes the cached metadata
            return "discovery document served"

        return check


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
