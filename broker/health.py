"""Readiness: every dependency checked on each probe, concurrently, each within a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel

from broker.audit.kafka import TopicFollower, cluster_brokers, security_config
from broker.config import Settings
from broker.identity.bearer import BearerValidator
from broker.opa import OpaGateway
from broker.upstream import error_text

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
    """Checks OPA, Kafka, each trusted IdP and the PACS; any failure makes the broker unready.

    With the Kafka sink, also that the control topic, the RIS's worklist topic and (checking
    reads) the fingerprint topic were read up to their end offsets seen at start; in production,
    that the audit topic is replicated at least as the floor asks (``replication_factor`` and
    ``min_insync_replicas``), naming the gap when it is not.
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        opa: OpaGateway,
        bearer: BearerValidator,
        control: TopicFollower | None = None,
        fingerprints: TopicFollower | None = None,
        *,
        worklist: TopicFollower | None = None,
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
        self._control = control
        if control is not None:
            self._checks["control-topic"] = self._check_control
        self._worklist = worklist
        if worklist is not None:
            self._checks["worklist-topic"] = self._check_worklist
        self._fingerprints = fingerprints
        if fingerprints is not None:
            self._checks["fingerprints"] = self._check_fingerprints
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
            detail, ready = error_text(exc), False
        return CheckResult(name, ready, detail, round((time.perf_counter() - started) * 1000, 1))

    async def _check_opa(self) -> str:
        await self._opa.check_ready()
        return "healthy, policy loaded"

    async def _check_kafka(self) -> str:
        bootstrap = self._settings.kafka.bootstrap_servers
        timeout_ms = int(self._settings.readiness_timeout_seconds * 1000)
        security = security_config(self._settings.kafka)
        brokers = await asyncio.to_thread(cluster_brokers, bootstrap, timeout_ms, **security)
        if self._settings.environment != "production":
            return f"{brokers} broker(s) reachable"
        gaps = await asyncio.to_thread(self._audit_topic_gaps, bootstrap, timeout_ms, security)
        if gaps:
            raise RuntimeError("; ".join(gaps))
        kafka = self._settings.kafka
        return (
            f"{brokers} broker(s) reachable; audit topic at or above replication factor "
            f"{kafka.replication_factor}, min.insync.replicas {kafka.min_insync_replicas}"
        )

    def _audit_topic_gaps(
        self, bootstrap: str, timeout_ms: int, security: dict[str, object]
    ) -> list[str]:
        from broker.audit.kafka_admin import admin_client
        from broker.audit.topics import audit_topic_gaps

        with admin_client(bootstrap, timeout_ms=timeout_ms, **security) as admin:
            return audit_topic_gaps(admin, self._settings)

    async def _check_control(self) -> str:
        if self._control is None:
            raise RuntimeError("no control-topic listener")
        # wait a little within the check's deadline (a replica just started is close to it)
        wait = self._settings.readiness_timeout_seconds * 0.8
        await asyncio.to_thread(self._control.caught_up.wait, wait)
        return self._control.progress()

    async def _check_worklist(self) -> str:
        if self._worklist is None:
            raise RuntimeError("no worklist-topic listener")
        # the current assignments, rebuilt from the beginning of the worklist topic
        await asyncio.to_thread(
            self._worklist.caught_up.wait, self._settings.readiness_timeout_seconds * 0.8
        )
        return self._worklist.progress()

    async def _check_fingerprints(self) -> str:
        if self._fingerprints is None:
            raise RuntimeError("no fingerprint-topic listener")
        wait = self._settings.readiness_timeout_seconds * 0.8
        await asyncio.to_thread(self._fingerprints.caught_up.wait, wait)
        return self._fingerprints.progress()

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
