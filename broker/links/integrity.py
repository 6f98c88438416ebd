"""The integrity check of one redemption: what the proxy compares, and the event it raises.

Every finding is an ``integrity.violation`` audit event (who read what through which link,
``detail.finding`` and ``detail.action``) and a count in ``telerad_integrity_violations``. An
instance served without a fingerprint (the policy said ``serve``) is recorded once per instance
per replica (:class:`~broker.fingerprints.ServedUnchecked`), and that record must be durable
before the bytes go (fail closed); a cut-off or refusal happens whether or not its event could
be written (the failure is logged).
"""

from __future__ import annotations

import logging

from broker.audit import AuditEvent, AuditUnavailable, EventKind, Outcome
from broker.dicomweb.integrity import Finding, Policy, ReadCheck
from broker.identity.principal import Principal
from broker.links.token import LinkClaims
from broker.policy import RequestContext
from broker.state import AppState

__all__ = ["policy_of", "read_check"]

log = logging.getLogger("telerad.integrity")


def policy_of(obligation: object) -> Policy:
    """The ``unfingerprinted`` obligation; anything but ``"serve"`` (missing too) refuses."""
    return "serve" if obligation == "serve" else "refuse"


def read_check(
    state: AppState,
    claims: LinkClaims,
    principal: Principal,
    context: RequestContext,
    upstream: str,
    policy: Policy,
) -> ReadCheck | None:
    """The check for one proxied request; None when this replica does not check reads."""
    index, served = state.fingerprints, state.served_unchecked
    if index is None:
        return None

    async def report(finding: Finding) -> None:
        if finding.action == "served" and served is not None and finding.sop_uid is not None:
            if not served.first(finding.sop_uid):
                return
        state.metrics.integrity.labels(finding.finding, finding.action).inc()
        event = AuditEvent(
            kind=EventKind.INTEGRITY_VIOLATION,
            outcome=Outcome.ALLOW if finding.action == "served" else Outcome.DENY,
            **context.actor(principal),
            action="redeem",
            study_uid=claims.study_uid,
            reasons=[f"integrity_{finding.finding}"],
            link_id=claims.link_id,
            detail=finding.detail() | {"path": upstream, "policy": policy},
        )
        log.warning(
            "integrity %s (%s): %s",
            finding.finding,
            finding.action,
            finding.sop_uid,
            extra={"event_id": event.id, "study_uid": claims.study_uid},
        )
        try:
            await state.audit.emit(event)
        except AuditUnavailable:
            if finding.action == "served":
                if served is not None and finding.sop_uid is not None:
                    served.forget(finding.sop_uid)
                raise  # no unchecked bytes without a durable record of them
            log.error("integrity.violation not recorded", extra={"event_id": event.id})

    return ReadCheck(index.lookup, policy, report)
