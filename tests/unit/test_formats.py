"""Audit export formats: FHIR AuditEvent, DICOM audit message XML, RFC 5424 syslog, transports."""

from __future__ import annotations

import base64
import json
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.audit.events import AuditEvent, EventKind, Outcome
from streams.formats import (
    FileExporter,
    SyslogSender,
    octet_frame,
    syslog_severity,
    syslog_timestamp,
    to_dicom_audit_message,
    to_fhir_audit_event,
    to_syslog,
)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
STUDY = "1.2.826.0.1.3680043.8.498.12345"
ISSUER = "https://idp.example.org/realms/telerad"
SUBJECT = "npi:1000000001"
WHEN = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)


def event(kind: EventKind, outcome: Outcome, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subject": SUBJECT,
        "issuer": ISSUER,
        "roles": ["radiologist"],
        "client_ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (Viewer)",
        "time": WHEN,
    }
    base.update(fields)
    return AuditEvent(kind=kind, outcome=outcome, **base).model_dump(mode="json")


def access(kind: EventKind, outcome: Outcome, **fields: Any) -> dict[str, Any]:
    return event(
        kind,
        outcome,
        study_uid=STUDY,
        decision_id="dec-42",
        policy_revision="rev-7",
        session_id="sess-1",
        **fields,
    )


def details(entity: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in entity.get("detail", [])}


def parse(xml: str) -> ET.Element:
    assert "\n" not in xml and "\r" not in xml
    return ET.fromstring(xml)


def object_details(obj: ET.Element) -> dict[str, str]:
    return {
        d.attrib["type"]: base64.b64decode(d.attrib["value"]).decode()
        for d in obj.findall("ParticipantObjectDetail")
    }


# ---------------------------------------------------------------- FHIR


