"""The audit event schema and its CloudEvents binding."""

from __future__ import annotations

import json

import pytest

from broker.audit.cloudevents import (
    SCHEMA_PATH,
    PoisonRecord,
    export_schema,
    from_record,
    to_record,
)
from broker.audit.events import AuditEvent, EventKind, Outcome


def test_committed_schema_is_the_exported_one() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == export_schema(), (
        "regenerate broker/audit/schema/audit-event.v1.schema.json from the model"
    )


@pytest.mark.parametrize("kind", list(EventKind))
def test_serialized_records_validate_against_the_committed_schema(kind: EventKind) -> None:
    from broker.audit.cloudevents import check_against_schema

    event = AuditEvent(
        kind=kind,
        outcome=Outcome.SUCCESS,
        subject="npi:1",
        roles=["radiologist"],
        study_uid="1.2.3",
        operations=["view"],
        reasons=["x"],
        detail={"k": [1, "v"]},
    )
    _, value, _ = to_record(event, source="/test")
    check_against_schema(json.loads(value))
    with pytest.raises(ValueError, match="schema"):
        check_against_schema(json.loads(value) | {"unexpected": True})


def test_round_trip_with_ce_headers() -> None:
    event = AuditEvent(
        kind=EventKind.DECISION, outcome=Outcome.ALLOW, study_uid="1.2.3", subject="npi:1"
    )
    key, value, headers = to_record(event, source="/test")
    attrs = dict(headers)
    assert key == b"1.2.3"
    assert attrs["ce_type"] == b"org.telerad.decision.v1" and attrs["ce_specversion"] == b"1.0"
    assert from_record(value, headers) == event


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v, h: (v, [x for x in h if x[0] != "ce_specversion"]),
        lambda v, h: (v, [(k, b"org.other.v1" if k == "ce_type" else x) for k, x in h]),
        lambda v, h: (b"{", h),
        lambda v, h: (None, h),
        lambda v, h: (v.replace(b'"decision"', b'"logout"'), h),
        lambda v, h: (v[:-1] + b',"extra":1}', h),
    ],
)
def test_malformed_records_are_poison(mutate: object) -> None:
    event = AuditEvent(kind=EventKind.DECISION, outcome=Outcome.DENY)
    _, value, headers = to_record(event, source="/test")
    bad_value, bad_headers = mutate(value, headers)  # type: ignore[operator]
    with pytest.raises(PoisonRecord):
        from_record(bad_value, bad_headers)


class TestPartitionKey:
    """The control topic is compacted: a record's key must be what it controls."""

    def test_revocations_are_keyed_by_what_they_revoke(self) -> None:
        def revoked(value: str) -> AuditEvent:
            return AuditEvent(
                kind=EventKind.REVOKED,
                outcome=Outcome.SUCCESS,
                subject="npi:1",
                study_uid="1.2.3",
                detail={"revocation": {"kind": "link", "value": value, "until": 1.0}},
            )

        one, two = revoked("link-1"), revoked("link-2")
        assert one.partition_key == "revoked:link:link-1"
        assert one.partition_key != two.partition_key  # compaction keeps both

    def test_consent_is_keyed_by_study(self) -> None:
        consent = AuditEvent(
            kind=EventKind.CONSENT_CHANGED,
            outcome=Outcome.SUCCESS,
            study_uid="1.2.3",
            detail={"consent": "deny"},
        )
        assert consent.partition_key == "1.2.3"  # the newest consent per study is in force
