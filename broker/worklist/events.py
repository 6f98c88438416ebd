"""Worklist events from the RIS: CloudEvents 1.0 in Kafka binary mode on a compacted topic.

The topic (``telerad.worklist.v1`` by default) is keyed by Study Instance UID and compacted: Kafka
keeps the newest record per study for ever. So every event carries the study's *whole* current
assignment (``readers`` after the change), never a delta; the newest record of a study is all a
replica started a year later needs. ``reader`` names the one reader the change is about.

CloudEvents Kafka protocol binding §3.2 (binary mode): the data is the record value, the
attributes are ``ce_*`` headers, ``content-type`` is the data's media type. The ``ce_type`` is
``org.telerad.worklist.<kind>.v1``; a record whose type, id, subject or key disagrees with its
data is refused (:class:`~broker.audit.cloudevents.PoisonRecord`), as is anything the schema
(``schema/worklist-event.v1.schema.json``, exported from :class:`WorklistEvent`) does not allow.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.audit.cloudevents import PoisonRecord
from broker.dicomweb.facts import valid_uid
from broker.schemas import CommittedSchema

__all__ = [
    "SCHEMA_PATH",
    "Priority",
    "WorklistEvent",
    "WorklistKind",
    "check_against_schema",
    "export_schema",
    "from_record",
    "to_record",
]

SPEC_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).parent / "schema" / "worklist-event.v1.schema.json"
TYPE_PREFIX = "org.telerad.worklist."
Header = tuple[str, bytes]

# A reader: the policy subject id (``npi:<10 digits>``, or the IdP subject as the issuer's claim
# mapping gives it); no whitespace, so nothing can smuggle a second value in.
Reader = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^\S+$")]


class WorklistKind(StrEnum):
    """What the RIS did to the study's assignment; ``ce_type`` is
    ``org.telerad.worklist.<kind>.v1``."""

    ASSIGNED = "assigned"  # a reader was added (readers: every reader now)
    REASSIGNED = "reassigned"  # the study moved to other reader(s)
    UNASSIGNED = "unassigned"  # a reader was taken off (readers: who is left, maybe nobody)
    PRIORITY_CHANGED = "priority_changed"  # same readers, new priority
    CLOSED = "closed"  # the report is final: nobody reads it any more (readers: [])


class Priority(StrEnum):
    """The order's priority, as HL7 v2 ORC-7/TQ1-9 carries it (S, A, R)."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"


class WorklistEvent(BaseModel):
    """One change of a study's worklist assignment, carrying the study's whole assignment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=128)
    kind: WorklistKind
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    study_uid: str = Field(min_length=1, max_length=64, description="Study Instance UID")
    accession_number: str | None = Field(None, min_length=1, max_length=16)  # DICOM SH
    facility: str = Field(min_length=1, max_length=64, description="the facility's id")
    readers: list[Reader] = Field(
        max_length=32, description="every reader assigned after this change (the whole state)"
    )
    reader: Reader | None = Field(None, description="the reader this change is about")
    assigning_system: str = Field(min_length=1, max_length=128, description="e.g. ris-st-olaf")
    priority: Priority = Priority.ROUTINE

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not valid_uid(self.study_uid):
            raise ValueError("study_uid is not a DICOM UID")
        if len(set(self.readers)) != len(self.readers):
            raise ValueError("readers must not repeat")
        match self.kind:
            case WorklistKind.ASSIGNED | WorklistKind.REASSIGNED | WorklistKind.PRIORITY_CHANGED:
                if not self.readers:
                    raise ValueError(f"{self.kind.value} needs at least one reader")
                if self.reader is not None and self.reader not in self.readers:
                    raise ValueError(f"{self.kind.value}: reader must be among readers")
            case WorklistKind.UNASSIGNED:
                if self.reader is not None and self.reader in self.readers:
                    raise ValueError("unassigned: reader must no longer be among readers")
            case WorklistKind.CLOSED:
                if self.readers:
                    raise ValueError("closed: a study with a final report has no readers")
        return self

    @property
    def type(self) -> str:
        """The versioned CloudEvents type."""
        return f"{TYPE_PREFIX}{self.kind.value}.v1"


_SCHEMA = CommittedSchema(
    WorklistEvent,
    SCHEMA_PATH,
    "https://telerad-broker.invalid/schemas/worklist-event.v1.schema.json",
    "worklist event",
)


def export_schema() -> dict[str, Any]:
    """The JSON Schema of the event data, exported from the model (committed as SCHEMA_PATH)."""
    return _SCHEMA.export()


def check_against_schema(data: dict[str, Any]) -> None:
    """Validate event data with the committed JSON Schema (what an integrator can check too)."""
    _SCHEMA.check(data)


def to_record(event: WorklistEvent, *, source: str) -> tuple[bytes, bytes, list[Header]]:
    """(key, value, headers) of the Kafka record for ``event``: keyed by its study."""
    data = event.model_dump(mode="json")
    headers: list[Header] = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event.id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", data["time"].encode()),
        ("ce_subject", event.study_uid.encode()),
        ("content-type", b"application/json"),
    ]
    value = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return event.study_uid.encode(), value, headers


def from_record(
    value: bytes | None, headers: list[Header] | None, key: bytes | None = None
) -> WorklistEvent:
    """The worklist event in a Kafka record; :class:`PoisonRecord` (with the reason) if it is
    not one we can read. ``key`` is checked when given: a record keyed by another study would
    let compaction keep the wrong record."""
    attrs = {k: v for k, v in headers or []}
    if attrs.get("ce_specversion") != SPEC_VERSION.encode():
        raise PoisonRecord("not a CloudEvents 1.0 binary-mode record")
    ce_type = attrs.get("ce_type", b"").decode("utf-8", "replace")
    kinds = {f"{TYPE_PREFIX}{k.value}.v1" for k in WorklistKind}
    if ce_type not in kinds:
        raise PoisonRecord(f"unknown event type {ce_type[:80]!r}")
    if value is None:
        raise PoisonRecord("no data")
    try:
        event = WorklistEvent.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "data"
        raise PoisonRecord(f"data is not a valid worklist event: {where}: {first['msg']}") from exc
    if event.type != ce_type or attrs.get("ce_id") != event.id.encode():
        raise PoisonRecord("headers disagree with the data (ce_type or ce_id)")
    if attrs.get("ce_subject", event.study_uid.encode()) != event.study_uid.encode():
        raise PoisonRecord("ce_subject is not the event's study_uid")
    if key is not None and key != event.study_uid.encode():
        raise PoisonRecord("record key is not the event's study_uid")
    return event
