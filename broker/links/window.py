"""Decision windows: one policy decision reused, briefly, by one holder of one link.

The first redemption of a link by its holder asks the policy (action ``redeem``). An allow may
carry the obligation ``redeem_window_seconds``: for that long (capped at :data:`MAX_SECONDS` and
by the link's expiry) later requests of the same holder, through the same link, for the same
operation reuse the decision instead of asking OPA again. Every request still opens the token,
checks the binding, the caller's credentials, the revocation set and the path; only the policy
evaluation is skipped.

A window ends at once on anything that could change the answer:

- revocation of its link, session or subject (``Revocations`` listeners, fed by the control
  topic on every replica), or of an IdP session (every window ends: the mapping from IdP
  sessions to ours is not kept here);
- a consent or assignment change for its study (``consent.changed`` / ``assignment.changed``
  on the control topic);
- a policy revision other than the one it was decided under (``policy.revised`` on the control
  topic, and any later decision that reports another revision);
- its own end, or the link's expiry.

Changes arrive on the control-topic listener's thread while requests run on the event loop, so
the table is guarded by a (never contended for long) thread lock. A change that lands while a
decision is being asked makes that decision single-use: :meth:`DecisionWindows.open` refuses a
window decided before the latest change (``generation``), so a decision made on the old consent
can never outlive the change.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

__all__ = ["MAX_SECONDS", "DecisionWindows", "Window", "WindowKey", "window_seconds"]

MAX_SECONDS = 60  # the broker's cap on any window, whatever the policy says
_MAX_WINDOWS = 100_000  # beyond this, expired windows are swept before a new one opens


@dataclass(frozen=True)
class WindowKey:
    """Who reuses a decision, through which link, for what."""

    link_id: str
    holder: str  # the link's binding as presented: ``sid:…``, ``jkt:…`` or ``sub:…``
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
    start: float
    end: float
    grant_id: str | None = None  # the durable grant event that opened it
    unfingerprinted: str = "refuse"  # the decision's obligation (broker.dicomweb.integrity)


def window_seconds(obligation: object, *, now: float, link_expires_at: float) -> float:
    """How long a decision may be reused: the obligation, capped at 60 s and by the link's expiry.

    Anything but a positive finite number (missing, a string, a boolean, NaN) means no window.
    """
    if isinstance(obligation, bool) or not isinstance(obligation, int | float):
        return 0.0
    seconds = float(obligation)
    if seconds != seconds:  # NaN
        return 0.0
    return max(0.0, min(seconds, MAX_SECONDS, link_expires_at - now))


class DecisionWindows:
    """The open windows of this process, ended by revocations, consent, assignments, revisions."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._guard = threading.Lock()
        self._windows: dict[WindowKey, Window] = {}
        self._deciding: dict[WindowKey, tuple[asyncio.Lock, list[int]]] = {}
        self._generation = 0
        self.opened = 0
        self.reused = 0
        self.ended = 0

    @property
    def generation(self) -> int:
        """Bumped by every change that ends windows; read before asking the policy."""
        return self._generation

    @asynccontextmanager
    async def deciding(self, key: WindowKey) -> AsyncIterator[None]:
        """Held while a window for ``key`` is being decided, so concurrent first requests of a
        viewer ask the policy once and the others reuse what it opened (event loop only)."""
        entry = self._deciding.get(key)
        if entry is None:
            entry = self._deciding[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._deciding[key]

    def get(self, key: WindowKey, *, policy_revision: str | None) -> Window | None:
        """The open window for ``key``, or None (ended: time, or another policy revision)."""
        with self._guard:
            window = self._windows.get(key)
            if window is None:
                return None
            if window.end <= self._clock() or window.policy_revision != policy_revision:
                self._end(key)
                return None
            self.reused += 1
            return window

    def open(self, window: Window, *, generation: int) -> bool:
        """Open ``window``, unless something changed since ``generation`` was read (False)."""
        with self._guard:
            if generation != self._generation:
                return False
            if len(self._windows) >= _MAX_WINDOWS:
                self._sweep()
            self._windows[window.key] = window
            self.opened += 1
            return True

    def sweep(self) -> None:
        with self._guard:
            self._sweep()

    def on_change(self, kind: str, value: str) -> None:
        """A revocation, consent or assignment change (a ``Revocations`` listener)."""
        with self._guard:
            self._generation += 1
            match kind:
                case "link":
                    doomed = [k for k in self._windows if k.link_id == value]
                case "session":
                    doomed = [k for k, w in self._windows.items() if w.session_id == value]
                case "subject":
                    doomed = [k for k in self._windows if k.subject == value]
                case "consent" | "assignment":
                    doomed = [k for k, w in self._windows.items() if w.study_uid == value]
                case "policy":
                    doomed = [k for k, w in self._windows.items() if w.policy_revision != value]
                case _:
                    # an IdP session (or anything new): its mapping to our sessions is not kept
                    # here, so every window ends; credentials are checked per request anyway
                    doomed = list(self._windows)
            for key in doomed:
                self._end(key)

    def end_all(self) -> None:
        with self._guard:
            self._generation += 1
            for key in list(self._windows):
                self._end(key)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, w in self._windows.items() if w.end <= now]:
            self._end(key)

    def _end(self, key: WindowKey) -> None:
        if self._windows.pop(key, None) is not None:
            self.ended += 1

    def __len__(self) -> int:
        return len(self._windows)
