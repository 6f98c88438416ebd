"""Audit events as CloudEvents 1.0 in Kafka binary mode (``ce_*`` headers, JSON data).

CloudEvents Kafka protocol binding §3.2: in binary mode the event's data is the record value,
its attributes are headers named ``ce_<attribute>``, and ``content-type`` carries the data's
media type. The record key is the event's partition key, so one study's events stay in order.
The data is checked against the versioned JSON Schema exported from :class:`AuditEvent`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.audit.events import AuditEvent
from broker.schemas import CommittedSchema

__all__ = [
    "SCHEMA_PATH",
    "PoisonRecord",
    "check_against_schema",
    "export_schema",
    "from_record",
    "to_record",
]

SPEC_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).parent / "schema" / "audit-event.v1.schema.json"
Header = tuple[str, bytes]


class PoisonRecord(ValueError):
    """A record that is not a valid audit event of a version we read (goes to the dead letters)."""


_SCHEMA = CommittedSchema(
    AuditEvent,
    SCHEMA_PATH,
    "https://telerad-broker.invalid/schemas/audit-event.v1.schema.json",
    "audit event",
)


def export_schema() -> dict[str, Any]:
    """The JSON Schema of the event data, exported from the model (committed as SCHEMA_PATH)."""
    return _SCHEMA.export()


def check_against_schema(data: dict[str, Any]) -> None:
    """Validate event data with the committed JSON Schema (jsonschema; ~0.4 ms an event)."""
    _SCHEMA.check(data)


def to_record(event: AuditEvent, *, source: str) -> tuple[bytes, bytes, list[Header]]:
    """(key, value, headers) of the Kafka record for ``event``; the data is schema-checked.

    The check on this hot path is the model the schema is exported from, re-validating the
    JSON data (strict, ``extra="forbid"``; microseconds). A test keeps the committed schema equal
    to the model's export and runs :func:`check_against_schema` over serialized records, so the
    two cannot drift.
    """
    data = event.model_dump(mode="json")
    try:
        AuditEvent.model_validate(data)
    except ValidationError as exc:
        raise ValueError("audit event does not match its schema") from exc
    headers: list[Header] = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event.id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", data["time"].encode()),
        ("content-type", b"application/json"),
    ]
    if event.study_uid:
        headers.append(("ce_subject", event.study_uid.encode()))
    if event.traceparent:
        # CloudEvents distributed-tracing extension: the attribute, as a binary-mode header
        headers.append(("ce_traceparent", event.traceparent.encode()))
    value = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return event.partition_key.encode(), value, headers


def from_record(value: bytes | None, headers: list[Header] | None) -> AuditEvent:
    """The audit event in a Kafka record; :class:`PoisonRecord` if it is not one we can read."""
    attrs = {k: v for k, v in headers or []}
    if attrs.get("ce_specversion") != SPEC_VERSION.encode():
        raise PoisonRecord("not a CloudEvents 1.0 binary-mode record")
    ce_type = attrs.get("ce_type", b"").decode("utf-8", "replace")
    if not (ce_type.startswith("org.telerad.") and ce_type.endswith(".v1")):
        raise PoisonRecord(f"unknown event type {ce_type[:80]!r}")
    if value is None:
        raise PoisonRecord("no data")
    try:
        event = AuditEvent.model_validate_json(value)
    except ValidationError as exc:
        raise PoisonRecord("data is not a valid audit event") from exc
    if event.type != ce_type or attrs.get("ce_id") != event.id.encode():
        raise PoisonRecord("headers disagree with the data")
    return event
