"""Consent for external reading, recorded by the hospital's consent registry through FHIR R4.

    POST /fhir/Consent                   record a Consent (201, the stored resource, Location)
    GET  /fhir/Consent/{id}              one recorded Consent
    GET  /fhir/Consent?patient=<id>&facility=<facility>
                                         the patient's recorded Consents (a searchset Bundle)
    GET  /fhir/metadata                  the CapabilityStatement of these endpoints (public)

The caller is a service of the hospital (client credentials at its IdP), allowed by the policy
(action ``record_consent``: role ``consent_registry``, privileged at the Consent's organization).
The body is validated as a FHIR R4 Consent (``fhir.resources``' R4B models, whose Consent is
R4's), then for what this broker needs: ``status``; ``scope`` patient-privacy; a ``category``
:data:`EXTERNAL_READING`; ``patient.identifier.value`` (the hospital's patient id, as the PACS
holds it); ``organization`` naming the facility; ``provision.type`` permit or deny, and an
optional ``provision.period``.

Each accepted Consent becomes a ``consent.changed`` event, acknowledged by Kafka on the audit
topic (so the ledger holds it) and on the control topic (so every replica, one started later
too, applies it) before the answer. The patient appears only as the broker's keyed pseudonym:
the stored resource's ``patient`` is replaced by it.

What counts, per patient: the newest recorded Consent. Only an ``active`` permit inside its
period permits external reading; any other recorded Consent (deny, withdrawn, rejected, draft,
outside its period) denies. A patient with no recorded Consent keeps the hospital's catalog fact.
Errors are FHIR ``OperationOutcome`` bodies with the status of the broker's error.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.errors import BadRequest, Forbidden, NotFound, TeleradError
from broker.fhir.records import STATES, ConsentRecord
from broker.identity.dependencies import current_principal
from broker.identity.principal import Principal
from broker.policy import RequestContext
from broker.state import state_of

__all__ = ["EXTERNAL_READING", "FHIR_JSON", "ParsedConsent", "parse_consent", "router"]

FHIR_JSON = "application/fhir+json"
EXTERNAL_READING = (
    "https://telerad-broker.dev/fhir/CodeSystem/consent-category",
    "external-reading",
)
PRIVACY_SCOPE = ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
PSEUDONYM_SYSTEM = "urn:telerad:patient-pseudonym"
_FACILITY = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
_MAX_BODY = 64 * 1024

# FHIR clients learn these endpoints from the CapabilityStatement (GET /fhir/metadata), and their
# errors are OperationOutcomes: they are not part of the broker's OpenAPI document.
router = APIRouter(prefix="/fhir", tags=["fhir"], include_in_schema=False)


@dataclass(frozen=True)
class ParsedConsent:
    """What the broker takes from a valid Consent."""

    resource: dict[str, Any]
    patient_id: str
    facility: str
    status: str
    provision: str
    start: float | None
    end: float | None


def _has_coding(concepts: list[Any] | None, wanted: tuple[str, str]) -> bool:
    for concept in concepts or []:
        for coding in getattr(concept, "coding", None) or []:
            if (coding.system, coding.code) == wanted:
                return True
    return False


def _epoch(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    text = str(value)  # a partial date (YYYY or YYYY-MM)
    parts = [int(p) for p in text.split("-")[:3]] + [1, 1]
    return datetime(parts[0], parts[1], parts[2], tzinfo=UTC).timestamp()


def parse_consent(body: object) -> ParsedConsent:
    """Validate a FHIR R4 Consent and take what the broker needs; :class:`BadRequest` if not."""
    if not isinstance(body, dict) or body.get("resourceType") != "Consent":
        raise BadRequest("The body must be a FHIR Consent resource (resourceType Consent).")
    try:
        consent = Consent.model_validate(body)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'Consent'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise BadRequest(f"Not a valid FHIR R4 Consent: {where}") from None
    if consent.status not in STATES:
        raise BadRequest(f"Consent.status must be one of {', '.join(sorted(STATES))}.")
    if not _has_coding([consent.scope] if consent.scope else None, PRIVACY_SCOPE):
        raise BadRequest("Consent.scope must be patient-privacy (consentscope).")
    if not _has_coding(consent.category, EXTERNAL_READING):
        raise BadRequest(
            f"Consent.category must include {EXTERNAL_READING[0]}|{EXTERNAL_READING[1]}: "
            "this broker records consent to external reading only."
        )
    patient = consent.patient
    identifier = patient.identifier if patient else None
    patient_id = identifier.value if identifier else None
    if not patient_id or len(patient_id) > 64:
        raise BadRequest("Consent.patient.identifier.value must hold the patient's id (≤ 64).")
    facility = _facility_of(consent)
    provision = consent.provision
    if provision is None or provision.type not in ("permit", "deny"):
        raise BadRequest("Consent.provision.type must be permit or deny.")
    period = provision.period
    start, end = (_epoch(period.start), _epoch(period.end)) if period else (None, None)
    if start is not None and end is not None and end <= start:
        raise BadRequest("Consent.provision.period ends before it starts.")
    resource = json.loads(consent.model_dump_json(exclude_none=True))
    return ParsedConsent(resource, patient_id, facility, consent.status, provision.type, start, end)


def _facility_of(consent: Consent) -> str:
    for organization in consent.organization or []:
        if organization.reference and organization.reference.startswith("Organization/"):
            name = organization.reference.removeprefix("Organization/")
        elif organization.identifier and organization.identifier.value:
            name = organization.identifier.value
        else:
            continue
        if _FACILITY.match(name):
            return name
    raise BadRequest(
        "Consent.organization must name the facility (Organization/<facility> or an identifier)."
    )


def operation_outcome(status: int, code: str, text: str) -> JSONResponse:
    """A FHIR OperationOutcome error body."""
    return JSONResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        },
        status_code=status,
        media_type=FHIR_JSON,
    )


_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 413: "too-long"}


def _outcome_of(exc: TeleradError) -> JSONResponse:
    response = operation_outcome(
        exc.status_code, _ISSUE_CODES.get(exc.status_code, "exception"), exc.detail
    )
    if exc.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


async def _authorized(request: Request, facility: str, operation: str) -> Principal:
    state = state_of(request)
    principal = await current_principal(request)
    if principal.via != "bearer":
        raise Forbidden("Consent is recorded by the hospital's systems, with a service token.")
    decision = await state.enforcer.authorize(
        principal,
        "record_consent",
        [operation],
        None,
        RequestContext.of(request),
        resource={"facility": facility},
    )
    if not decision.allow:
        codes = tuple(r.code for r in decision.reasons)
        raise Forbidden("The policy does not allow this: " + ", ".join(codes), reasons=codes)
    return principal


def _pseudonymised(resource: dict[str, Any], pseudonym: str, consent_id: str) -> dict[str, Any]:
    out = dict(resource)
    out["id"] = consent_id
    out["patient"] = {"identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonym}}
    out["meta"] = {"lastUpdated": datetime.now(UTC).isoformat(timespec="seconds")}
    return out


@router.post("/Consent", status_code=201, summary="Record a patient's consent to external reading")
async def record_consent(request: Request) -> Response:
    state = state_of(request)
    try:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return operation_outcome(413, "too-long", "A Consent must be under 64 KiB.")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("The body is not JSON.") from None
        parsed = parse_consent(body)
        principal = await _authorized(request, parsed.facility, "record")
        pseudonym = state.facts.pseudonym(parsed.patient_id)
        consent_id = str(uuid.uuid4())
        record = ConsentRecord(
            id=consent_id,
            patient=pseudonym,
            facility=parsed.facility,
            status=parsed.status,
            provision=parsed.provision,
            start=parsed.start,
            end=parsed.end,
            recorded_at=time.time(),
            resource=_pseudonymised(parsed.resource, pseudonym, consent_id),
        )
        context = RequestContext.of(request)
        # durable first (audit + control topics), then applied here, then answered
        changed = AuditEvent(
            kind=EventKind.CONSENT_CHANGED,
            outcome=Outcome.SUCCESS,
            **context.actor(principal),
            action="record_consent",
            detail=record.detail(),
        )
        await state.audit.emit(changed)
    except TeleradError as exc:
        return _outcome_of(exc)
    state.consents.apply_event(changed)  # the event every replica applies, applied here too
    state.revocations.changed("consent_patient", pseudonym)  # decision windows end here at once
    return JSONResponse(
        record.resource,
        status_code=201,
        media_type=FHIR_JSON,
        headers={"Location": f"/fhir/Consent/{consent_id}"},
    )


@router.get("/Consent/{consent_id}", summary="One recorded Consent")
async def read_consent(request: Request, consent_id: str) -> Response:
    state = state_of(request)
    try:
        record = state.consents.get(consent_id) if _ID.match(consent_id) else None
        if record is None:
            await current_principal(request)  # who may not read may not learn what exists
            raise NotFound(f"No Consent {consent_id[:64]} is recorded.")
        await _authorized(request, record.facility, "view")
    except TeleradError as exc:
        return _outcome_of(exc)
    return JSONResponse(record.resource, media_type=FHIR_JSON)


@router.get("/Consent", summary="A patient's recorded Consents")
async def search_consent(
    request: Request, patient: str | None = None, facility: str | None = None
) -> Response:
    state = state_of(request)
    try:
        if not patient or len(patient) > 64:
            raise BadRequest("patient must be the patient's id (≤ 64 characters).")
        if not facility or not _FACILITY.match(facility):
            raise BadRequest("facility must name the facility the Consents were recorded for.")
        await _authorized(request, facility, "view")
    except TeleradError as exc:
        return _outcome_of(exc)
    records = [
        r
        for r in state.consents.of_patient(state.facts.pseudonym(patient))
        if r.facility == facility
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(records),
        "entry": [
            {"fullUrl": f"Consent/{r.id}", "resource": r.resource, "search": {"mode": "match"}}
            for r in records
        ],
    }
    return JSONResponse(bundle, media_type=FHIR_JSON)


CAPABILITIES: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "software": {"name": "telerad-broker"},
    "implementation": {"description": "Consent to external reading (teleradiology)"},
    "rest": [
        {
            "mode": "server",
            "security": {
                "service": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                "code": "OAuth",
                            }
                        ]
                    }
                ],
                "description": "A bearer token of the hospital's IdP (client credentials) whose "
                "subject the access policy allows action record_consent at the facility.",
            },
            "resource": [
                {
                    "type": "Consent",
                    "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}],
                    "searchParam": [
                        {"name": "patient", "type": "token", "documentation": "patient id"},
                        {"name": "facility", "type": "token", "documentation": "required"},
                    ],
                }
            ],
        }
    ],
}


@router.get("/metadata", summary="The CapabilityStatement of the FHIR endpoints")
async def metadata() -> Response:
    return JSONResponse(CAPABILITIES, media_type=FHIR_JSON)
