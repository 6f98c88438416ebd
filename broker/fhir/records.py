"""Recorded Consents as every replica keeps them, fed by ``consent.changed`` events.

Kept apart from the FHIR routes (:mod:`broker.fhir.consent`) so the app state and the study
facts can hold a :class:`ConsentStore` without importing the routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.audit.events import AuditEvent, EventKind

__all__ = ["STATES", "ConsentRecord", "ConsentStore"]

STATES = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})


@dataclass(frozen=True)
class ConsentRecord:
    """One recorded Consent, as every replica keeps it (the patient only as a pseudonym)."""

    id: str
    patient: str  # the broker's keyed pseudonym
    facility: str
    status: str
    provision: str  # "permit" | "deny"
    start: float | None
    end: float | None
    recorded_at: float
    resource: dict[str, Any]

    def effect(self, now: float) -> str:
        """ "permit" only for an active permit inside its period; "deny" for anything else."""
        in_period = (self.start is None or self.start <= now) and (
            self.end is None or now < self.end
        )
        if self.status == "active" and self.provision == "permit" and in_period:
            return "permit"
        return "deny"

    def detail(self) -> dict[str, Any]:
        """The ``consent.changed`` event's detail (what a replica needs to rebuild the record)."""
        return {
            "consent": self.effect(time.time()),
            "patient": self.patient,
            "consent_id": self.id,
            "facility": self.facility,
            "status": self.status,
            "provision": self.provision,
            "period": {"start": self.start, "end": self.end},
            "recorded_at": self.recorded_at,
            "resource": self.resource,
        }

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> ConsentRecord | None:
        """The record a ``consent.changed`` event carries, or None (a per-study change)."""
        try:
            period = detail.get("period") or {}
            record = cls(
                id=str(detail["consent_id"]),
                patient=str(detail["patient"]),
                facility=str(detail["facility"]),
                status=str(detail["status"]),
                provision=str(detail["provision"]),
                start=_number_or_none(period.get("start")),
                end=_number_or_none(period.get("end")),
                recorded_at=float(detail["recorded_at"]),
                resource=dict(detail["resource"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if record.status not in STATES or record.provision not in ("permit", "deny"):
            return None
        return record


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class ConsentStore:
    """The recorded Consents of this replica, fed by ``consent.changed`` events."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_id: dict[str, ConsentRecord] = {}
        self._newest: dict[str, ConsentRecord] = {}  # patient pseudonym -> newest record

    def apply_event(self, event: AuditEvent) -> bool:
        """Apply a patient-level ``consent.changed`` event; False for anything else."""
        if event.kind is not EventKind.CONSENT_CHANGED or "patient" not in event.detail:
            return False
        record = ConsentRecord.from_detail(event.detail)
        if record is None:
            return False
        self._by_id[record.id] = record
        newest = self._newest.get(record.patient)
        if newest is None or (newest.recorded_at, newest.id) <= (record.recorded_at, record.id):
            self._newest[record.patient] = record
        return True

    def get(self, consent_id: str) -> ConsentRecord | None:
        return self._by_id.get(consent_id)

    def of_patient(self, patient: str) -> list[ConsentRecord]:
        return sorted(
            (r for r in self._by_id.values() if r.patient == patient),
            key=lambda r: (r.recorded_at, r.id),
        )

    def effect_for(self, patient: str | None) -> str | None:
        """The consent in force for a patient ("permit"/"deny"), or None when none is recorded."""
        if patient is None:
            return None
        newest = self._newest.get(patient)
        return newest.effect(self._clock()) if newest is not None else None