@pytest.mark.parametrize(
    ("kind", "outcome", "extra", "type_", "subtype", "action", "code"),
    [
        (EventKind.LOGIN, Outcome.SUCCESS, {}, (DCM, "110114"), (DCM, "110122"), "E", "0"),
        (EventKind.LOGIN_FAILED, Outcome.FAILURE, {}, (DCM, "110114"), (DCM, "110122"), "E", "4"),
        (EventKind.STEP_UP, Outcome.SUCCESS, {}, (DCM, "110114"), (DCM, "110122"), "E", "0"),
        (EventKind.LOGOUT, Outcome.SUCCESS, {}, (DCM, "110114"), (DCM, "110123"), "E", "0"),
        (
            EventKind.TOKEN_REJECTED,
            Outcome.FAILURE,
            {"subject": None, "roles": []},
            (DCM, "110113"),
            (DCM, "110126"),
            "E",
            "4",
        ),
        (
            EventKind.DECISION,
            Outcome.DENY,
            {"study_uid": STUDY, "action": "redeem"},
            (DCM, "110113"),
            ("https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "AuthZ-Role"),
            "E",
            "4",
        ),
        (
            EventKind.BREAK_GLASS,
            Outcome.ALLOW,
            {"study_uid": STUDY, "purpose": "stroke alert"},
            (DCM, "110113"),
            (DCM, "110127"),
            "E",
            "0",
        ),
        (
            EventKind.LINK_ISSUED,
            Outcome.SUCCESS,
            {"study_uid": STUDY, "link_id": "L1"},
            (DCM, "110113"),
            (DCM, "110135"),
            "E",
            "0",
        ),
        (
            EventKind.REVOKED,
            Outcome.SUCCESS,
            {"link_id": "L1"},
            (DCM, "110113"),
            (DCM, "110135"),
            "E",
            "0",
        ),
        (EventKind.REVOKED, Outcome.SUCCESS, {}, (DCM, "110113"), (DCM, "110137"), "E", "0"),
        (
            EventKind.LINK_REDEEMED,
            Outcome.ALLOW,
            {"study_uid": STUDY, "operations": ["view"]},
            ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"),
            ("http://hl7.org/fhir/restful-interaction", "read"),
            "R",
            "0",
        ),
    ],
)
def test_fhir_type_action_outcome_per_kind(
    kind: EventKind,
    outcome: Outcome,
    extra: dict[str, Any],
    type_: tuple[str, str],
    subtype: tuple[str, str],
    action: str,
    code: str,
) -> None:
    resource = to_fhir_audit_event(event(kind, outcome, **extra))
    assert resource["resourceType"] == "AuditEvent"
    assert (resource["type"]["system"], resource["type"]["code"]) == type_
    assert [(s["system"], s["code"]) for s in resource["subtype"]] == [subtype]
    assert resource["action"] == action
    assert resource["outcome"] == code


def test_fhir_read_of_a_study() -> None:
    data = access(
        EventKind.LINK_REDEEMED,
        Outcome.ALLOW,
        action="redeem",
        operations=["view"],
        link_id="L1",
        detail={"link_subject": SUBJECT},
    )
    resource = to_fhir_audit_event(data, observer="broker-eu-1")

    assert resource["id"] == data["id"]
    assert resource["recorded"] == "2024-05-01T12:30:15.250000Z"
    assert "outcomeDesc" not in resource
    assert resource["purposeOfEvent"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    "code": "TREAT",
                    "display": "treatment",
                }
            ]
        }
    ]
    user, client, broker = resource["agent"]
    assert user["who"] == {"identifier": {"system": ISSUER, "value": SUBJECT}}
    assert user["requestor"] is True
    assert user["type"]["coding"][0]["code"] == "IRCP"
    assert user["role"] == [
        {"coding": [{"system": ISSUER, "code": "radiologist"}], "text": "radiologist"}
    ]
    assert "network" not in user  # BALP: users are not network devices
    assert client["network"] == {"address": "203.0.113.7", "type": "2"}
    assert client["who"] == {"display": "Mozilla/5.0 (Viewer)"}
    assert client["requestor"] is False
    assert client["type"]["coding"][0]["code"] == "110152"
    assert broker == {
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": "broker-eu-1"},
        "requestor": False,
    }
    assert resource["source"] == {
        "observer": {"display": "broker-eu-1"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    study, record = resource["entity"]
    assert study["what"]["identifier"] == {
        "type": {"coding": [{"system": DCM, "code": "110180", "display": "Study Instance UID"}]},
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{STUDY}",
    }
    assert study["type"]["code"] == "2" and study["role"]["code"] == "3"
    assert record["what"]["identifier"]["value"] == data["id"]
    assert record["name"] == "org.telerad.link.redeemed.v1"
    assert details(record) == {
        "kind": "link.redeemed",
        "action": "redeem",
        "operations": "view",
        "decision_id": "dec-42",
        "policy_revision": "rev-7",
        "link_id": "L1",
        "session_id": "sess-1",
        "user_agent": "Mozilla/5.0 (Viewer)",
        "detail": json.dumps({"link_subject": SUBJECT}, separators=(",", ":")),
    }


def test_fhir_break_glass_purpose_and_justification() -> None:
    data = access(EventKind.BREAK_GLASS, Outcome.ALLOW, purpose="stroke alert, CT head")
    resource = to_fhir_audit_event(data)
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert resource["agent"][-1]["type"]["coding"][0]["code"] == "authserver"
    assert details(resource["entity"][-1])["purpose"] == "stroke alert, CT head"


def test_fhir_decision_deny_carries_reasons_and_break_glass_request() -> None:
    data = access(
        EventKind.DECISION,
        Outcome.DENY,
        action="issue_link",
        operations=["download", "view"],
        reasons=["not_assigned", "outside_hours"],
        purpose="urgent",
    )
    resource = to_fhir_audit_event(data)
    assert resource["outcome"] == "4"
    assert resource["outcomeDesc"] == "not_assigned, outside_hours"
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert details(resource["entity"][-1])["operations"] == "download,view"


def test_fhir_token_rejected_has_no_user_and_keeps_the_issuer() -> None:
    data = event(
        EventKind.TOKEN_REJECTED, Outcome.FAILURE, subject=None, roles=[], reasons=["expired"]
    )
    resource = to_fhir_audit_event(data)
    client, broker = resource["agent"]
    assert client["requestor"] is True
    assert client["network"]["address"] == "203.0.113.7"
    assert broker["who"] == {"display": "telerad-broker"}
    assert "purposeOfEvent" not in resource
    assert [e.get("name") for e in resource["entity"]] == ["org.telerad.token.rejected.v1"]
    assert details(resource["entity"][0])["issuer"] == ISSUER


def test_fhir_login_has_no_study_and_no_purpose() -> None:
    data = event(EventKind.LOGIN, Outcome.SUCCESS, detail={"idp": "keycloak", "amr": ["pwd"]})
    resource = to_fhir_audit_event(data)
    assert len(resource["entity"]) == 1
    assert "purposeOfEvent" not in resource
    assert json.loads(details(resource["entity"][0])["detail"]) == {
        "amr": ["pwd"],
        "idp": "keycloak",
    }


def test_fhir_invents_no_patient_data() -> None:
    data = access(EventKind.LINK_REDEEMED, Outcome.ALLOW, operations=["download"])
    text = json.dumps(to_fhir_audit_event(data))
    assert "Patient" not in text and "patient" not in text
    for entity in to_fhir_audit_event(data)["entity"]:
        assert entity["type"]["code"] != "1"  # no Person entity


def test_fhir_outcome_failure_outside_authentication_is_serious() -> None:
    data = access(EventKind.LINK_ISSUED, Outcome.FAILURE)
    assert to_fhir_audit_event(data)["outcome"] == "8"


def test_kind_from_ce_type() -> None:
    data = event(EventKind.LOGOUT, Outcome.SUCCESS)
    del data["kind"]
    resource = to_fhir_audit_event(data, ce_type="org.telerad.logout.v1")
    assert resource["subtype"][0]["code"] == "110123"
    data["ce_type"] = "org.telerad.login.failed.v1"
    assert to_fhir_audit_event(data)["subtype"][0]["code"] == "110122"
    with pytest.raises(ValueError, match="does not match"):
        to_fhir_audit_event(
            event(EventKind.LOGIN, Outcome.SUCCESS), ce_type="org.telerad.logout.v1"
        )


@pytest.mark.parametrize(
    "broken",
    [
        {"kind": "teleport"},
        {"outcome": "maybe"},
        {"time": "yesterday"},
        {"time": "2024-05-01T12:00:00"},
        {"roles": "radiologist"},
        {"id": ""},
    ],
)
def test_malformed_events_are_refused(broken: dict[str, Any]) -> None:
    data = event(EventKind.LOGIN, Outcome.SUCCESS) | broken
    with pytest.raises(ValueError):
        to_fhir_audit_event(data)
    with pytest.raises(ValueError):
        to_dicom_audit_message(data)


def test_fhir_id_that_is_not_a_fhir_id_is_replaced_but_kept() -> None:
    data = event(EventKind.LOGIN, Outcome.SUCCESS) | {"id": "event_1/x"}
    resource = to_fhir_audit_event(data)
    assert resource["id"] != "event_1/x" and len(resource["id"]) == 36
    assert resource["entity"][-1]["what"]["identifier"]["value"] == "event_1/x"


# ---------------------------------------------------------------- DICOM


@pytest.mark.parametrize(
    ("data", "event_id", "type_codes", "action"),
    [
        (event(EventKind.LOGIN, Outcome.SUCCESS), "110114", ["110122"], "E"),
        (event(EventKind.LOGIN_FAILED, Outcome.FAILURE, subject=None), "110114", ["110122"], "E"),
        (event(EventKind.LOGOUT, Outcome.SUCCESS), "110114", ["110123"], "E"),
        (event(EventKind.TOKEN_REJECTED, Outcome.FAILURE, subject=None), "110113", ["110126"], "E"),
        (access(EventKind.DECISION, Outcome.ALLOW), "110113", ["110132"], "E"),
        (access(EventKind.BREAK_GLASS, Outcome.ALLOW, purpose="x"), "110113", ["110127"], "E"),
        (access(EventKind.LINK_ISSUED, Outcome.SUCCESS), "110113", ["110135"], "E"),
        (event(EventKind.REVOKED, Outcome.SUCCESS, link_id="L1"), "110113", ["110135"], "E"),
        (event(EventKind.REVOKED, Outcome.SUCCESS), "110113", ["110137"], "E"),
        (access(EventKind.LINK_REDEEMED, Outcome.ALLOW, operations=["view"]), "110103", [], "R"),
        (
            access(EventKind.LINK_REDEEMED, Outcome.ALLOW, operations=["download"]),
            "110106",
            [],
            "R",
        ),
    ],
)
def test_dicom_event_identification_per_kind(
    data: dict[str, Any], event_id: str, type_codes: list[str], action: str
) -> None:
    root = parse(to_dicom_audit_message(data))
    assert root.tag == "AuditMessage"
    identification = root.find("EventIdentification")
    assert identification is not None
    assert identification.attrib["EventActionCode"] == action
    assert identification.attrib["EventDateTime"] == "2024-05-01T12:30:15.250000Z"
    found = identification.find("EventID")
    assert found is not None
    assert found.attrib["csd-code"] == event_id
    assert found.attrib["codeSystemName"] == "DCM"
    assert found.attrib["originalText"]
    assert [t.attrib["csd-code"] for t in identification.findall("EventTypeCode")] == type_codes


def test_dicom_message_follows_the_schema_order() -> None:
    data = access(
        EventKind.DECISION, Outcome.DENY, reasons=["not_assigned"], purpose="stroke alert"
    )
    root = parse(to_dicom_audit_message(data))
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification"
    first_source = tags.index("AuditSourceIdentification")
    assert set(tags[1:first_source]) == {"ActiveParticipant"}
    assert tags.count("AuditSourceIdentification") == 1
    assert set(tags[first_source + 1 :]) == {"ParticipantObjectIdentification"}
    identification = root[0]
    assert [c.tag for c in identification] == [
        "EventID",
        "EventTypeCode",
        "EventOutcomeDescription",
        "PurposeOfUse",
    ]
    assert identification.attrib["EventOutcomeIndicator"] == "4"
    assert identification.findtext("EventOutcomeDescription") == "not_assigned"
    purpose = identification.find("PurposeOfUse")
    assert purpose is not None
    assert purpose.attrib == {
        "csd-code": "BTG",
        "codeSystemName": "2.16.840.1.113883.5.8",
        "originalText": "break the glass",
    }
    for obj in root.findall("ParticipantObjectIdentification"):
        children = [c.tag for c in obj]
        assert children[0] == "ParticipantObjectIDTypeCode"
        assert children[1] == "ParticipantObjectName"
        assert set(children[2:]) <= {"ParticipantObjectDetail"}
    source = root.find("AuditSourceIdentification")
    assert source is not None
    assert source.attrib == {"AuditSourceID": "telerad-broker"}
    type_code = source.find("AuditSourceTypeCode")
    assert type_code is not None and type_code.attrib == {"csd-code": "4"}


def test_dicom_study_access() -> None:
    data = access(
        EventKind.LINK_REDEEMED,
        Outcome.ALLOW,
        action="redeem",
        operations=["view"],
        link_id="L1",
    )
    root = parse(to_dicom_audit_message(data, observer="broker-eu-1"))
    user, broker = root.findall("ActiveParticipant")
    assert user.attrib == {
        "UserID": SUBJECT,
        "AlternativeUserID": ISSUER,
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "203.0.113.7",
        "NetworkAccessPointTypeCode": "2",
    }
    role = user.find("RoleIDCode")
    assert role is not None
    assert role.attrib == {
        "csd-code": "radiologist",
        "codeSystemName": ISSUER,
        "originalText": "radiologist",
    }
    assert broker.attrib == {"UserID": "broker-eu-1", "UserIsRequestor": "false"}
    study, record = root.findall("ParticipantObjectIdentification")
    assert study.attrib == {
        "ParticipantObjectID": STUDY,
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    id_type = study.find("ParticipantObjectIDTypeCode")
    assert id_type is not None
    assert id_type.attrib == {
        "csd-code": "110180",
        "codeSystemName": "DCM",
        "originalText": "Study Instance UID",
    }
    assert record.attrib["ParticipantObjectID"] == data["id"]
    assert record.findtext("ParticipantObjectName") == "org.telerad.link.redeemed.v1"
    found = object_details(record)
    assert found["decision_id"] == "dec-42"
    assert found["link_id"] == "L1"
    assert found["operations"] == "view"
    assert "Alert Description" not in found


def test_dicom_download_is_an_export_with_media() -> None:
    data = access(EventKind.LINK_REDEEMED, Outcome.ALLOW, operations=["download"])
    root = parse(to_dicom_audit_message(data))
    user, broker, media = root.findall("ActiveParticipant")
    assert [r.attrib["csd-code"] for r in user.findall("RoleIDCode")] == ["110152", "radiologist"]
    assert [r.attrib["csd-code"] for r in broker.findall("RoleIDCode")] == ["110153"]
    assert media.attrib["UserIsRequestor"] == "false"
    assert media.attrib["NetworkAccessPointID"] == "203.0.113.7"
    assert [r.attrib["csd-code"] for r in media.findall("RoleIDCode")] == ["110154"]


def test_dicom_security_alert_describes_the_alert() -> None:
    data = access(EventKind.BREAK_GLASS, Outcome.ALLOW, purpose="stroke alert")
    root = parse(to_dicom_audit_message(data))
    user = root.findall("ActiveParticipant")[0]
    assert user.attrib["UserIsRequestor"] == "false"  # PS3.15 A.5.3.11: performing person
    study, record = root.findall("ParticipantObjectIdentification")
    assert study.attrib["ParticipantObjectID"] == STUDY
    assert object_details(study)["Alert Description"].startswith("Emergency access (break-glass)")
    assert object_details(record)["purpose"] == "stroke alert"


def test_dicom_failed_login_without_a_user() -> None:
    data = event(EventKind.LOGIN_FAILED, Outcome.FAILURE, subject=None, issuer=None, roles=[])
    root = parse(to_dicom_audit_message(data))
    user = root.findall("ActiveParticipant")[0]
    assert user.attrib["UserID"] == "unknown"
    assert user.attrib["NetworkAccessPointID"] == "203.0.113.7"
    assert root[0].attrib["EventOutcomeIndicator"] == "4"


def test_dicom_escapes_hostile_values() -> None:
    hostile = '"><ParticipantObjectIdentification ParticipantObjectID="x"/>&\x00\x1b\ud800\n'
    data = access(EventKind.LINK_REDEEMED, Outcome.ALLOW, user_agent=hostile, reasons=["a\nb"])
    xml = to_dicom_audit_message(data)
    root = parse(xml)
    assert len(root.findall("ParticipantObjectIdentification")) == 2
    assert root[0].findtext("EventOutcomeDescription") == "a\nb"
    ua = object_details(root.findall("ParticipantObjectIdentification")[1])["user_agent"]
    assert ua == '"><ParticipantObjectIdentification ParticipantObjectID="x"/>&\ufffd\ufffd\ufffd\n'
    resource = to_fhir_audit_event(data)
    assert resource["agent"][1]["who"]["display"] == ua
    json.dumps(resource).encode("utf-8")


def test_dicom_has_no_patient_object() -> None:
    root = parse(to_dicom_audit_message(access(EventKind.LINK_REDEEMED, Outcome.ALLOW)))
    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.attrib.get("ParticipantObjectTypeCodeRole") != "1"
        assert obj.attrib.get("ParticipantObjectTypeCode") != "1"


# ---------------------------------------------------------------- syslog


def test_syslog_header_and_pri() -> None:
    line = to_syslog(
        "<AuditMessage/>",
        hostname="broker-1.example.org",
        severity=4,
        timestamp="2024-05-01T12:30:15.250000Z",
        procid="4711",
    )
    assert line == (
        b"<84>1 2024-05-01T12:30:15.250000Z broker-1.example.org telerad-broker 4711 "
        b"DICOM+RFC3881 - \xef\xbb\xbf<AuditMessage/>"
    )
    default = to_syslog("x", hostname="h", timestamp="-")
    assert default.startswith(b"<85>1 - h telerad-broker - DICOM+RFC3881 - ")


@pytest.mark.parametrize(("facility", "severity"), [(0, 0), (10, 5), (13, 2), (23, 7)])
def test_syslog_pri_is_facility_times_eight_plus_severity(facility: int, severity: int) -> None:
    line = to_syslog("m", hostname="h", timestamp="-", facility=facility, severity=severity)
    assert line.startswith(f"<{facility * 8 + severity}>1 ".encode())


def test_syslog_message_is_utf8_after_a_bom() -> None:
    line = to_syslog("Zürich ☢", hostname="h", timestamp="-")
    assert line.endswith(b"- \xef\xbb\xbf" + "Zürich ☢".encode())


@pytest.mark.parametrize(
    "bad",
    [
        {"hostname": "two words"},
        {"hostname": ""},
        {"app_name": "a" * 49},
        {"msgid": "m" * 33},
        {"timestamp": "2024-05-01 12:30:15Z"},
        {"timestamp": "2024-05-01T12:30:15.1234567Z"},
        {"severity": 8},
        {"facility": 24},
    ],
)
def test_syslog_refuses_bad_header_fields(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"hostname": "h", "timestamp": "-"} | bad
    with pytest.raises(ValueError):
        to_syslog("m", **fields)


def test_syslog_severity_per_event() -> None:
    assert syslog_severity(event(EventKind.LOGIN, Outcome.SUCCESS)) == 5
    assert syslog_severity(access(EventKind.LINK_REDEEMED, Outcome.ALLOW)) == 5
    assert syslog_severity(access(EventKind.DECISION, Outcome.DENY)) == 4
    assert syslog_severity(event(EventKind.LOGIN_FAILED, Outcome.FAILURE)) == 4
    assert syslog_severity(event(EventKind.TOKEN_REJECTED, Outcome.FAILURE)) == 4
    assert syslog_severity(access(EventKind.BREAK_GLASS, Outcome.ALLOW)) == 4


def test_syslog_timestamp() -> None:
    assert syslog_timestamp("2024-05-01T14:30:15+02:00") == "2024-05-01T12:30:15Z"
    assert syslog_timestamp(WHEN) == "2024-05-01T12:30:15.250000Z"
    to_syslog("m", hostname="h", timestamp=syslog_timestamp())


def test_octet_frame() -> None:
    assert octet_frame(b"<85>1 - h a - m - x") == b"19 <85>1 - h a - m - x"
    body = "ü".encode() * 3
    assert octet_frame(body) == b"6 " + body
    with pytest.raises(ValueError):
        octet_frame(b"")


def test_a_whole_dicom_message_as_syslog() -> None:
    data = access(EventKind.DECISION, Outcome.DENY)
    line = to_syslog(
        to_dicom_audit_message(data),
        hostname="broker",
        severity=syslog_severity(data),
        timestamp=syslog_timestamp(data["time"]),
    )
    header, _, msg = line.partition(b"\xef\xbb\xbf")
    assert header.startswith(b"<84>1 2024-05-01T12:30:15.250000Z broker ")
    assert parse(msg.decode()).tag == "AuditMessage"


# ---------------------------------------------------------------- transports


@pytest.fixture
def udp_server() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        yield server


def test_udp_sender_sends_one_datagram_per_message(udp_server: socket.socket) -> None:
    port = udp_server.getsockname()[1]
    first = to_syslog("<AuditMessage/>", hostname="h", timestamp="-")
    second = to_syslog("second", hostname="h", timestamp="-", severity=4)
    with SyslogSender("127.0.0.1", port) as sender:
        sender.send(first)
        sender.send(second)
    assert udp_server.recvfrom(65535)[0] == first
    assert udp_server.recvfrom(65535)[0] == second


class TcpCollector:
    """A local TCP syslog collector: accepts one connection and keeps every byte received."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.port: int = self.server.getsockname()[1]
        self.received = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            while chunk := conn.recv(4096):
                self.received += chunk

    def close(self) -> bytes:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        self.server.close()
        return bytes(self.received)


def test_tcp_sender_sends_octet_counted_frames() -> None:
    collector = TcpCollector()
    try:
        data = access(EventKind.LINK_REDEEMED, Outcome.ALLOW, operations=["download"])
        first = to_syslog(to_dicom_audit_message(data), hostname="h", timestamp="-")
        second = to_syslog("Zürich", hostname="h", timestamp="-")
        sender = SyslogSender("127.0.0.1", collector.port, protocol="tcp")
        sender.send(first)
        sender.send(second)
        sender.close()
        sender.close()
    finally:
        received = collector.close()
    assert received == octet_frame(first) + octet_frame(second)
    length, _, rest = received.partition(b" ")
    assert rest[: int(length)] == first


def test_tcp_sender_raises_when_nobody_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        SyslogSender("127.0.0.1", port, protocol="tcp", timeout=1) as sender,
        pytest.raises(OSError),
    ):
        sender.send(b"x")


def test_sender_rejects_unknown_protocol() -> None:
    with pytest.raises(ValueError):
        SyslogSender("127.0.0.1", 514, protocol="http")  # type: ignore[arg-type]


# ---------------------------------------------------------------- file


def test_file_exporter_writes_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    data = access(EventKind.LINK_REDEEMED, Outcome.ALLOW, user_agent="a\nb")
    resource = to_fhir_audit_event(data)
    xml = to_dicom_audit_message(data)
    with FileExporter(path) as exporter:
        exporter.write(resource)
        exporter.write(xml)
        exporter.flush()
        assert len(path.read_text(encoding="utf-8").splitlines()) == 2
        with pytest.raises(ValueError):
            exporter.write("<a>\n</a>")
    with FileExporter(path) as exporter:  # appends
        exporter.write({"resourceType": "AuditEvent", "id": "x"})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == resource
    assert parse(lines[1]).tag == "AuditMessage"
    assert json.loads(lines[2])["id"] == "x"


def test_file_exporter_close_is_idempotent(tmp_path: Path) -> None:
    exporter = FileExporter(tmp_path / "audit.log")
    exporter.write("<AuditMessage/>")
    exporter.close()
    exporter.close()
    assert (tmp_path / "audit.log").read_text() == "<AuditMessage/>\n"


TRANSFER_DETAIL = {
    "grant_event": "grant-1",
    "series_uid": "1.2.3.4",
    "instances": [
        {"sop_instance_uid": "1.2.3.4.1", "frames": [1, 2]},
        {"sop_instance_uid": "1.2.3.4.2", "frames": []},
    ],
    "requests": 3,
    "failed": 0,
    "bytes": 1234,
    "first": "2024-05-01T12:30:10+00:00",
    "last": "2024-05-01T12:30:15.250000+00:00",
}


def transfer() -> dict[str, Any]:
    return access(
        EventKind.LINK_TRANSFERRED,
        Outcome.SUCCESS,
        operations=["view"],
        link_id="L1",
        detail=TRANSFER_DETAIL,
    )


def test_fhir_transfer_is_one_balp_read_over_its_period() -> None:
    resource = to_fhir_audit_event(transfer())
    assert (resource["type"]["code"], resource["subtype"][0]["code"], resource["action"]) == (
        "rest",
        "read",
        "R",
    )
    assert resource["period"] == {
        "start": "2024-05-01T12:30:10Z",
        "end": "2024-05-01T12:30:15.250000Z",
    }
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    study, record = resource["entity"]
    assert study["what"]["identifier"]["value"] == f"urn:oid:{STUDY}"
    detail = {d["type"]: d["valueString"] for d in record["detail"]}
    assert json.loads(detail["detail"])["instances"][0] == {
        "sop_instance_uid": "1.2.3.4.1",
        "frames": [1, 2],
    }
    assert detail["link_id"] == "L1"


def test_dicom_transfer_is_instances_transferred_from_the_broker_to_the_user() -> None:
    root = parse(to_dicom_audit_message(transfer()))
    identification = root.find("EventIdentification")
    assert identification is not None
    event_id = identification.find("EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110104"
    assert identification.attrib["EventActionCode"] == "R"
    roles = {
        p.attrib["UserID"]: [r.attrib["csd-code"] for r in p.findall("RoleIDCode")]
        for p in root.findall("ActiveParticipant")
    }
    assert roles[SUBJECT][0] == "110152"  # destination
    assert roles["telerad-broker"] == ["110153"]  # source
    study = root.find("ParticipantObjectIdentification")
    assert study is not None and study.attrib["ParticipantObjectID"] == STUDY


def test_transfer_without_its_period_is_refused() -> None:
    broken = transfer()
    broken["detail"] = {k: v for k, v in TRANSFER_DETAIL.items() if k != "first"}
    with pytest.raises(ValueError, match="time"):
        to_fhir_audit_event(broken)


@pytest.mark.parametrize(
    ("data", "type_code"),
    [
        (access(EventKind.LINK_GRANTED, Outcome.ALLOW, link_id="L1"), "110132"),
        (access(EventKind.ASSIGNMENT_CHANGED, Outcome.SUCCESS), "110135"),
        (event(EventKind.POLICY_REVISED, Outcome.SUCCESS, policy_revision="b@2"), "110129"),
    ],
)
def test_dicom_window_and_control_events_are_security_alerts(
    data: dict[str, Any], type_code: str
) -> None:
    root = parse(to_dicom_audit_message(data))
    identification = root.find("EventIdentification")
    assert identification is not None
    event_id = identification.find("EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110113"
    codes = [t.attrib["csd-code"] for t in identification.findall("EventTypeCode")]
    assert codes == [type_code]


# ---------------------------------------------------------------- integrity

FINGERPRINT = {
    "study_uid": STUDY,
    "series_uid": STUDY + ".1",
    "sop_uid": STUDY + ".1.1",
    "transfer_syntax": "1.2.840.10008.1.2.1",
    "size": 1234,
    "file_sha256": "ab" * 32,
    "frame_sha256": ["cd" * 32],
    "pacs_id": "0a1b",
    "source": "pacs#17",
}


def stored_event() -> dict[str, Any]:
    return AuditEvent(
        kind=EventKind.INSTANCE_STORED,
        outcome=Outcome.SUCCESS,
        study_uid=STUDY,
        time=WHEN,
        detail={"fingerprint": FINGERPRINT},
    ).model_dump(mode="json")


def violation(action: str, outcome: Outcome) -> dict[str, Any]:
    return access(
        EventKind.INTEGRITY_VIOLATION,
        outcome,
        link_id="link-1",
        reasons=["integrity_altered"],
        detail={"finding": "altered", "action": action, "sop_uid": FINGERPRINT["sop_uid"]},
    )


def test_fhir_fingerprint_is_instances_transferred_created() -> None:
    resource = to_fhir_audit_event(stored_event())
    assert resource["type"] == {
        "system": DCM,
        "code": "110104",
        "display": "DICOM Instances Transferred",
    }
    assert "subtype" not in resource
    assert (resource["action"], resource["outcome"]) == ("C", "0")
    record = resource["entity"][-1]
    assert json.loads(details(record)["detail"])["fingerprint"]["file_sha256"] == "ab" * 32


def test_dicom_fingerprint_names_the_pacs_as_destination() -> None:
    root = parse(to_dicom_audit_message(stored_event()))
    ident = root.find("EventIdentification")
    assert ident is not None and ident.attrib["EventActionCode"] == "C"
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110104"
    assert ident.findall("EventTypeCode") == []
    participants = {
        p.attrib["UserID"]: [r.attrib["csd-code"] for r in p.findall("RoleIDCode")]
        for p in root.findall("ActiveParticipant")
    }
    assert participants == {"telerad-broker": ["110150"], "pacs": ["110152"]}


def test_fhir_violation_is_a_security_alert_with_our_subtype() -> None:
    resource = to_fhir_audit_event(violation("cut_off", Outcome.DENY))
    assert resource["type"]["code"] == "110113"
    assert resource["subtype"] == [
        {
            "system": "https://telerad-broker.dev/fhir/CodeSystem/audit-event-sub-type",
            "code": "integrity-violation",
            "display": "Instance Integrity Violation",
        }
    ]
    assert (resource["action"], resource["outcome"]) == ("E", "8")
    served = to_fhir_audit_event(violation("served", Outcome.ALLOW))
    assert served["outcome"] == "0"


def test_dicom_violation_is_a_security_alert() -> None:
    root = parse(to_dicom_audit_message(violation("cut_off", Outcome.DENY)))
    ident = root.find("EventIdentification")
    assert ident is not None
    assert (ident.attrib["EventActionCode"], ident.attrib["EventOutcomeIndicator"]) == ("E", "8")
    event_id, event_type = ident.find("EventID"), ident.find("EventTypeCode")
    assert event_id is not None and event_id.attrib["csd-code"] == "110113"
    assert event_type is not None and event_type.attrib == {
        "csd-code": "integrity-violation",
        "codeSystemName": "99TELERAD",
        "originalText": "Instance Integrity Violation",
    }
    objects = root.findall("ParticipantObjectIdentification")
    assert object_details(objects[0])["Alert Description"].startswith(
        "Instance failed its integrity check"
    )
    assert syslog_severity(violation("served", Outcome.ALLOW)) == 4
