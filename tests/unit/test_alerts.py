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


def test_bulk_access_across_many_studies_is_a_high_alert_once() -> None:
    rules = AlertRules(bulk_studies=3, bulk_window_seconds=60)
    events = [
        AuditEvent(
            kind=EventKind.DECISION,
            outcome=Outcome.ALLOW if i % 2 else Outcome.DENY,
            subject="npi:9",
            action="issue_link",
            study_uid=f"1.2.{i % 4}",
        )
        for i in range(8)
    ]
    bulk = [a for a in run(events, rules) if a.rule == "bulk_access"]
    assert len(bulk) == 1 and bulk[0].severity == "high" and bulk[0].subject == "npi:9"
    # the worklist asks the policy about every study: that is not bulk access
    searches = [e.model_copy(update={"action": "search"}) for e in events]
    assert not [a for a in run(searches, rules) if a.rule == "bulk_access"]


def test_containment_is_opt_in_allow_listed_and_cools_down() -> None:
    from streams.containment import Containment, lift_event

    alert = Alert("a1", "bulk_access", "high", "npi:9", None, "e1", "t", "many studies")
    now = [1000.0]
    contain = Containment(
        ["bulk_access"], allow=["npi:1"], cooldown_seconds=60, clock=lambda: now[0]
    )
    event = contain.event_for(alert)
    assert event is not None and event.kind is EventKind.REVOKED
    assert event.detail["revocation"] == {
        "kind": "subject",
        "value": "npi:9",
        "until": 1000 + 8 * 3600,
    }
    assert event.detail["containment"]["rule"] == "bulk_access"
    assert contain.event_for(alert) is None  # cooling down
    now[0] += 61
    assert contain.event_for(alert) is not None
    assert Containment([]).event_for(alert) is None  # no rule marked: alerts only
    from dataclasses import replace

    assert contain.event_for(replace(alert, subject="npi:1")) is None  # allow-listed
    from broker.revocation import RevocationKind, Revocations, apply_event

    revocations = Revocations(clock=lambda: now[0])
    assert apply_event(revocations, contain.event_for(replace(alert, subject="npi:7")))  # type: ignore[arg-type]
    assert revocations.is_revoked(RevocationKind.SUBJECT, "npi:7")
    assert apply_event(revocations, lift_event("npi:7", "false positive, checked", "operator:x"))
    assert not revocations.is_revoked(RevocationKind.SUBJECT, "npi:7")


def test_integrity_violation_cut_off_is_critical() -> None:
    detail = {"finding": "altered", "action": "cut_off", "sop_uid": "1.2.3"}
    (alert,) = run([ev(EventKind.INTEGRITY_VIOLATION, Outcome.DENY, detail=detail)])
    assert (alert.rule, alert.severity) == ("integrity_violation", "critical")
    assert alert.detail == {"sop_uid": "1.2.3", "finding": "altered", "action": "cut_off"}
    assert "1.2.3" in alert.message and "cut off" in alert.message


def test_unfingerprinted_served_is_a_low_alert() -> None:
    detail = {"finding": "unfingerprinted", "action": "served", "sop_uid": "1.2.3"}
    (alert,) = run([ev(EventKind.INTEGRITY_VIOLATION, Outcome.ALLOW, detail=detail)])
    assert (alert.rule, alert.severity) == ("unfingerprinted_served", "low")
