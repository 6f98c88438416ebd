"""Alerts that act: a rule marked for containment revokes the person on every replica.

When an alert of a rule named in ``TELERAD_STREAMS__CONTAIN_RULES`` is raised for a subject
that is not allow-listed and not contained within the cool-down, the alerts consumer publishes
a ``revoked`` event for that subject, acknowledged on the audit topic (the ledger holds the
containment with its rule, alert and evidence) and on the control topic (every replica refuses
the person's sessions, tokens and links at once). An operator lifts it with
``telerad audit containment lift <subject> --reason …``, itself an audited ``revoked`` event
marked ``lifted``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.revocation import RevocationKind
from streams.alerts import Alert

__all__ = ["Containment", "lift_event"]


class Containment:
    """Which alerts contain their subject, with an allow-list and a cool-down."""

    def __init__(
        self,
        rules: Collection[str],
        *,
        allow: Collection[str] = (),
        seconds: float = 8 * 3600,
        cooldown_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = frozenset(rules)
        self._allow = frozenset(allow)
        self._seconds = seconds
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._last: dict[str, float] = {}

    def event_for(self, alert: Alert) -> AuditEvent | None:
        """The containment for ``alert``, or None (rule not marked, allow-listed, cooling down)."""
        subject = alert.subject
        if alert.rule not in self._rules or not subject or subject in self._allow:
            return None
        now = self._clock()
        if now - self._last.get(subject, float("-inf")) < self._cooldown:
            return None
        self._last[subject] = now
        return AuditEvent(
            kind=EventKind.REVOKED,
            outcome=Outcome.SUCCESS,
            # no study_uid: keyed by the subject, the containment and its lift share a partition
            # of the control topic, so every replica applies them in the order they were made
            subject=subject,
            reasons=[f"containment:{alert.rule}"],
            detail={
                "revocation": {
                    "kind": RevocationKind.SUBJECT.value,
                    "value": subject,
                    "until": now + self._seconds,
                },
                "containment": {
                    "rule": alert.rule,
                    "alert_id": alert.id,
                    "study_uid": alert.study_uid,
                    "evidence": [alert.event_id],
                    "message": alert.message,
                    "detail": alert.detail,
                },
                "by": "telerad audit alerts",
            },
        )


def lift_event(subject: str, reason: str, operator: str) -> AuditEvent:
    """The audited event that ends a containment on every replica."""
    return AuditEvent(
        kind=EventKind.REVOKED,
        outcome=Outcome.SUCCESS,
        subject=subject,
        reasons=["containment_lifted"],
        purpose=reason,
        detail={
            "revocation": {
                "kind": RevocationKind.SUBJECT.value,
                "value": subject,
                "until": 0,
                "lifted": True,
            },
            "by": operator,
        },
    )
