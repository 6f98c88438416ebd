"""Audit export formats: FHIR R4 AuditEvent (IHE BALP), DICOM PS3.15 audit messages, syslog.

Input is one audit event as a dict: the JSON form of :class:`broker.audit.events.AuditEvent`
(``event.model_dump(mode="json")``), optionally with its CloudEvents type (``ce_type``, e.g.
``org.telerad.decision.v1``) as a key or keyword. This module is stdlib only and never imports
the broker, so a stream consumer can use it on records it read from Kafka.

Events carry no patient identity (privacy by design) and nothing here invents one: the Patient
participant object that PS3.15 A.5.3.4/A.5.3.6 and the BALP Patient* profiles ask for is left
out, because the broker never knows the patient.

Mapping of event kinds
======================

FHIR ``type``/``subtype`` (R4 ``AuditEvent``) and DICOM ``EventID``/``EventTypeCode``
(PS3.15 A.5.3). ``DCM`` is ``http://dicom.nema.org/resources/ontology/DCM`` (codeSystemName
``DCM``); ``rest``/``read`` are ``audit-event-type#rest`` and ``restful-interaction#read`` (BALP
Read); ``AuthZ-Role`` is BALP's ``https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType``.

============== ========================= ====================== ===== ==========================
kind           FHIR type                 FHIR subtype           act.  DICOM EventID / TypeCode
============== ========================= ====================== ===== ==========================
login          DCM 110114 User Auth.     DCM 110122 Login       E     110114 / 110122 Login
login.failed   DCM 110114 User Auth.     DCM 110122 Login       E     110114 / 110122 Login
step_up        DCM 110114 User Auth.     DCM 110122 Login       E     110114 / 110122 Login
logout         DCM 110114 User Auth.     DCM 110123 Logout      E     110114 / 110123 Logout
token.rejected DCM 110113 Security Alert DCM 110126 Node Auth.  E     110113 / 110126
decision       DCM 110113 Security Alert AuthZ-Role (BALP)      E     110113 / 110132 Use of
                                                                      Restricted Function
break_glass    DCM 110113 Security Alert DCM 110127 Emergency   E     110113 / 110127
                                         Override Started
link.issued    DCM 110113 Security Alert DCM 110135 Object      E     110113 / 110135
                                         Security Attr. Changed
revoked        DCM 110113 Security Alert 110135 (a link) or     E     110113 / 110135 or 110137
                                         110137 User Security
                                         Attributes Changed
link.granted   DCM 110113 Security Alert AuthZ-Role (BALP)      E     110113 / 110132 (a redeem
                                                                      decision, for a window)
assignment.    DCM 110113 Security Alert DCM 110135             E     110113 / 110135
changed
policy.revised DCM 110113 Security Alert DCM 110129 Security    E     110113 / 110129
                                         Configuration
link.          rest (BALP Read)          read                   R     110104 DICOM Instances
transferred                                                           Transferred
link.redeemed  rest (BALP Read)          read                   R     view: 110103 DICOM
                                                                      Instances Accessed;
                                                                      download: 110106 Export
instance.      DCM 110104 DICOM          (none)                 C     110104 DICOM Instances
stored         Instances Transferred                                  Transferred (none)
integrity.     DCM 110113 Security Alert 99TELERAD integrity-   E     110113 / 99TELERAD
violation                                violation                    integrity-violation
============== ========================= ====================== ===== ==========================

* Security Alert (PS3.15 A.5.3.11) requires EventActionCode ``E``; FHIR uses the same action so
  both formats tell the same story. ``link.issued`` is an access grant (the study gets one more
  way in), not a read of the study, so it is *not* recorded as ``R``.
* ``decision`` follows BALP's AuthZ pattern (Security Alert + AuthZ subtype); DICOM has no
  authorization-decision code in DCID 403, so 110132 "Use of Restricted Function" is used there.
* ``revoked`` uses 110135 when a ``link_id`` is present (the link loses its access), otherwise
  110137 (a subject's sessions were revoked, e.g. by OIDC back-channel logout).
* ``link.transferred`` is one aggregate of the reads inside a decision window (one link, one
  series; ``detail`` carries the SOP Instance UIDs with their frame numbers, bytes, request
  counts and the first/last read): one FHIR BALP Read (``period`` = first..last read) and one
  DICOM "DICOM Instances Transferred" message (A.5.3.5: the broker as Source, 110153; the user
  as Destination, 110152). The instances are listed in the audit-record object's ``detail``
  entry, not as SOPClass elements: the broker relays bytes and does not know the SOP Class.
* ``instance.stored`` is a fingerprint recorded at ingest (``telerad integrity watch``): the
  PACS completed the storage of an instance (110104 "DICOM Instances Transferred", whose
  definition is "storage of DICOM instances has been completed"), EventActionCode ``C`` (the
  instance was created on the PACS, A.5.3.5). The PACS is the Destination participant (110152,
  UserID the source the watcher names, e.g. ``pacs``), the broker's watcher the observing
  Application; the sending modality is not known to the broker, so no Source participant is
  claimed. The fingerprint (file and frame SHA-256, SOP Instance UID, transfer syntax) is in the
  audit record's ``detail``. FHIR has no subtype for it (``subtype`` is left out).
* ``integrity.violation`` is a read through a link whose bytes did not match the instance's
  fingerprint (cut off), or that had no fingerprint to be checked with (refused, or served as
  the policy allows): a Security Alert (A.5.3.11). DCID 403 (Security Alert Type) has no code
  for a failed data integrity check, and is extensible, so the EventTypeCode is the private
  ``integrity-violation`` "Instance Integrity Violation" (coding scheme ``99TELERAD``, PS3.3
  8.2; FHIR system ``https://telerad-broker.dev/fhir/CodeSystem/audit-event-sub-type``). A
  cut-off or refusal is EventOutcomeIndicator ``8`` (serious failure: the transfer was
  terminated), an instance served unchecked ``0``; syslog severity 4 either way.
* ``link.redeemed`` uses the DICOM Data Export message (A.5.3.4) when the operation is
  ``download`` (data leaves the broker's security domain), DICOM Instances Accessed (A.5.3.6)
  otherwise. FHIR records both as a BALP RESTful read.

Outcome (FHIR ``outcome`` = DICOM ``EventOutcomeIndicator``)
============================================================

========= ============================================================================
outcome   code
========= ============================================================================
success   ``0`` success
allow     ``0`` success
deny      ``4`` minor failure: the policy refused; nothing went wrong
failure   ``4`` for authentication kinds (login, login.failed, step_up, logout,
          token.rejected): PS3.15 A.5.2's own example of ``4`` is an invalid password
          that may be retried; ``8`` serious failure (the action was terminated by an
          error) for any other kind
========= ============================================================================

Purpose of use
==============

v3-ActReason ``BTG`` (break the glass) for ``break_glass`` events and for any event carrying a
``purpose`` (the break-glass justification, see ``AuditEvent.purpose``); ``TREAT`` for the
other study-access kinds (decision, link.issued, link.redeemed); none for authentication and
security housekeeping events, whose purpose is not treatment. FHIR ``purposeOfEvent``; DICOM
``EventIdentification/PurposeOfUse`` (codeSystemName is the ActReason OID 2.16.840.1.113883.5.8).

Participants and objects
========================

FHIR agents follow BALP: the user (``v3-ParticipationType#IRCP``, ``who.identifier`` =
{system: issuer, value: subject}, ``requestor`` true, roles from the IdP as ``role``); the client
(``network`` = client_ip, type ``2`` IP or ``1`` name; ``who.display`` = User-Agent), since BALP
puts the network address on the client, not the user; and the broker (``who.display`` =
observer). DICOM ActiveParticipants: the user (UserID = subject, AlternativeUserID = issuer,
NetworkAccessPointID = client_ip, RoleIDCode = IdP roles with the issuer as codeSystemName), the
broker, and for Export the Media participant (110154) at the client's address. In Security
Alerts the user is a "performing person", so UserIsRequestor is false there (A.5.3.11).

The study is FHIR ``entity`` type ``audit-entity-type#2`` System Object, role ``object-role#3``
Report, ``what.identifier`` {type DCM 110180 "Study Instance UID", system ``urn:dicom:uid``,
value ``urn:oid:<uid>``}: this mirrors the DICOM study object (ParticipantObjectTypeCode 2,
TypeCodeRole 3, ParticipantObjectIDTypeCode 110180), since FHIR maps ParticipantObjectTypeCode
to ``entity.type`` and the ID type code to the identifier's type. A second entity/object is the
broker's own audit record (its event id; name = CloudEvents type) carrying the context as
``detail`` entries (``{type, valueString}``; DICOM ``ParticipantObjectDetail`` type + base64
value): kind, action, operations, decision_id, policy_revision, link_id, session_id, purpose,
user_agent and the event's ``detail`` dict as JSON. In DICOM Security Alerts every object also
gets the "Alert Description" detail A.5.3.11 requires.

Syslog (DICOM PS3.15 A.6/A.7, RFC 5424)
=======================================

Facility 10 (security/authorization), MSGID ``DICOM+RFC3881``. Severity ``5`` (notice) for
ordinary successes, ``4`` (warning) for denials, failures, token rejections, failed logins and
break-glass (A.7: "most messages should have the severity value of 5 ... 4 if appropriate").
Over TCP each message is octet-counted (RFC 6587 3.4.1 / RFC 5425 4.3); over UDP one message per
datagram (RFC 5426). Note A.6 asks for TLS (RFC 5425) on the wire; TLS is not done here.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TextIO

__all__ = [
    "FACILITY_AUTHPRIV",
    "KINDS",
    "SEVERITY_NOTICE",
    "SEVERITY_WARNING",
    "FileExporter",
    "SyslogSender",
    "octet_frame",
    "syslog_severity",
    "syslog_timestamp",
    "to_dicom_audit_message",
    "to_fhir_audit_event",
    "to_syslog",
]

FACILITY_AUTHPRIV: Final = 10
SEVERITY_WARNING: Final = 4
SEVERITY_NOTICE: Final = 5

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
BALP_AUTHZ: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_REASON_OID: Final = "2.16.840.1.113883.5.8"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
EXTRA_SECURITY_ROLE: Final = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
SECURITY_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
AUDIT_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
# PS3.3 8.2: private coding scheme designators start with "99".
LOCAL_CODE_SYSTEM: Final = "99TELERAD"
LOCAL_FHIR_SUBTYPES: Final = "https://telerad-broker.dev/fhir/CodeSystem/audit-event-sub-type"


@dataclass(frozen=True)
class _Code:
    code: str
    display: str
    system: str = DCM
    dicom_system: str = "DCM"  # the DICOM codeSystemName

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self) -> dict[str, Any]:
        return {"coding": [self.coding()]}

    def dicom(self) -> dict[str, str]:
        return {
            "csd-code": self.code,
            "codeSystemName": self.dicom_system,
            "originalText": self.display,
        }


# DCM codes (PS3.16 CID 400-404, as listed in FHIR's audit-event-type/sub-type value sets).
_USER_AUTHENTICATION = _Code("110114", "User Authentication")
_LOGIN = _Code("110122", "Login")
_LOGOUT = _Code("110123", "Logout")
_SECURITY_ALERT = _Code("110113", "Security Alert")
_NODE_AUTHENTICATION = _Code("110126", "Node Authentication")
_EMERGENCY_OVERRIDE = _Code("110127", "Emergency Override Started")
_RESTRICTED_FUNCTION = _Code("110132", "Use of Restricted Function")
_OBJECT_SECURITY_CHANGED = _Code("110135", "Object Security Attributes Changed")
_USER_SECURITY_CHANGED = _Code("110137", "User security Attributes Changed")
_SECURITY_CONFIGURATION = _Code("110129", "Security Configuration")
_INSTANCES_ACCESSED = _Code("110103", "DICOM Instances Accessed")
_EXPORT = _Code("110106", "Export")
_INSTANCES_TRANSFERRED = _Code("110104", "DICOM Instances Transferred")
_APPLICATION = _Code("110150", "Application")
_DESTINATION_ROLE = _Code("110152", "Destination Role ID")
_SOURCE_ROLE = _Code("110153", "Source Role ID")
_DESTINATION_MEDIA = _Code("110154", "Destination Media")
_STUDY_INSTANCE_UID = _Code("110180", "Study Instance UID")

_INTEGRITY_VIOLATION = _Code(
    "integrity-violation", "Instance Integrity Violation", LOCAL_FHIR_SUBTYPES, LOCAL_CODE_SYSTEM
)

_REST = _Code("rest", "Restful Operation", AUDIT_EVENT_TYPE)
_READ = _Code("read", "read", RESTFUL_INTERACTION)
_AUTHZ_ROLE = _Code("AuthZ-Role", "Authorization Decision using only Roles", BALP_AUTHZ)
_BTG = _Code("BTG", "break the glass", ACT_REASON, ACT_REASON_OID)
_TREAT = _Code("TREAT", "treatment", ACT_REASON, ACT_REASON_OID)
_IRCP = _Code("IRCP", "information recipient", PARTICIPATION_TYPE)
_AUTHSERVER = _Code("authserver", "authorization server", EXTRA_SECURITY_ROLE)
_APPLICATION_SERVER = _Code("4", "Application Server", SECURITY_SOURCE_TYPE)
_SYSTEM_OBJECT = _Code("2", "System Object", AUDIT_ENTITY_TYPE)
_REPORT = _Code("3", "Report", OBJECT_ROLE)
_AUDIT_RECORD_ID = _Code(
    "telerad-audit-event", "telerad-broker audit event ID", "", LOCAL_CODE_SYSTEM
)

_USER_AUTH_KINDS: Final = frozenset({"login", "login.failed", "step_up", "logout"})
_AUTH_KINDS: Final = _USER_AUTH_KINDS | {"token.rejected"}
_READ_KINDS: Final = frozenset({"link.redeemed", "link.transferred"})
_ACCESS_KINDS: Final = frozenset({"decision", "link.issued", "link.granted"}) | _READ_KINDS
_SECURITY_ALERT_KINDS: Final = frozenset(
    {
        "token.rejected",
        "decision",
        "break_glass",
        "link.issued",
        "link.granted",
        "revoked",
        "consent.changed",
        "assignment.changed",
        "policy.revised",
        "integrity.violation",
    }
)
KINDS: Final = _USER_AUTH_KINDS | _SECURITY_ALERT_KINDS | _READ_KINDS | {"instance.stored"}
_WARNING_KINDS: Final = frozenset(
    {"login.failed", "token.rejected", "break_glass", "integrity.violation"}
)

_ALERT_DESCRIPTIONS: Final = {
    "token.rejected": "Bearer access token rejected",
    "decision": "Access control decision",
    "break_glass": "Emergency access (break-glass) override",
    "link.issued": "Study access link issued",
    "revoked": "Access revoked",
    "consent.changed": "Patient consent to external reading changed",
    "assignment.changed": "Study worklist assignments changed",
    "policy.revised": "Access policy revision changed",
    "link.granted": "Study access granted for a decision window",
    "integrity.violation": "Instance failed its integrity check against its fingerprint",
}

_CE_TYPE = re.compile(r"org\.telerad\.(?P<kind>[a-z_.]+)\.v[0-9]+")
# Characters XML 1.0 allows; FHIR strings allow the same (no C0 controls but tab, CR, LF).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _clean(value: str) -> str:
    """The string with characters neither XML nor FHIR may carry replaced by U+FFFD."""
    return _NOT_XML_CHAR.sub("\ufffd", value)


def _iso_time(value: object) -> str:
    """An ISO 8601 UTC instant with seconds (FHIR ``instant``, ``xsd:dateTime``, RFC 5424)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"event time is not ISO 8601: {value[:40]!r}") from None
    else:
        raise ValueError("event time is missing")
    if moment.tzinfo is None:
        raise ValueError("event time has no time zone")
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True)
class _Event:
    """The parts of an audit event the formats use, checked and cleaned."""

    id: str
    kind: str
    ce_type: str
    time: str
    outcome: str
    subject: str | None
    issuer: str | None
    roles: tuple[str, ...]
    action: str | None
    study_uid: str | None
    operations: tuple[str, ...]
    reasons: tuple[str, ...]
    decision_id: str | None
    policy_revision: str | None
    client_ip: str | None
    user_agent: str | None
    purpose: str | None
    session_id: str | None
    link_id: str | None
    detail: str | None  # JSON
    period: tuple[str, str] | None = None  # link.transferred: first and last read

    @classmethod
    def parse(cls, event: Mapping[str, Any], ce_type: str | None) -> _Event:
        def text(key: str) -> str | None:
            value = event.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise ValueError(f"event {key} is not a string")
            return _clean(value)

        def texts(key: str) -> tuple[str, ...]:
            value = event.get(key) or []
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"event {key} is not a list of strings")
            return tuple(_clean(v) for v in value if v)

        kind = text("kind")
        ce = ce_type or text("ce_type")
        if ce is not None:
            match = _CE_TYPE.fullmatch(ce)
            if match is None:
                raise ValueError(f"not a telerad CloudEvents type: {ce[:80]!r}")
            if kind is None:
                kind = match["kind"]
            elif kind != match["kind"]:
                raise ValueError(f"kind {kind!r} does not match ce_type {ce!r}")
        if kind not in KINDS:
            raise ValueError(f"unknown audit event kind {kind!r}")
        event_id = text("id")
        if event_id is None:
            raise ValueError("event id is missing")
        outcome = text("outcome")
        if outcome not in ("success", "failure", "allow", "deny"):
            raise ValueError(f"unknown audit event outcome {outcome!r}")
        detail = event.get("detail") or {}
        if not isinstance(detail, Mapping):
            raise ValueError("event detail is not an object")
        return cls(
            id=event_id,
            kind=kind,
            ce_type=ce or f"org.telerad.{kind}.v1",
            time=_iso_time(event.get("time")),
            outcome=outcome,
            subject=text("subject"),
            issuer=text("issuer"),
            roles=texts("roles"),
            action=text("action"),
            study_uid=text("study_uid"),
            operations=texts("operations"),
            reasons=texts("reasons"),
            decision_id=text("decision_id"),
            policy_revision=text("policy_revision"),
            client_ip=text("client_ip"),
            user_agent=text("user_agent"),
            purpose=text("purpose"),
            session_id=text("session_id"),
            link_id=text("link_id"),
            detail=_clean(json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str))
            if detail
            else None,
            period=(_iso_time(detail.get("first")), _iso_time(detail.get("last")))
            if kind == "link.transferred"
            else None,
        )

    @property
    def is_export(self) -> bool:
        return self.kind == "link.redeemed" and "download" in self.operations

    @property
    def is_security_alert(self) -> bool:
        return self.kind in _SECURITY_ALERT_KINDS

    def outcome_code(self) -> str:
        if self.outcome in ("success", "allow"):
            return "0"
        if self.kind == "integrity.violation":
            return "8"  # the transfer was terminated
        if self.outcome == "deny" or self.kind in _AUTH_KINDS:
            return "4"
        return "8"

    def purpose_code(self) -> _Code | None:
        if self.kind == "break_glass" or self.purpose:
            return _BTG
        if self.kind in _ACCESS_KINDS:
            return _TREAT
        return None

    def context(self) -> list[tuple[str, str]]:
        """(type, value) pairs for the audit-record entity/object, in a fixed order."""
        pairs: list[tuple[str, str | None]] = [
            ("kind", self.kind),
            ("action", self.action),
            ("operations", ",".join(self.operations) or None),
            ("decision_id", self.decision_id),
            ("policy_revision", self.policy_revision),
            ("link_id", self.link_id),
            ("session_id", self.session_id),
            ("issuer", self.issuer if self.subject is None else None),
            ("purpose", self.purpose),
            ("user_agent", self.user_agent),
            ("detail", self.detail),
        ]
        return [(key, value) for key, value in pairs if value is not None]


