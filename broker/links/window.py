"""Decision windows: one policy decision reused, briefly, by one holder of one link.

The first redemption of a link by its holder asks the policy (action ``redeem``). An allow may
carry the obligation ``redeem_window_seconds``: for that long (capped at :data:`MAX_SECONDS` and
by the link's expiry) later requests of the same holder, through the same link, for the same
operation reuse the decision instead of asking OPA again. Every request still opens the token,
checks the binding, the caller's credentials, the revocation set and the path; only the policy
evaluation (and its per-request decision and redemption events) is skipped.

A window ends at once on anything that could change the answer:

- revocation of its link, session or subject (``Revocations`` listeners, fed by the control
  topic on every replica);
- a consent change for its study (``consent.changed`` on the control topic);
- a policy revision other than the one it was decided under (seen on any later decision);
- its own end, or the link's expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_SECONDS", "DecisionWindows", "Window", "WindowKey", "window_seconds"]

MAX_SECONDS = 60  # the broker's cap on any window, whatever the policy says
_MAX_WINDOWS = 100_000  # beyond this, expired windows are swept before a new one opens


@dataclass(frozen=True)
class WindowKey:
    """Who reuses a decision, through which link, for what."""

    link_id: str
    holder: str  # the link's binding as presented: session id, key thumbprint or subject digest
    subject: str
    operation: str


@dataclass(frozen=True)
class Window:
    """One reusable allow decision."""

    key: WindowKey
    study_uid: str
    session_id: str | None
    decision_id: str | None
    policy_revision: str | None
    operations: tuple[str, ...]
    start: float
    end: float


def window_seconds(obligation: object, *, now: float, link_expires_at: float) -> float:
    """How long a decision may be reused: the obligation, capped at 60 s and by the link's expiry.

    Anything but a positive number (missing, a string, a boolean) means no window.
    """
    if isinstance(obligation, bool) or not isinstance(obligation, int | float):
        return 0.0
    return max(0.0, min(float(obligation), MAX_SECONDS, link_expires_at - now))


class DecisionWindows:
    """The open windows of this process, ended by revocations, consent and policy revisions."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[WindowKey, Window] = {}
        self._locks: dict[WindowKey, asyncio.Lock] = {}
        self.opened = 0
        self.reused = 0
        self.ended = 0

    def lock(self, key: WindowKey) -> asyncio.Lock:
        """Held while a window for ``key`` is being decided, so concurrent first requests of a
        viewer ask the policy once and the others reuse what it opened."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def release(self, key: WindowKey) -> None:
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def get(self, key: WindowKey, *, policy_revision: str | None) -> Window | None:
        """The open window for ``key``, or None (ended: time, or a newer policy revision)."""
        window = self._windows.get(key)
        if window is None:
            return None
        if window.end <= self._clock() or window.policy_revision != policy_revision:
            self._end(key)
            return None
        self.reused += 1
        return window

    def open(self, window: Window) -> None:
        if len(self._windows) >= _MAX_WINDOWS:
            self.sweep()
        self._windows[window.key] = window
        self.opened += 1

    def sweep(self) -> None:
        now = self._clock()
        for key in [k for k, w in self._windows.items() if w.end <= now]:
            self._end(key)

    def on_change(self, kind: str, value: str) -> None:
        """A revocation or consent change (a ``Revocations`` listener): end what it touches."""
        match kind:
            case "link":
                doomed = [k for k in self._windows if k.link_id == value]
            case "session":
                doomed = [k for k, w in self._windows.items() if w.session_id == value]
            case "subject":
                doomed = [k for k in self._windows if k.subject == value]
            case "consent":
                doomed = [k for k, w in self._windows.items() if w.study_uid == value]
            case _:
                # an IdP session (or anything new): its mapping to our sessions is not kept
                # here, so every window ends; credentials are checked per request anyway
                doomed = list(self._windows)
        for key in doomed:
            self._end(key)

    def end_all(self) -> None:
        for key in list(self._windows):
            self._end(key)

    def _end(self, key: WindowKey) -> None:
        if self._windows.pop(key, None) is not None:
            self.ended += 1

    def __len__(self) -> int:
        return len(self._windows)
