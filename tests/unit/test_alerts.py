"""Alert rules over a hand-made event stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.audit.events import AuditEvent, EventKind, Outcome
from streams.alerts import Alert, AlertDetector, AlertRules

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def ev(kind: EventKind, outcome: Outcome, at: datetime = NOON, **kw: object) -> AuditEvent:
    return AuditEvent(kind=kind, outcome=outcome, time=at, subject="npi:1", **kw)  # type: ignore[arg-type]


def run(events: list[AuditEvent], rules: AlertRules | None = None) -> list[Alert]:
    out: list[Alert] = []
    AlertDetector(rules).handle(events, out.append)
    return out


def test_break_glass_alerts_with_the_justification() -> None:
    (alert,) = run([ev(EventKind.BREAK_GLASS, Outcome.ALLOW, purpose="stroke alert")])
    assert (alert.rule, alert.severity, alert.detail) == (
        "break_glass",
        "high",
        {"justification": "stroke alert"},
    )


def test_denial_burst_alerts_once_per_burst() -> None:
    denials = [ev(EventKind.DECISION, Outcome.DENY, NOON + timedelta(seconds=i)) for i in range(7)]
    assert [a.rule for a in run(denials)] == ["denial_burst"]


def test_spread_out_denials_do_not_alert() -> None:
    denials = [
        ev(EventKind.DECISION, Outcome.DENY, NOON + timedelta(minutes=2 * i)) for i in range(7)
    ]
    assert run(denials) == []


def test_access_outside_assignment() -> None:
    covered = ev(
        EventKind.DECISION,
        Outcome.ALLOW,
        action="issue_link",
        reasons=["group_coverage", "privileged"],
    )
    assigned = ev(
        EventKind.DECISION, Outcome.ALLOW, action="issue_link", reasons=["assigned_on_worklist"]
    )
    assert [a.rule for a in run([covered, assigned])] == ["outside_assignment"]


def test_unusual_hours_and_volume() -> None:
    night = NOON.replace(hour=3)
    links = [
        ev(EventKind.LINK_ISSUED, Outcome.SUCCESS, night + timedelta(seconds=i)) for i in range(3)
    ]
    rules = AlertRules(volume_per_hour=2)
    assert [a.rule for a in run(links, rules)] == [
        "unusual_hours",
        "unusual_hours",
        "unusual_volume",
        "unusual_hours",
    ]


def test_redelivered_events_raise_nothing_new_and_ids_are_stable() -> None:
    event = ev(EventKind.BREAK_GLASS, Outcome.ALLOW)
    detector, out = AlertDetector(), []
    detector.handle([event, event], out.append)
    assert len(out) == 1
    again: list[Alert] = []
    AlertDetector().handle([event], again.append)
    assert again[0].id == out[0].id