def _fhir_codes(event: _Event) -> tuple[_Code, _Code | None, str]:
    """FHIR (type, subtype, action) of an event; see the table in the module docstring."""
    kind = event.kind
    if kind == "instance.stored":
        return _INSTANCES_TRANSFERRED, None, "C"
    if kind in ("login", "login.failed", "step_up"):
        return _USER_AUTHENTICATION, _LOGIN, "E"
    if kind == "logout":
        return _USER_AUTHENTICATION, _LOGOUT, "E"
    if kind in _READ_KINDS:
        return _REST, _READ, "R"
    subtypes = {
        "token.rejected": _NODE_AUTHENTICATION,
        "decision": _AUTHZ_ROLE,
        "break_glass": _EMERGENCY_OVERRIDE,
        "link.issued": _OBJECT_SECURITY_CHANGED,
        "consent.changed": _OBJECT_SECURITY_CHANGED,  # the study's access attributes changed
        "assignment.changed": _OBJECT_SECURITY_CHANGED,
        "policy.revised": _SECURITY_CONFIGURATION,
        "link.granted": _AUTHZ_ROLE,  # the redeem decision, granted for a window
        "integrity.violation": _INTEGRITY_VIOLATION,
    }
    subtype = subtypes.get(kind) or (
        _OBJECT_SECURITY_CHANGED if event.link_id else _USER_SECURITY_CHANGED
    )
    return _SECURITY_ALERT, subtype, "E"


