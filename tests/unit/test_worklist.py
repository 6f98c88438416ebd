"""Worklist events (schema, CloudEvents binding) and the state a replica keeps from them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.audit.cloudevents import PoisonRecord
from broker.worklist import (
    SCHEMA_PATH,
    Priority,
    WorklistEvent,
    WorklistKind,
    WorklistState,
    check_against_schema,
    export_schema,
    from_record,
    to_record,
)

UID = "1.2.826.0.1.3680043.10.1119.1"
ADA, BEN = "npi:1000000001", "npi:1000000002"


def event(kind: WorklistKind = WorklistKind.ASSIGNED, **kw: Any) -> WorklistEvent:
    fields: dict[str, Any] = {
        "kind": kind,
        "study_uid": UID,
        "accession_number": "ACC-1",
        "facility": "st-olaf",
        "readers": [ADA],
        "reader": ADA,
        "assigning_system": "ris-st-olaf",
    }
    return WorklistEvent(**(fields | kw))


class TestSchema:
    def test_committed_schema_is_the_exported_one(self) -> None:
        assert json.loads(SCHEMA_PATH.read_text()) == export_schema(), (
            "regenerate broker/worklist/schema/worklist-event.v1.schema.json from the model"
        )

    @pytest.mark.parametrize("kind", list(WorklistKind))
    def test_records_validate_against_the_committed_schema(self, kind: WorklistKind) -> None:
        readers = [] if kind in (WorklistKind.CLOSED, WorklistKind.UNASSIGNED) else [ADA]
        reader = None if kind is WorklistKind.CLOSED else (BEN if not readers else ADA)
        key, value, headers = to_record(event(kind, readers=readers, reader=reader), source="/t")
        check_against_schema(json.loads(value))
        assert key == UID.encode()
        assert dict(headers)["ce_type"] == f"org.telerad.worklist.{kind.value}.v1".encode()

    def test_schema_refuses_an_unknown_field(self) -> None:
        _, value, _ = to_record(event(), source="/t")
        with pytest.raises(ValueError, match="does not match its schema"):
            check_against_schema(json.loads(value) | {"patient_name": "Doe^Jane"})


class TestModel:
    @pytest.mark.parametrize(
        ("kind", "fields", "message"),
        [
            (WorklistKind.ASSIGNED, {"readers": []}, "at least one reader"),
            (WorklistKind.ASSIGNED, {"reader": BEN}, "among readers"),
            (WorklistKind.UNASSIGNED, {"readers": [ADA], "reader": ADA}, "no longer"),
            (WorklistKind.CLOSED, {"readers": [ADA]}, "no readers"),
            (WorklistKind.ASSIGNED, {"study_uid": "1.02.3"}, "not a DICOM UID"),
            (WorklistKind.ASSIGNED, {"readers": [ADA, ADA]}, "must not repeat"),
            (WorklistKind.ASSIGNED, {"readers": ["npi:1 npi:2"], "reader": None}, "pattern"),
        ],
    )
    def test_inconsistent_events_are_refused(
        self, kind: WorklistKind, fields: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            event(kind, **fields)


class TestFromRecord:
    def test_round_trip(self) -> None:
        original = event(priority=Priority.STAT)
        key, value, headers = to_record(original, source="/ris")
        assert from_record(value, headers, key) == original

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            (lambda v, h, k: (v, [x for x in h if x[0] != "ce_specversion"], k), "CloudEvents"),
            (
                lambda v, h, k: (v, [*h, ("ce_type", b"org.telerad.worklist.deleted.v1")], k),
                "unknown event type",
            ),
            (lambda v, h, k: (b"{not json", h, k), "not a valid worklist event"),
            (lambda v, h, k: (None, h, k), "no data"),
            (lambda v, h, k: (v, h, b"1.2.3"), "record key"),
            (lambda v, h, k: (v, [*h, ("ce_id", b"other")], k), "headers disagree"),
            (lambda v, h, k: (v, [*h, ("ce_subject", b"1.2.3")], k), "ce_subject"),
        ],
    )
    def test_bad_records_are_poison_with_the_reason(self, change: Any, reason: str) -> None:
        key, value, headers = to_record(event(), source="/ris")
        value, headers, key = change(value, headers, key)
        with pytest.raises(PoisonRecord, match=reason):
            from_record(value, headers, key)

    def test_the_reason_names_the_bad_field(self) -> None:
        key, value, headers = to_record(event(), source="/ris")
        data = json.loads(value) | {"priority": "whenever"}
        with pytest.raises(PoisonRecord, match="priority"):
            from_record(json.dumps(data).encode(), headers, key)


class TestState:
    def test_newest_event_of_a_study_is_its_assignment(self) -> None:
        state = WorklistState()
        changed: list[str] = []
        state.add_listener(changed.append)
        state.apply(event())
        assert [a.study_uid for a in state.for_reader(ADA)] == [UID]
        state.apply(event(WorklistKind.REASSIGNED, readers=[BEN], reader=BEN))
        assert state.for_reader(ADA) == []
        assert [a.study_uid for a in state.for_reader(BEN)] == [UID]
        state.apply(event(WorklistKind.CLOSED, readers=[], reader=None))
        assert state.for_reader(BEN) == []
        closed = state.get(UID)
        assert closed is not None and closed.policy_input()["status"] == "closed"
        assert changed == [UID, UID, UID]

    def test_policy_input_of_an_assignment(self) -> None:
        state = WorklistState()
        state.apply(event(priority=Priority.URGENT))
        assigned = state.get(UID)
        assert assigned is not None
        assert assigned.policy_input() == {
            "status": "assigned",
            "readers": [ADA],
            "facility": "st-olaf",
            "priority": "urgent",
            "assigning_system": "ris-st-olaf",
        }

    def test_unassigning_the_last_reader_leaves_the_study_unassigned(self) -> None:
        state = WorklistState()
        state.apply(event())
        state.apply(event(WorklistKind.UNASSIGNED, readers=[], reader=ADA))
        unassigned = state.get(UID)
        assert unassigned is not None and unassigned.status == "unassigned"
        assert state.get("1.2.3") is None

    def test_stat_studies_come_first(self) -> None:
        state = WorklistState()
        state.apply(event(study_uid="1.2.3.1", priority=Priority.ROUTINE))
        state.apply(event(study_uid="1.2.3.2", priority=Priority.STAT))
        assert [a.study_uid for a in state.for_reader(ADA)] == ["1.2.3.2", "1.2.3.1"]


class TestPublishCommand:
    def test_dry_run_prints_the_record_it_would_send(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from broker.cli import main

        argv = ["worklist", "publish", "assigned", UID, "--facility", "st-olaf"]
        assert main([*argv, "--reader", ADA, "--priority", "stat", "--dry-run"]) == 0
        record, data = capsys.readouterr().out.splitlines()
        assert json.loads(record)["key"] == UID
        assert json.loads(record)["headers"]["ce_type"] == "org.telerad.worklist.assigned.v1"
        check_against_schema(json.loads(data))
        assert json.loads(data)["priority"] == "stat"

    def test_an_inconsistent_event_is_refused_before_kafka(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from broker.cli import main

        argv = ["worklist", "publish", "closed", UID, "--facility", "st-olaf", "--reader", ADA]
        assert main(argv) == 2
        assert "no readers" in capsys.readouterr().err
