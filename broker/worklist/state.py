"""The current worklist: one assignment per study, from the RIS's events, in topic order.

Every replica rebuilds it from the beginning of the compacted worklist topic at start (readiness
waits for that) and applies each new event as it arrives. Events arrive on the listener's thread
while requests read on the event loop, hence the lock. What is not here is not assigned: a study
the RIS never mentioned, or one whose events this replica has not read yet, has no assignment,
and the policy then finds no explicit assignment (fail closed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from broker.worklist.events import Priority, WorklistEvent, WorklistKind

__all__ = ["Assignment", "WorklistState"]

Status = Literal["assigned", "unassigned", "closed"]


@dataclass(frozen=True)
class Assignment:
    """A study's assignment as the newest worklist event left it."""

    study_uid: str
    accession_number: str | None
    facility: str
    readers: tuple[str, ...]
    priority: Priority
    status: Status
    assigning_system: str
    changed_at: datetime
    kind: WorklistKind  # the change that left it so
    event_id: str

    @classmethod
    def of(cls, event: WorklistEvent) -> Assignment:
        status: Status = (
            "closed"
            if event.kind is WorklistKind.CLOSED
            else "assigned"
            if event.readers
            else "unassigned"
        )
        return cls(
            study_uid=event.study_uid,
            accession_number=event.accession_number,
            facility=event.facility,
            readers=tuple(event.readers),
            priority=event.priority,
            status=status,
            assigning_system=event.assigning_system,
            changed_at=event.time,
            kind=event.kind,
            event_id=event.id,
        )

    def policy_input(self) -> dict[str, Any]:
        """``input.resource.assignment`` (policies/schemas/input.schema.json)."""
        return {
            "status": self.status,
            "readers": list(self.readers),
            "facility": self.facility,
            "priority": self.priority.value,
            "assigning_system": self.assigning_system,
        }


class WorklistState:
    """Assignments by study UID; listeners hear of every study whose assignment changed."""

    def __init__(self) -> None:
        self._by_study: dict[str, Assignment] = {}
        self._guard = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self.applied = 0

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(study_uid)`` after every change from now on."""
        self._listeners.append(listener)

    def apply(self, event: WorklistEvent) -> None:
        """Apply one event (in topic order: the newest for a study wins)."""
        with self._guard:
            self._by_study[event.study_uid] = Assignment.of(event)
            self.applied += 1
        for listener in self._listeners:
            listener(event.study_uid)

    def get(self, study_uid: str) -> Assignment | None:
        """The study's assignment, or None when the RIS has said nothing of it (yet)."""
        with self._guard:
            return self._by_study.get(study_uid)

    def for_reader(self, reader: str) -> list[Assignment]:
        """The studies assigned to ``reader`` now (stat first, then urgent, then routine)."""
        order = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}
        with self._guard:
            mine = [
                a for a in self._by_study.values() if a.status == "assigned" and reader in a.readers
            ]
        return sorted(mine, key=lambda a: (order[a.priority], a.study_uid))

    def __len__(self) -> int:
        with self._guard:
            return len(self._by_study)