def _dicom_codes(event: _Event) -> tuple[_Code, list[_Code], str]:
    """DICOM (EventID, EventTypeCodes, EventActionCode); see the module docstring."""
    if event.kind == "link.transferred":
        return _INSTANCES_TRANSFERRED, [], "R"
    if event.kind == "link.redeemed":
        return (_EXPORT if event.is_export else _INSTANCES_ACCESSED), [], "R"
    event_type, subtype, action = _fhir_codes(event)
    if subtype is _AUTHZ_ROLE:
        subtype = _RESTRICTED_FUNCTION  # DCID 403 has no authorization-decision code
    return event_type, [subtype] if subtype is not None else [], action


def _network_type(address: str) -> str:
    """``2`` for an IP address, ``1`` for a machine name (FHIR network-type, RFC 3881)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def to_fhir_audit_event(
    event: Mapping[str, Any], *, observer: str = "telerad-broker", ce_type: str | None = None
) -> dict[str, Any]:
    """The FHIR R4 ``AuditEvent`` resource (IHE BALP patterns) for one broker audit event.

    ``observer`` names the recording system (``source.observer`` and the broker agent).
    ``ce_type`` is the CloudEvents type, used when the event has no ``kind`` and otherwise
    checked against it. Raises :class:`ValueError` for a malformed event.
    """
    ev = _Event.parse(event, ce_type)
    event_type, subtype, action = _fhir_codes(ev)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": ev.id if _FHIR_ID.fullmatch(ev.id) else str(uuid.uuid5(uuid.NAMESPACE_URL, ev.id)),
        "type": event_type.coding(),
        "action": action,
        "recorded": ev.time,
        "outcome": ev.outcome_code(),
    }
    if subtype is not None:
        resource["subtype"] = [subtype.coding()]
    if ev.period is not None:
        resource["period"] = {"start": ev.period[0], "end": ev.period[1]}
    if ev.reasons:
        resource["outcomeDesc"] = ", ".join(ev.reasons)
    purpose = ev.purpose_code()
    if purpose is not None:
        resource["purposeOfEvent"] = [purpose.concept()]

    agents: list[dict[str, Any]] = []
    if ev.subject is not None:
        who: dict[str, Any] = {"value": ev.subject}
        if ev.issuer is not None:
            who = {"system": ev.issuer, "value": ev.subject}
        user: dict[str, Any] = {
            "type": _IRCP.concept(),
            "who": {"identifier": who},
            "requestor": True,
        }
        if ev.roles:
            user["role"] = [_role_concept(role, ev.issuer) for role in ev.roles]
        agents.append(user)
    if ev.client_ip is not None or ev.user_agent is not None:
        client_type = _DESTINATION_ROLE if ev.kind in _READ_KINDS else _APPLICATION
        client: dict[str, Any] = {"type": client_type.concept()}
        if ev.user_agent is not None:
            client["who"] = {"display": ev.user_agent}
        client["requestor"] = ev.subject is None
        if ev.client_ip is not None:
            client["network"] = {"address": ev.client_ip, "type": _network_type(ev.client_ip)}
        agents.append(client)
    if ev.kind in _READ_KINDS:
        broker_type = _SOURCE_ROLE
    elif ev.kind in ("decision", "break_glass", "link.granted"):
        broker_type = _AUTHSERVER
    else:
        broker_type = _APPLICATION
    agents.append({"type": broker_type.concept(), "who": {"display": observer}, "requestor": False})
    resource["agent"] = agents
    resource["source"] = {"observer": {"display": observer}, "type": [_APPLICATION_SERVER.coding()]}

    entities: list[dict[str, Any]] = []
    if ev.study_uid is not None:
        entities.append(
            {
                "what": {
                    "type": "ImagingStudy",
                    "identifier": {
                        "type": _STUDY_INSTANCE_UID.concept(),
                        "system": DICOM_UID_SYSTEM,
                        "value": f"urn:oid:{ev.study_uid}",
                    },
                },
                "type": _SYSTEM_OBJECT.coding(),
                "role": _REPORT.coding(),
            }
        )
    record: dict[str, Any] = {
        "what": {
            "identifier": {"type": {"text": _AUDIT_RECORD_ID.display}, "value": ev.id},
        },
        "type": _SYSTEM_OBJECT.coding(),
        "name": ev.ce_type,
        "detail": [{"type": key, "valueString": value} for key, value in ev.context()],
    }
    entities.append(record)
    resource["entity"] = entities
    return resource


def _role_concept(role: str, issuer: str | None) -> dict[str, Any]:
    """An IdP role as a CodeableConcept; the issuer is the namespace its role names live in."""
    if issuer is None:
        return {"text": role}
    return {"coding": [{"system": issuer, "code": role}], "text": role}


def _coded(parent: ET.Element, tag: str, code: _Code) -> ET.Element:
    return ET.SubElement(parent, tag, code.dicom())


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
    ET.SubElement(parent, "ParticipantObjectDetail", {"type": kind, "value": encoded})


def to_dicom_audit_message(
    event: Mapping[str, Any], *, observer: str = "telerad-broker", ce_type: str | None = None
) -> str:
    """The DICOM PS3.15 A.5 ``AuditMessage`` XML for one broker audit event, on one line.

    Element and attribute names follow the DICOM Audit Message Schema (A.5.1); every value is
    escaped by ElementTree, characters XML cannot carry are replaced by U+FFFD, and line breaks
    inside values are written as character references so that the message stays one line.
    Raises :class:`ValueError` for a malformed event.
    """
    ev = _Event.parse(event, ce_type)
    event_id, event_types, action = _dicom_codes(ev)
    alert = ev.is_security_alert
    root = ET.Element("AuditMessage")

    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": ev.time,
            "EventOutcomeIndicator": ev.outcome_code(),
        },
    )
    _coded(identification, "EventID", event_id)
    for event_type in event_types:
        _coded(identification, "EventTypeCode", event_type)
    if ev.reasons:
        ET.SubElement(identification, "EventOutcomeDescription").text = ", ".join(ev.reasons)
    purpose = ev.purpose_code()
    if purpose is not None:
        _coded(identification, "PurposeOfUse", purpose)

    if ev.subject is not None or ev.client_ip is not None or ev.kind in _USER_AUTH_KINDS:
        user_attrs = {"UserID": ev.subject or "unknown"}
        if ev.issuer is not None:
            user_attrs["AlternativeUserID"] = ev.issuer
        # A.5.3.11: performing persons in a Security Alert are not the requestor.
        user_attrs["UserIsRequestor"] = "false" if alert else "true"
        if ev.client_ip is not None:
            user_attrs["NetworkAccessPointID"] = ev.client_ip
            user_attrs["NetworkAccessPointTypeCode"] = _network_type(ev.client_ip)
        user = ET.SubElement(root, "ActiveParticipant", user_attrs)
        if ev.is_export or ev.kind == "link.transferred":
            _coded(user, "RoleIDCode", _DESTINATION_ROLE)
        role_system = ev.issuer or observer
        for role in ev.roles:
            _coded(user, "RoleIDCode", _Code(role, role, "", role_system))
    broker = ET.SubElement(
        root, "ActiveParticipant", {"UserID": observer, "UserIsRequestor": "false"}
    )
    transfer = ev.kind == "link.transferred"  # A.5.3.5: the broker sends, the user receives
    _coded(broker, "RoleIDCode", _SOURCE_ROLE if ev.is_export or transfer else _APPLICATION)
    if ev.kind == "instance.stored":  # A.5.3.5: the PACS stored it (the Destination)
        pacs = ET.SubElement(
            root, "ActiveParticipant", {"UserID": _stored_on(ev), "UserIsRequestor": "false"}
        )
        _coded(pacs, "RoleIDCode", _DESTINATION_ROLE)
    if ev.is_export:  # A.5.3.4 Media (1): a network destination, so its address
        media_attrs = {"UserID": ev.client_ip or "unknown", "UserIsRequestor": "false"}
        if ev.client_ip is not None:
            media_attrs["NetworkAccessPointID"] = ev.client_ip
            media_attrs["NetworkAccessPointTypeCode"] = _network_type(ev.client_ip)
        media = ET.SubElement(root, "ActiveParticipant", media_attrs)
        _coded(media, "RoleIDCode", _DESTINATION_MEDIA)

    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": observer})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    alert_text = None
    if alert:
        alert_text = _ALERT_DESCRIPTIONS[ev.kind] + f"; outcome {ev.outcome}"
        if ev.reasons:
            alert_text += f"; reasons {', '.join(ev.reasons)}"
    if ev.study_uid is not None:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": ev.study_uid,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report (A.5.3.6: a study)
            },
        )
        _coded(study, "ParticipantObjectIDTypeCode", _STUDY_INSTANCE_UID)
        # The schema wants a name or a query; the UID is the only non-identifying name there is.
        ET.SubElement(study, "ParticipantObjectName").text = ev.study_uid
        if alert_text is not None:
            _detail(study, "Alert Description", alert_text)
    record = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": ev.id, "ParticipantObjectTypeCode": "2"},
    )
    _coded(record, "ParticipantObjectIDTypeCode", _AUDIT_RECORD_ID)
    ET.SubElement(record, "ParticipantObjectName").text = ev.ce_type
    for key, value in ev.context():
        _detail(record, key, value)
    if alert_text is not None:
        _detail(record, "Alert Description", alert_text)

    xml = ET.tostring(root, encoding="unicode")
    # Raw line breaks can only be in text nodes (attributes are already escaped).
    return xml.replace("\r", "&#13;").replace("\n", "&#10;")


def _stored_on(ev: _Event) -> str:
    """The PACS an ``instance.stored`` fingerprint names (``source`` ``pacs#<seq>``)."""
    try:
        source = json.loads(ev.detail or "{}").get("fingerprint", {}).get("source")
    except (ValueError, AttributeError):
        source = None
    return str(source).split("#", 1)[0] if isinstance(source, str) and source else "unknown"


def syslog_severity(event: Mapping[str, Any], *, ce_type: str | None = None) -> int:
    """RFC 5424 severity for an event: 4 (warning) for denials, failures, token rejections,
    failed logins and break-glass; 5 (notice) otherwise (DICOM PS3.15 A.7)."""
    ev = _Event.parse(event, ce_type)
    if ev.outcome in ("deny", "failure") or ev.kind in _WARNING_KINDS:
        return SEVERITY_WARNING
    return SEVERITY_NOTICE


def syslog_timestamp(value: str | datetime | None = None) -> str:
    """An RFC 5424 TIMESTAMP (UTC, ``Z``, at most 6 fractional digits); now if ``value`` is None."""
    return _iso_time(datetime.now(UTC) if value is None else value)


_RFC5424_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})"
)
_PRINTUSASCII = re.compile(r"[!-~]+")
_BOM: Final = b"\xef\xbb\xbf"


