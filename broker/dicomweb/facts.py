"""What the policy needs to know about a study, from the PACS and the broker's own data.

The facility comes from the PACS (QIDO-RS: Institution Name, mapped to a facility id by the
broker's catalog); sensitivity labels, the consent fact and the referring physician come from the
catalog the hospital's systems feed (a JSON file here). Nothing comes from the client. Facts are
cached for a few seconds only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from broker.audit.events import AuditEvent, EventKind
from broker.config import PacsSettings
from broker.errors import NotFound, UpstreamError

__all__ = ["FactsCatalog", "StudyFacts", "StudyFactsSource", "valid_uid"]

_UID_CHARS = frozenset("0123456789.")


def valid_uid(uid: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters, no empty or zero-led component."""
    if not uid or len(uid) > 64 or not set(uid) <= _UID_CHARS:
        return False
    return all(part and (part == "0" or not part.startswith("0")) for part in uid.split("."))


@dataclass(frozen=True)
class StudyFacts:
    """The ``input.resource`` document, and the consent fact for ``input.context``."""

    study_uid: str
    facility: str | None
    labels: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    referring_physician: str | None = None
    patient_ref: str | None = None  # keyed pseudonym, never the patient id
    consent: str | None = None  # "permit" | "deny" | None (unknown ⇒ the policy denies)

    def policy_resource(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "facility": self.facility,
            "labels": list(self.labels),
            "modalities": list(self.modalities),
            "patient_ref": self.patient_ref,
            "referring_physician": self.referring_physician,
        }


@dataclass(frozen=True)
class FactsCatalog:
    """The hospital-fed facts: institution → facility, and per-study labels/consent/referrer."""

    institutions: dict[str, str] = field(default_factory=dict)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> FactsCatalog:
        if path is None:
            return cls()
        raw = json.loads(path.read_text())
        return cls(
            institutions=dict(raw.get("institutions", {})), studies=dict(raw.get("studies", {}))
        )


class StudyFactsSource:
    """Study facts by UID: QIDO-RS at the PACS plus the catalog, briefly cached."""

    def __init__(
        self,
        pacs: PacsSettings,
        http: httpx.AsyncClient,
        catalog: FactsCatalog,
        *,
        pseudonym_key: bytes,
        ttl_seconds: float = 10.0,
        patient_consent: Callable[[str | None], str | None] | None = None,
    ) -> None:
        self._pacs = pacs
        self._http = http
        self._catalog = catalog
        self._key = pseudonym_key
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, StudyFacts]] = {}
        self._consent: dict[str, str] = {}  # changes announced on the stream, newest wins
        # the consent recorded for a patient (FHIR Consent), which outranks any per-study fact
        self._patient_consent = patient_consent or (lambda _: None)

    def apply_event(self, event: AuditEvent) -> bool:
        """Apply a ``consent.changed`` event (from any replica or the hospital's systems)."""
        consent = event.detail.get("consent")
        if event.kind is not EventKind.CONSENT_CHANGED or consent not in ("permit", "deny"):
            return False
        if event.study_uid is None or not valid_uid(event.study_uid):
            return False
        self._consent[event.study_uid] = str(consent)
        self._cache.pop(event.study_uid, None)
        return True

    def pseudonym(self, patient_id: str) -> str:
        """A keyed pseudonym of a patient identifier (HMAC-SHA-256, truncated)."""
        return "p:" + hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    async def get(self, study_uid: str) -> StudyFacts:
        """Facts of one study; :class:`NotFound` when the PACS has no such study."""
        if not valid_uid(study_uid):
            raise NotFound("No such study.")
        now = time.monotonic()
        hit = self._cache.get(study_uid)
        if hit is not None and now - hit[0] < self._ttl:
            facts = hit[1]
        else:
            facts = await self._fetch(study_uid)
            self._cache[study_uid] = (now, facts)
            if len(self._cache) > 10000:
                self._cache.pop(next(iter(self._cache)))
        recorded = self._patient_consent(facts.patient_ref)
        return facts if recorded is None else replace(facts, consent=recorded)

    async def _fetch(self, study_uid: str) -> StudyFacts:
        pacs = self._pacs
        auth: tuple[str, str] | None = None
        if pacs.username and pacs.password:
            auth = (pacs.username, pacs.password.get_secret_value())
        try:
            response = await self._http.get(
                str(pacs.url).rstrip("/") + "/studies",
                # one includefield per tag: Orthanc's plugin does not split comma lists
                params=[
                    ("StudyInstanceUID", study_uid),
                    ("includefield", "00080080"),
                    ("includefield", "00080061"),
                    ("includefield", "00100020"),
                ],
                headers={"Accept": "application/dicom+json"},
                auth=auth if auth else httpx.USE_CLIENT_DEFAULT,
                timeout=pacs.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError() from exc
        if response.status_code == 204:
            raise NotFound("No such study.")
        if response.status_code != 200:
            raise UpstreamError()
        try:
            matches = response.json()
        except ValueError as exc:
            raise UpstreamError() from exc
        if not isinstance(matches, list) or not matches:
            raise NotFound("No such study.")
        found = matches[0]
        institution = _first(found, "00080080")
        patient_id = _first(found, "00100020")
        modalities = tuple(
            v for v in found.get("00080061", {}).get("Value", []) if isinstance(v, str)
        )
        extra = self._catalog.studies.get(study_uid, {})
        return StudyFacts(
            study_uid=study_uid,
            facility=self._catalog.institutions.get(institution) if institution else None,
            labels=tuple(extra.get("labels", ())),
            modalities=modalities,
            referring_physician=extra.get("referring_physician"),
            patient_ref=self.pseudonym(patient_id) if patient_id else None,
            consent=self._consent.get(study_uid, extra.get("consent")),
        )


def _first(dataset: dict[str, Any], tag: str) -> str | None:
    values = dataset.get(tag, {}).get("Value", [])
    value = values[0] if values else None
    return value if isinstance(value, str) else None
