"""The input the broker builds matches the policy's input schema (no drift between them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from broker.dicomweb.facts import StudyFacts
from broker.identity.principal import Principal
from broker.policy import PolicyEnforcer, RequestContext

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "policies" / "schemas" / "input.schema.json").read_text()
)
ADA = Principal(
    id="npi:1000000001",
    issuer="https://idp.test/realms/hospital-a",
    subject="u-1",
    roles=("radiologist",),
    licenses=("US-CA",),
    acr="2",
    amr=("pwd", "otp"),
    auth_time=1_700_000_000,
    group="northstar-reading",
)
FACTS = StudyFacts(
    study_uid="1.2.3.4",
    facility="st-olaf",
    labels=("vip",),
    modalities=("CT",),
    patient_ref="p:abc",
    consent="permit",
)


@pytest.mark.parametrize("break_glass", [None, "Stroke alert: attending unreachable, CT now"])
@pytest.mark.parametrize("action", ["issue_link", "redeem", "search"])
def test_built_input_validates(action: str, break_glass: str | None) -> None:
    document = PolicyEnforcer.build_input(
        ADA,
        action,
        ["view", "download"],
        FACTS,
        RequestContext("10.0.0.1", "ua", 1_700_000_100.5),
        break_glass,
    )
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(document)]
    assert errors == []
    assert document["context"]["now"] == 1_700_000_100
    assert document["operations"] == ["download", "view"]


def test_unknown_consent_is_left_out_so_the_policy_denies() -> None:
    facts = StudyFacts(study_uid="1.2.3.4", facility="st-olaf", consent=None)
    document = PolicyEnforcer.build_input(
        ADA, "issue_link", ["view"], facts, RequestContext("10.0.0.1", None, 0)
    )
    assert "consent" not in document["context"]


def test_the_studys_assignment_is_in_the_input_and_validates() -> None:
    assignment = {
        "status": "assigned",
        "readers": ["npi:1000000001"],
        "facility": "st-olaf",
        "priority": "stat",
        "assigning_system": "ris-st-olaf",
    }
    document = PolicyEnforcer.build_input(
        ADA,
        "issue_link",
        ["view"],
        FACTS,
        RequestContext("10.0.0.1", None, 0),
        assignment=assignment,
    )
    assert document["resource"]["assignment"] == assignment
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(document)]
    assert errors == []


def test_no_assignment_is_null() -> None:
    document = PolicyEnforcer.build_input(
        ADA, "issue_link", ["view"], FACTS, RequestContext("10.0.0.1", None, 0)
    )
    assert document["resource"]["assignment"] is None


def test_the_enforcer_keeps_the_worklist_it_was_given_even_while_empty() -> None:
    from broker.worklist import WorklistState

    worklist = WorklistState()  # empty at start, filled by the listener later
    enforcer = PolicyEnforcer(None, None, None, worklist)  # type: ignore[arg-type]
    assert enforcer._worklist is worklist