def _header_field(name: str, value: str, limit: int) -> str:
    if value == "-":
        return value
    if not (_PRINTUSASCII.fullmatch(value) and len(value) <= limit):
        raise ValueError(f"syslog {name} must be 1-{limit} printable US-ASCII characters")
    return value


def to_syslog(
    message: str,
    *,
    hostname: str,
    app_name: str = "telerad-broker",
    msgid: str = "DICOM+RFC3881",
    severity: int = SEVERITY_NOTICE,
    facility: int = FACILITY_AUTHPRIV,
    timestamp: str,
    procid: str = "-",
) -> bytes:
    """One RFC 5424 syslog message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``.

    PRI is ``facility * 8 + severity``; there is no structured data (``-``); MSG is the UTF-8
    message after a BOM (RFC 5424 6.4). Header fields are checked against the RFC's grammar
    (``-`` is the nil value); a bad field raises :class:`ValueError`.
    """
    if not 0 <= facility <= 23:
        raise ValueError("syslog facility must be 0-23")
    if not 0 <= severity <= 7:
        raise ValueError("syslog severity must be 0-7")
    if timestamp != "-" and not _RFC5424_TIMESTAMP.fullmatch(timestamp):
        raise ValueError(f"not an RFC 5424 TIMESTAMP: {timestamp[:40]!r}")
    header = " ".join(
        (
            f"<{facility * 8 + severity}>1",
            timestamp,
            _header_field("HOSTNAME", hostname, 255),
            _header_field("APP-NAME", app_name, 48),
            _header_field("PROCID", procid, 128),
            _header_field("MSGID", msgid, 32),
            "-",
        )
    )
    return header.encode("ascii") + b" " + _BOM + message.encode("utf-8")


