"""The worklist: the studies one reader may read now, each decided by the policy.

Studies the RIS assigned to the reader (the worklist topic's state) show its priority and the
assigning system, stat first.

Candidates come from the PACS (QIDO-RS over all studies, newest first, capped); every candidate is
put to the policy (action ``search``) through the one enforcement path, so each listing is a
recorded decision. A study is listed when the policy allows it, or when a stronger sign-in is the
only thing missing (the page then offers step-up). Nothing is listed that the policy refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from broker.dicomweb.facts import valid_uid
from broker.errors import DependencyUnavailable, NotFound, UpstreamError
from broker.identity.principal import Principal
from broker.policy import RequestContext
from broker.state import AppState

__all__ = ["MAX_CANDIDATES", "StudyRow", "load_worklist", "study_row"]

MAX_CANDIDATES = 200  # studies put to the policy for one worklist
_PARALLEL = 8  # decisions in flight at once
# Tags a reader picks a study by: institution, modalities, description, date, time, accession.
_FIELDS = ("00080080", "00080061", "00081030", "00080020", "00080030", "00080050")


@dataclass(frozen=True)
class StudyRow:
    """One line of the worklist, as the page shows it."""

    study_uid: str
    institution: str
    modalities: tuple[str, ...]
    description: str
    study_date: str  # YYYY-MM-DD, or "" when the PACS has none
    accession: str
    labels: tuple[str, ...]
    reasons: tuple[str, ...]  # the policy's words for why this reader may read it
    step_up: bool  # listed, but the policy asks for a stronger sign-in first
    priority: str | None = None  # the RIS's priority, when it assigned the study to this reader
    assigned_by: str | None = None  # the assigning system


def _value(dataset: dict[str, Any], tag: str) -> list[Any]:
    values = dataset.get(tag, {}).get("Value", [])
    return values if isinstance(values, list) else []


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = _value(dataset, tag)
    return values[0] if values and isinstance(values[0], str) else ""


def _date(raw: str) -> str:
    return f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else ""


async def _candidates(state: AppState, study_uid: str | None = None) -> list[dict[str, Any]]:
    pacs = state.settings.pacs
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("includefield", tag) for tag in _FIELDS
    ]
    params.append(("limit", str(MAX_CANDIDATES)))
    if study_uid is not None:
        params.append(("StudyInstanceUID", study_uid))
    auth = (
        (pacs.username, pacs.password.get_secret_value())
        if pacs.username and pacs.password
        else None
    )
    try:
        response = await state.http.get(
            str(pacs.url).rstrip("/") + "/studies",
            params=params,
            headers={"Accept": "application/dicom+json"},
            auth=auth if auth else httpx.USE_CLIENT_DEFAULT,
            timeout=pacs.timeout_seconds,
        )
    except httpx.HTTPError as exc:
        raise UpstreamError() from exc
    if response.status_code == 204:
        return []
    if response.status_code != 200:
        raise UpstreamError()
    try:
        found = response.json()
    except ValueError as exc:
        raise UpstreamError() from exc
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


async def _decide(
    state: AppState, principal: Principal, dataset: dict[str, Any], context: RequestContext
) -> StudyRow | None:
    uid = _text(dataset, "0020000D")
    if not valid_uid(uid):
        return None
    try:
        facts = await state.facts.get(uid)
    except NotFound:
        return None
    decision = await state.enforcer.authorize(principal, "search", ["view"], facts, context)
    codes = [r.code for r in decision.reasons]
    if any(code.startswith("policy_") for code in codes):
        raise DependencyUnavailable("The policy service is unavailable; nothing can be listed.")
    step_up = not decision.allow and codes == ["step_up_required"]
    if not decision.allow and not step_up:
        return None
    # the RIS's assignment, as this replica read it from the worklist topic
    assigned = state.worklist.get(uid)
    mine = (
        assigned is not None and assigned.status == "assigned" and principal.id in assigned.readers
    )
    return StudyRow(
        study_uid=uid,
        institution=_text(dataset, "00080080"),
        modalities=tuple(v for v in _value(dataset, "00080061") if isinstance(v, str)),
        description=_text(dataset, "00081030"),
        study_date=_date(_text(dataset, "00080020")),
        accession=_text(dataset, "00080050"),
        labels=facts.labels,
        reasons=tuple(r.message for r in decision.reasons) if decision.allow else (),
        step_up=step_up,
        priority=assigned.priority.value if mine and assigned else None,
        assigned_by=assigned.assigning_system if mine and assigned else None,
    )


async def load_worklist(
    state: AppState, principal: Principal, context: RequestContext
) -> list[StudyRow]:
    """The studies ``principal`` may read now, newest first; refused studies are left out."""
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(dataset: dict[str, Any]) -> StudyRow | None:
        async with gate:
            return await _decide(state, principal, dataset, context)

    rows = await asyncio.gather(*(one(d) for d in await _candidates(state)))
    listed = [row for row in rows if row is not None]
    newest = sorted(listed, key=lambda r: (r.study_date, r.study_uid), reverse=True)
    # the RIS's priorities first (stat, urgent, routine), then what coverage or consent allows
    rank = {"stat": 0, "urgent": 1, "routine": 2}
    return sorted(newest, key=lambda r: rank.get(r.priority or "", 3))


async def study_row(
    state: AppState, principal: Principal, study_uid: str, context: RequestContext
) -> StudyRow:
    """One study as the worklist would show it; :class:`NotFound` if it would not be listed."""
    if not valid_uid(study_uid):
        raise NotFound("No such study on your worklist.")
    found = await _candidates(state, study_uid)
    row = await _decide(state, principal, found[0], context) if found else None
    if row is None:
        raise NotFound("No such study on your worklist.")
    return row
