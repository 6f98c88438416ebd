"""What has been revoked in this process: sessions, IdP sessions, subjects, links.

Entries expire on their own once whatever they revoke could no longer be used anyway. Revocations
made through another replica arrive as audit-stream events (see the audit stream); here they take
effect at once in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["RevocationKind", "Revocations"]


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

    def revoke(self, kind: RevocationKind, value: str, *, until: float) -> None:
        """Revoke ``value`` until the epoch time ``until``."""
        key = (kind, value)
        self._entries[key] = max(until, self._entries.get(key, 0.0))
        if len(self._entries) % 1024 == 0:
            self._sweep()

    def is_revoked(self, kind: RevocationKind, value: str | None) -> bool:
        if value is None:
            return False
        until = self._entries.get((kind, value))
        return until is not None and until > self._clock()

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, until in self._entries.items() if until <= now]:
            del self._entries[key]
