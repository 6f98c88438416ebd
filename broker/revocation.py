"""What has been revoked in this process: sessions, IdP sessions, subjects, links.

Entries expire on their own once whatever they revoke could no longer be used anyway. Revocations
made through another replica arrive as audit-stream events (see the audit stream); here they take
effect at once in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.audit.sink import AuditSink

__all__ = ["Listener", "RevocationKind", "Revocations", "apply_event", "revoke_everywhere"]

# Told of every revocation and fact change in this process: (kind, value), where kind is a
# RevocationKind, "consent" or "assignment" (value: the study UID) or "policy" (value: the new
# policy revision). Decision windows end on these.
Listener = Callable[[str, str], None]


class RevocationKind(StrEnum):
    SESSION = "session"  # one of our browser sessions
    IDP_SESSION = "idp_session"  # an IdP session (`sid`), from back-channel logout
    SUBJECT = "subject"  # everything of one person (disabled user)
    LINK = "link"  # one study link


class Revocations:
    """An in-process set of revoked identifiers, each until its own expiry."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[tuple[RevocationKind, str], float] = {}
        self._clock = clock
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, value)`` on every revocation and consent change from now on."""
        self._listeners.append(listener)

    def _notify(self, kind: str, value: str) -> None:
        for listener in self._listeners:
            listener(kind, value)

    def changed(self, kind: str, value: str) -> None:
        """A fact behind decisions changed: ``consent``/``assignment`` of a study (value: its
        UID) or the ``policy`` revision (value: the new one). What was decided on it must end."""
        self._notify(kind, value)

    def revoke(self, kind: RevocationKind, value: str, *, until: float) -> None:
        """Revoke ``value`` until the epoch time ``until``."""
        key = (kind, value)
        self._entries[key] = max(until, self._entries.get(key, 0.0))
        if len(self._entries) % 1024 == 0:
            self._sweep()
        self._notify(kind.value, value)

    def lift(self, kind: RevocationKind, value: str) -> None:
        """End a revocation early (an operator lifting a containment)."""
        self._entries.pop((kind, value), None)

    def is_revoked(self, kind: RevocationKind, value: str | None) -> bool:
        if value is None:
            return False
        until = self._entries.get((kind, value))
        return until is not None and until > self._clock()

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, until in self._entries.items() if until <= now]:
            del self._entries[key]


async def revoke_everywhere(
    revocations: Revocations,
    audit: AuditSink,
    kind: RevocationKind,
    value: str,
    *,
    until: float,
    **event: Any,
) -> None:
    """Revoke here at once, and publish it: every replica applies the ``revoked`` event."""
    revocations.revoke(kind, value, until=until)
    detail = dict(event.pop("detail", {}))
    detail["revocation"] = {"kind": kind.value, "value": value, "until": until}
    await audit.emit(
        AuditEvent(kind=EventKind.REVOKED, outcome=Outcome.SUCCESS, detail=detail, **event)
    )


def apply_event(revocations: Revocations, event: AuditEvent) -> bool:
    """Apply a control event published by any replica; False if it is not one.

    ``revoked`` adds to the revocation set. ``assignment.changed`` (a study's worklist
    assignments, from the RIS feed) and ``policy.revised`` are reported to the listeners
    (decision windows end). A ``consent.changed`` event is reported to the listeners too and
    still answers False: the study facts apply it (first: see ``broker.app``).
    """
    if event.kind is EventKind.CONSENT_CHANGED and event.study_uid:
        revocations.changed("consent", event.study_uid)
        return False
    if event.kind is EventKind.ASSIGNMENT_CHANGED and event.study_uid:
        revocations.changed("assignment", event.study_uid)
        return True
    if event.kind is EventKind.POLICY_REVISED and event.policy_revision:
        revocations.changed("policy", event.policy_revision)
        return True
    if event.kind is not EventKind.REVOKED:
        return False
    entry = event.detail.get("revocation")
    if not isinstance(entry, dict):
        return False
    try:
        kind = RevocationKind(entry["kind"])
        value, until = str(entry["value"]), float(entry["until"])
    except (KeyError, TypeError, ValueError):
        return False
    if entry.get("lifted") is True:
        revocations.lift(kind, value)
        return True
    revocations.revoke(kind, value, until=until)
    return True
