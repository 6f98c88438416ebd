"""Asking the OPA sidecar, through opa-python-client, with a deadline; every failure denies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from opa_client import AsyncOpaClient
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.config import OpaSettings
from broker.tracing import tracer

__all__ = ["Decision", "OpaGateway", "Reason"]

log = logging.getLogger("telerad.policy")


class Reason(BaseModel):
    """Why a decision came out as it did: a stable code and a human message."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    code: str
    message: str = ""


class Decision(BaseModel):
    """The policy's answer; ``allow`` is only ever true when OPA said exactly ``true``."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    allow: bool = False
    reasons: list[Reason] = Field(default_factory=list)
    obligations: dict[str, Any] = Field(default_factory=dict)
    decision_id: str | None = None
    policy_revision: str | None = None

    @classmethod
    def deny(cls, code: str, message: str, *, decision_id: str | None = None) -> Decision:
        """A fail-closed denial the broker makes itself when OPA gives no usable answer."""
        return cls(
            allow=False, reasons=[Reason(code=code, message=message)], decision_id=decision_id
        )


class OpaGateway:
    """One long-lived opa-python-client session to the sidecar."""

    def __init__(self, settings: OpaSettings) -> None:
        self._settings = settings
        url = urlsplit(str(settings.url))
        self._client = AsyncOpaClient(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if url.scheme == "https" else 80),
            ssl=url.scheme == "https",
            timeout=settings.timeout_seconds,
            retries=0,  # the deadline is ours to spend; a retry would only delay the denial
        )
        self._package, _, self._rule = settings.decision_path.replace("/", ".").rpartition(".")
        self._opened = False

    async def open(self) -> None:
        await self._client._init_session()  # the public entry is __aenter__; same effect
        self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._client.close_connection()
            self._opened = False

    async def _query(self, input_data: dict[str, Any]) -> dict[str, Any]:
        result = await asyncio.wait_for(
            self._client.query_rule(
                input_data=input_data,
                package_path=self._package,
                rule_name=self._rule,
                query_params={"provenance": True},  # bundle revisions ride along
            ),
            self._settings.timeout_seconds,
        )
        if not isinstance(result, dict):
            raise TypeError("OPA answered with something other than an object")
        return result

    async def decide(self, input_data: dict[str, Any]) -> Decision:
        """The decision for ``input_data``; error, timeout, undefined or malformed ⇒ deny."""
        with tracer().start_as_current_span("opa decision", kind=SpanKind.CLIENT) as span:
            decision = await self._decide(input_data)
            span.set_attribute("telerad.policy.allow", decision.allow)
            if decision.decision_id:
                span.set_attribute("telerad.policy.decision_id", decision.decision_id)
            return decision

    async def _decide(self, input_data: dict[str, Any]) -> Decision:
        try:
            answer = await self._query(input_data)
        except TimeoutError:
            log.warning("policy decision timed out", extra={"reason": "policy_timeout"})
            return Decision.deny("policy_timeout", "The policy service did not answer in time.")
        except Exception as exc:  # noqa: BLE001 - any failure to get a decision is a denial
            log.warning("policy decision failed: %s", type(exc).__name__)
            return Decision.deny("policy_unavailable", "The policy service could not be reached.")
        decision_id = answer.get("decision_id")
        result = answer.get("result")
        if not isinstance(result, dict):
            return Decision.deny(
                "policy_undefined", "The policy gave no decision.", decision_id=decision_id
            )
        if result.get("allow") is not True and result.get("allow") is not False:
            return Decision.deny(
                "policy_malformed", "The policy's decision is malformed.", decision_id=decision_id
            )
        try:
            revision = _revision(answer.get("provenance"))
            decision = Decision.model_validate(
                result | {"decision_id": decision_id, "policy_revision": revision}
            )
        except ValidationError:
            return Decision.deny(
                "policy_malformed", "The policy's decision is malformed.", decision_id=decision_id
            )
        return decision

    async def revision(self) -> str | None:
        """The policy revision OPA serves now (None when it cannot say or is unreachable)."""
        try:
            answer = await self._query({})
        except Exception:  # noqa: BLE001 - no revision known; the watcher asks again
            return None
        return _revision(answer.get("provenance"))

    async def check_ready(self) -> None:
        """Raise unless OPA answers and the decision document is defined."""
        answer = await self._query({})
        if not isinstance(answer.get("result"), dict):
            raise LookupError(
                f"decision {self._settings.decision_path} is undefined (no policy loaded)"
            )


def _revision(provenance: Any) -> str | None:
    """The policy bundles' revisions (``name@revision``), when OPA serves bundles."""
    bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
    if not isinstance(bundles, dict) or not bundles:
        return None
    parts = [
        f"{name}@{info.get('revision', '')}"
        for name, info in sorted(bundles.items())
        if isinstance(info, dict)
    ]
    return ",".join(parts) or None
