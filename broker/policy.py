"""The single enforcement path: input built here, decided by OPA, audited before it counts.

Every protected route that touches a study calls :meth:`PolicyEnforcer.authorize`. It never
decides by itself: it builds the policy input from the principal, the action, the study's facts
and the request context, asks OPA (fail closed), records the decision as an audit event — allow
and deny alike — and only then returns it. If the audit record cannot be made durable the
request is refused with 503: no grant without a durable record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from broker.audit import AuditEvent, AuditSink, AuditUnavailable, EventKind, Outcome
from broker.dicomweb.facts import StudyFacts
from broker.errors import DependencyUnavailable
from broker.identity.principal import Principal
from broker.metrics import Metrics
from broker.opa import Decision, OpaGateway
from broker.worklist.state import WorklistState

__all__ = ["Action", "PolicyEnforcer", "RequestContext"]

Action = str  # "issue_link" | "redeem" | "search" | "read_audit" | "record_consent"

_BREAK_GLASS_MAX = 1000  # characters of justification kept


@dataclass(frozen=True)
class RequestContext:
    """Where and when a request came from, as the policy and the audit see it."""

    client_ip: str | None
    user_agent: str | None
    now: float

    @classmethod
    def of(cls, request: Request) -> RequestContext:
        return cls(
            client_ip=request.client.host if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:256] or None,
            now=time.time(),
        )

    def actor(self, principal: Principal | None) -> dict[str, Any]:
        """Who asked and from where, as every audit event about a request records it.

        ``subject``, ``issuer``, ``roles`` and ``session_id`` of ``principal`` (all empty when
        the caller is not known yet) with this context's ``client_ip`` and ``user_agent``:
        keyword arguments for :class:`~broker.audit.events.AuditEvent`.
        """
        return {
            "subject": principal.id if principal else None,
            "issuer": principal.issuer if principal else None,
            "roles": list(principal.roles) if principal else [],
            "session_id": principal.session_id if principal else None,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
        }

    @classmethod
    def audit_fields(cls, request: Request) -> dict[str, str | None]:
        """``client_ip`` and ``user_agent`` for an audit event about ``request``."""
        context = cls.of(request)
        return {"client_ip": context.client_ip, "user_agent": context.user_agent}


class PolicyEnforcer:
    """Builds policy input, asks OPA, audits the decision."""

    def __init__(
        self,
        opa: OpaGateway,
        audit: AuditSink,
        metrics: Metrics,
        worklist: WorklistState | None = None,
    ) -> None:
        self._opa = opa
        self._audit = audit
        self._metrics = metrics
        # the RIS's assignments as this replica read them (none: nothing is assigned)
        self._worklist = worklist if worklist is not None else WorklistState()
        # The latest policy (bundle) revision any decision reported; decisions reused in a
        # window hold only while it is unchanged (see broker.links.window).
        self.policy_revision: str | None = None

    @staticmethod
    def build_input(
        principal: Principal,
        action: Action,
        operations: list[str],
        facts: StudyFacts | None,
        context: RequestContext,
        break_glass: str | None = None,
        resource: dict[str, Any] | None = None,
        assignment: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The policy's ``input`` document (see policies/schemas/input.schema.json).

        ``resource`` is ``input.resource`` for actions on no study (``facts`` is None), such as
        ``record_consent`` with the facility the consent is recorded for. ``assignment`` is the
        study's worklist assignment (``input.resource.assignment``; null: the RIS assigned it
        to nobody, or said nothing of it).
        """
        justification = (break_glass or "").strip()[:_BREAK_GLASS_MAX]
        document: dict[str, Any] = {
            "action": action,
            "operations": sorted(set(operations)),
            "subject": principal.policy_subject(),
            "context": {
                "now": int(context.now),
                "client_ip": context.client_ip,
                "break_glass": {"justification": justification} if justification else None,
            },
        }
        if facts is not None:
            document["resource"] = facts.policy_resource() | {"assignment": assignment}
            if facts.consent is not None:
                document["context"]["consent"] = {"external_reading": facts.consent}
        elif resource is not None:
            document["resource"] = dict(resource)
        return document

    async def authorize(
        self,
        principal: Principal,
        action: Action,
        operations: list[str],
        facts: StudyFacts | None,
        context: RequestContext,
        *,
        break_glass: str | None = None,
        resource: dict[str, Any] | None = None,
        also: Callable[[Decision, AuditEvent], Sequence[AuditEvent]] | None = None,
    ) -> Decision:
        """Decide and audit; raise :class:`DependencyUnavailable` if the audit is not durable.

        ``also(decision, decision_event)`` names events to make durable together with the
        decision's own (issuance's ``link.issued``, redemption's ``link.granted``): one produce,
        one acknowledgement. ``resource`` is ``input.resource`` for an action on no study.
        """
        assigned = self._worklist.get(facts.study_uid) if facts is not None else None
        policy_input = self.build_input(
            principal,
            action,
            operations,
            facts,
            context,
            break_glass,
            resource,
            assigned.policy_input() if assigned is not None else None,
        )
        with self._metrics.decision_seconds.time():
            decision = await self._opa.decide(policy_input)
        if decision.policy_revision is not None:
            self.policy_revision = decision.policy_revision
        self._metrics.decisions.labels(action, "allow" if decision.allow else "deny").inc()
        for reason in decision.reasons:
            if reason.code.startswith("policy_"):
                self._metrics.policy_errors.labels(reason.code).inc()
        event = AuditEvent(
            kind=EventKind.DECISION,
            outcome=Outcome.ALLOW if decision.allow else Outcome.DENY,
            **context.actor(principal),
            action=action,
            study_uid=facts.study_uid if facts else None,
            operations=sorted(set(operations)),
            reasons=[r.code for r in decision.reasons],
            decision_id=decision.decision_id,
            policy_revision=decision.policy_revision,
            purpose=policy_input["context"]["break_glass"]["justification"]
            if policy_input["context"]["break_glass"]
            else None,
            detail={"obligations": decision.obligations} if decision.allow else {},
        )
        events = [event]
        if decision.allow and decision.obligations.get("break_glass"):
            events.append(
                event.model_copy(update={"id": f"{event.id}-bg", "kind": EventKind.BREAK_GLASS})
            )
        if also is not None:
            events.extend(also(decision, event))
        try:
            await self._audit.emit_many(events)
        except AuditUnavailable as exc:
            self._metrics.audit_failures.inc()
            raise DependencyUnavailable(
                "The audit trail is unavailable; nothing was granted."
            ) from exc
        return decision
