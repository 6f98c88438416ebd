"""Recorded Consents: what a FHIR Consent must say, what the newest one means, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.consent import Consent, ConsentProvision
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.reference import Reference
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.errors import BadRequest
from broker.fhir.consent import EXTERNAL_READING, PRIVACY_SCOPE, parse_consent
from broker.fhir.records import ConsentRecord, ConsentStore

NOW = 1_800_000_000.0


def consent(**overrides: Any) -> dict[str, Any]:
    """A Consent to external reading, made with the FHIR models (not hand-written JSON)."""
    resource = Consent(
        status=overrides.pop("status", "active"),
        scope=CodeableConcept(coding=[Coding(system=PRIVACY_SCOPE[0], code=PRIVACY_SCOPE[1])]),
        category=[
            CodeableConcept(coding=[Coding(system=EXTERNAL_READING[0], code=EXTERNAL_READING[1])])
        ],
        patient=Reference(identifier=Identifier(system="urn:oid:1.2.3", value="SO-0001")),
        organization=[Reference(reference="Organization/st-olaf")],
        provision=ConsentProvision(
            type=overrides.pop("type", "deny"),
            period=overrides.pop("period", None),
        ),
    )
    body: dict[str, Any] = json.loads(resource.model_dump_json(exclude_none=True))
    body.update(overrides)
    return body


def test_a_valid_consent_gives_what_the_broker_needs() -> None:
    period = Period(start="2026-01-01", end="2027-01-01T00:00:00Z")
    parsed = parse_consent(consent(type="permit", period=period))
    assert (parsed.patient_id, parsed.facility, parsed.status, parsed.provision) == (
        "SO-0001",
        "st-olaf",
        "active",
        "permit",
    )
    assert parsed.start == 1767225600.0 and parsed.end == 1798761600.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resourceType": "Patient"}, "must be a FHIR Consent"),
        ({"status": "maybe"}, "Consent.status must be one of"),
        ({"scope": {"coding": [{"system": "x", "code": "research"}]}}, "patient-privacy"),
        (
            {"category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]},
            "external reading",
        ),
        ({"patient": {"reference": "Patient/1"}}, "patient.identifier.value"),
        ({"organization": [{"display": "St Olaf"}]}, "must name the facility"),
        ({"provision": {}}, "provision.type must be permit or deny"),
        (
            {"provision": {"type": "deny", "period": {"start": "2027", "end": "2026"}}},
            "ends before",
        ),
        ({"category": "not a list"}, "Not a valid FHIR R4 Consent"),
        ({"dateTime": "yesterday"}, "Not a valid FHIR R4 Consent"),
    ],
)
def test_what_is_refused_and_why(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_consent(consent() | change)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_any_json_is_a_consent_or_a_bad_request(body: object) -> None:
    if isinstance(body, dict):
        body = consent() | body
    try:
        parse_consent(body)
    except BadRequest:
        pass


def record(
    cid: str,
    at: float,
    *,
    provision: str = "deny",
    status: str = "active",
    start: float | None = None,
    end: float | None = None,
) -> ConsentRecord:
    return ConsentRecord(cid, "p:1", "st-olaf", status, provision, start, end, at, {"id": cid})


def changed(r: ConsentRecord) -> AuditEvent:
    return AuditEvent(kind=EventKind.CONSENT_CHANGED, outcome=Outcome.SUCCESS, detail=r.detail())


def test_the_newest_recorded_consent_decides() -> None:
    store = ConsentStore(clock=lambda: NOW)
    assert store.effect_for("p:1") is None  # nothing recorded: the catalog's fact stands
    assert store.apply_event(changed(record("b", NOW - 10, provision="permit")))
    assert store.effect_for("p:1") == "permit"
    assert store.apply_event(changed(record("a", NOW - 20)))  # older, arriving later
    assert store.effect_for("p:1") == "permit"
    assert store.apply_event(changed(record("c", NOW - 5)))
    assert store.effect_for("p:1") == "deny"
    assert [r.id for r in store.of_patient("p:1")] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("kwargs", "effect"),
    [
        ({"provision": "permit"}, "permit"),
        ({"provision": "permit", "status": "inactive"}, "deny"),  # withdrawn
        ({"provision": "permit", "status": "draft"}, "deny"),
        ({"provision": "permit", "end": NOW - 1}, "deny"),  # expired
        ({"provision": "permit", "start": NOW + 60}, "deny"),  # not yet
        ({"provision": "deny"}, "deny"),
    ],
)
def test_only_an_active_permit_in_its_period_permits(kwargs: dict[str, Any], effect: str) -> None:
    assert record("x", NOW - 1, **kwargs).effect(NOW) == effect


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"patient": "p:1"},
        {"patient": "p:1", "consent_id": "x", "status": "active"},
        record("x", NOW).detail() | {"status": "made-up"},
        record("x", NOW).detail() | {"provision": "maybe"},
        record("x", NOW).detail() | {"recorded_at": "soon"},
    ],
)
def test_malformed_consent_events_change_nothing(detail: dict[str, Any]) -> None:
    store = ConsentStore(clock=lambda: NOW)
    event = AuditEvent(kind=EventKind.CONSENT_CHANGED, outcome=Outcome.SUCCESS, detail=detail)
    assert store.apply_event(event) is False
    assert store.effect_for("p:1") is None