def octet_frame(line: bytes) -> bytes:
    """The octet-counting frame of one syslog message for a stream transport: ``LEN SP MSG``
    (RFC 6587 3.4.1, RFC 5425 4.3)."""
    if not line:
        raise ValueError("an empty syslog message cannot be framed")
    return str(len(line)).encode("ascii") + b" " + line


class SyslogSender:
    """Sends RFC 5424 messages to a collector: one datagram each over UDP (RFC 5426),
    octet-counted frames over TCP (RFC 6587), or the same frames over TLS (RFC 5425, the
    collector's certificate and host name verified with ``ssl_context``). Connects on first use
    and, after a stream error, again on the next send; errors are raised, never swallowed.
    Thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        protocol: Literal["udp", "tcp", "tls"] = "udp",
        *,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` (``tls`` only): how the collector is verified; by default the
        system's trust store with host-name checking (``ssl.create_default_context()``)."""
        if protocol not in ("udp", "tcp", "tls"):
            raise ValueError("protocol must be 'udp', 'tcp' or 'tls'")
        if ssl_context is not None and protocol != "tls":
            raise ValueError("ssl_context is for protocol 'tls' only")
        if ssl_context is not None and (
            ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname
        ):
            # RFC 5425 5.2: the client MUST authenticate the server; no unverified collector
            raise ValueError("a syslog TLS context must verify the certificate and host name")
        self.host = host
        self.port = port
        self.protocol = protocol
        self.timeout = timeout
        self._context = (ssl_context or ssl.create_default_context()) if protocol == "tls" else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        if self.protocol in ("tcp", "tls"):
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self._context is None:
                return sock
            try:  # the handshake happens here: an untrusted collector is refused before a byte
                return self._context.wrap_socket(sock, server_hostname=self.host)
            except OSError:
                sock.close()
                raise
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(self.timeout)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def send(self, line: bytes) -> None:
        """Send one syslog message (as made by :func:`to_syslog`); framed here for TCP and TLS
        (RFC 5425 4.3: ``MSG-LEN SP SYSLOG-MSG``)."""
        stream = self.protocol in ("tcp", "tls")
        payload = octet_frame(line) if stream else line
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            try:
                if stream:
                    self._sock.sendall(payload)
                elif self._sock.send(payload) != len(payload):
                    raise OSError("syslog datagram was truncated")
            except OSError:
                self._sock.close()
                self._sock = None
                raise

    def close(self) -> None:
        """Close the connection (idempotent); over TLS with a close_notify first (RFC 5425 4.4)."""
        with self._lock:
            if self._sock is not None:
                if isinstance(self._sock, ssl.SSLSocket):
                    with contextlib.suppress(OSError, ValueError):  # the peer may be gone
                        self._sock = self._sock.unwrap()
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileExporter:
    """Appends audit records to a file, one per line: a FHIR resource (dict) as compact JSON,
    or a DICOM audit message (str) as is. :meth:`flush` makes the lines durable (fsync).
    Thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # backslashreplace: a stray lone surrogate in a caller's dict must not lose the line.
        self._file: TextIO = self.path.open(
            "a", encoding="utf-8", errors="backslashreplace", newline="\n"
        )
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any] | str) -> None:
        """Append one record as one line (not yet durable: see :meth:`flush`)."""
        if isinstance(record, str):
            if "\n" in record or "\r" in record:
                raise ValueError("a record must be one line")
            line = record
        else:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")

    def flush(self) -> None:
        """Write buffered lines out and fsync them to disk."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        if self._file.closed:
            return
        self.flush()
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
