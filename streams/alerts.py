"""Alerts from the audit stream: break-glass, bursts of denials, access outside assignment,
unusual volume or hours per radiologist, and imaging integrity (a read through a link that did
not match its instance's fingerprint and was cut off or refused: ``integrity_violation``,
critical; an instance served without a fingerprint: ``unfingerprinted_served``, low).

Each alert has an id derived from the event that raised it and the rule (UUID 5), so a
re-delivered event raises the same alert id again and downstream deduplicates; the detector also
remembers the event ids it has seen lately and skips them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

from broker.audit.events import AuditEvent, EventKind, Outcome

__all__ = ["Alert", "AlertDetector", "AlertRules"]

log = logging.getLogger("telerad.alerts")
_NAMESPACE = uuid.UUID("6f1c5a38-0c52-4d53-9b7e-4f1b7c2b8a11")


@dataclass(frozen=True)
class AlertRules:
    """Thresholds (per subject); hours are UTC."""

    denial_burst: int = 5  # denials ...
    denial_window_seconds: int = 60  # ... within this window
    volume_per_hour: int = 60  # link issues or redemptions per hour
    quiet_hours: tuple[int, int] = (0, 5)  # [start, end) UTC hours counted as unusual
    bulk_studies: int = 20  # distinct studies one subject asks for ...
    bulk_window_seconds: int = 300  # ... within this window (bulk_access)


@dataclass(frozen=True)
class Alert:
    """One alert, as published on the alerts topic."""

    id: str
    rule: str
    severity: str
    subject: str | None
    study_uid: str | None
    event_id: str
    time: str
    message: str
    detail: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


class AlertDetector:
    """Stateful rules over the event stream (state is per process; alerts are idempotent)."""

    def __init__(self, rules: AlertRules | None = None, *, remember: int = 100_000) -> None:
        self.rules = rules or AlertRules()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._denials: defaultdict[str, deque[float]] = defaultdict(deque)
        self._volume: defaultdict[str, deque[float]] = defaultdict(deque)
        self._studies: defaultdict[str, OrderedDict[str, float]] = defaultdict(OrderedDict)

    def handle(self, events: list[AuditEvent], publish: Callable[[Alert], None]) -> int:
        """Check each new event; ``publish`` every alert raised. Returns how many were raised."""
        raised = 0
        for event in events:
            if event.id in self._seen:
                continue
            self._seen[event.id] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            for alert in self._check(event):
                publish(alert)
                log.warning(
                    "alert %s: %s", alert.rule, alert.message, extra={"alert": asdict(alert)}
                )
                raised += 1
        return raised

    def _alert(
        self, event: AuditEvent, rule: str, severity: str, message: str, **detail: object
    ) -> Alert:
        return Alert(
            id=str(uuid.uuid5(_NAMESPACE, f"{event.id}/{rule}")),
            rule=rule,
            severity=severity,
            subject=event.subject,
            study_uid=event.study_uid,
            event_id=event.id,
            time=event.time.isoformat(),
            message=message,
            detail=dict(detail),
        )

    def _check(self, event: AuditEvent) -> list[Alert]:
        alerts: list[Alert] = []
        at = event.time.timestamp()
        who = event.subject or "unknown"
        if event.kind is EventKind.BREAK_GLASS:
            alerts.append(
                self._alert(
                    event,
                    "break_glass",
                    "high",
                    f"{who} used break-glass",
                    justification=event.purpose or "",
                )
            )
        if event.kind is EventKind.INTEGRITY_VIOLATION:
            finding = str(event.detail.get("finding", "unknown"))
            action = str(event.detail.get("action", "unknown"))
            sop_uid = str(event.detail.get("sop_uid", "unknown"))
            if action == "served":
                alerts.append(
                    self._alert(
                        event,
                        "unfingerprinted_served",
                        "low",
                        f"instance {sop_uid} served to {who} without an integrity check "
                        f"({finding})",
                        sop_uid=sop_uid,
                        finding=finding,
                    )
                )
            else:
                alerts.append(
                    self._alert(
                        event,
                        "integrity_violation",
                        "critical",
                        f"instance {sop_uid} failed its integrity check ({finding}); the read "
                        f"by {who} was {action.replace('_', ' ')}",
                        sop_uid=sop_uid,
                        finding=finding,
                        action=action,
                    )
                )
        if event.kind is EventKind.DECISION and event.outcome is Outcome.DENY:
            window = self._denials[who]
            window.append(at)
            while window and at - window[0] > self.rules.denial_window_seconds:
                window.popleft()
            if len(window) == self.rules.denial_burst:
                alerts.append(
                    self._alert(
                        event,
                        "denial_burst",
                        "medium",
                        f"{who}: {len(window)} denials within {self.rules.denial_window_seconds} s",
                    )
                )
        if (
            event.kind is EventKind.DECISION
            and event.outcome is Outcome.ALLOW
            and event.action
            in (
                "issue_link",
                "redeem",
            )
        ):
            if (
                "assigned_on_worklist" not in event.reasons
                and "referring_physician_own_patient" not in event.reasons
            ):
                alerts.append(
                    self._alert(
                        event,
                        "outside_assignment",
                        "low",
                        f"{who} accessed a study not on their worklist",
                        reasons=list(event.reasons),
                    )
                )
        if (
            event.kind is EventKind.DECISION
            and event.action in ("issue_link", "redeem")  # not search: every worklist asks it
            and event.study_uid
            and event.subject
        ):
            # many studies (allowed or not) in a short time: bulk access, the thief's pattern
            studies = self._studies[who]
            studies.pop(event.study_uid, None)
            studies[event.study_uid] = at
            while studies and at - next(iter(studies.values())) > self.rules.bulk_window_seconds:
                studies.popitem(last=False)
            if len(studies) == self.rules.bulk_studies:
                alerts.append(
                    self._alert(
                        event,
                        "bulk_access",
                        "high",
                        f"{who}: {len(studies)} studies within {self.rules.bulk_window_seconds} s",
                        studies=list(studies),
                    )
                )
        if event.kind in (EventKind.LINK_ISSUED, EventKind.LINK_REDEEMED):
            window = self._volume[who]
            window.append(at)
            while window and at - window[0] > 3600:
                window.popleft()
            if len(window) == self.rules.volume_per_hour + 1:
                alerts.append(
                    self._alert(
                        event,
                        "unusual_volume",
                        "medium",
                        f"{who}: over {self.rules.volume_per_hour} accesses in an hour",
                    )
                )
            start, end = self.rules.quiet_hours
            if _hour(event.time) in range(start, end) and event.kind is EventKind.LINK_ISSUED:
                alerts.append(
                    self._alert(
                        event,
                        "unusual_hours",
                        "low",
                        f"{who} issued a link at {event.time:%H:%M} UTC",
                    )
                )
        return alerts


def _hour(moment: datetime) -> int:
    return moment.hour
