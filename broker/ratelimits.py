"""Per-subject rate limits: token buckets for link issuance, redemption and login attempts.

Each limit is a token bucket: ``burst`` tokens at most, refilled at ``per_minute``; a request
takes one token (a failed login callback takes more) or is refused with the seconds until it
would have one (``Retry-After``). A bucket's state is two floats, so a viewer's hundreds of frame
requests cost a dictionary lookup each, and a burst as large as a big study is allowed at once
while a sustained pull (a thief's) is held to the refill rate.

    scope        key                      what takes a token
    issue_link   the policy subject       ``POST /api/links`` (and the reading room's Open)
    redeem       the policy subject       every request through ``/links/{token}/dicom-web``
    login        ``ip:<client address>``  ``GET /auth/login``, ``GET /auth/callback``

**Across replicas** the buckets are per process: with ``n`` replicas a person can get at most
``n`` times a limit (the load balancer spreads their requests; a sticky one gives them one
bucket). No shared counter is asked, so the limiter can never be the part that is down.

**Lowered by the policy.** A decision's obligation ``rate_limit`` (``{"burst": n,
"per_minute": m}``) lowers that subject's limit for the decision's action until the next
decision for that action says otherwise; it can only lower, never raise, what the settings
allow, and a malformed obligation lowers nothing.

Buckets are kept for at most ``max_keys`` keys; beyond that the least recently used is dropped
(and starts full again if it comes back), so memory stays bounded whatever the keys; each scope
has its own table, so a flood of login addresses never evicts a reader's buckets.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from broker.config import RateLimitSettings
from broker.errors import RateLimited

__all__ = ["Limit", "RateLimits", "Scope", "TokenBuckets", "retry_after_header"]

Scope = Literal["issue_link", "redeem", "login"]


@dataclass(frozen=True)
class Limit:
    """A token bucket's shape: ``burst`` tokens at most, ``per_minute`` tokens added a minute."""

    burst: float
    per_minute: float

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0

    def lowered_by(self, obligation: object) -> Limit:
        """This limit, lowered by a policy obligation ``{"burst": n, "per_minute": m}``.

        Each field present and a finite number ≥ 0 lowers its own; anything else (missing, a
        string, a boolean, NaN, a higher number) leaves that field as it is.
        """
        if not isinstance(obligation, dict):
            return self
        return Limit(
            burst=_lower(self.burst, obligation.get("burst")),
            per_minute=_lower(self.per_minute, obligation.get("per_minute")),
        )


def _lower(current: float, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return current
    if not math.isfinite(value) or value < 0:
        return current
    return min(current, float(value))


class TokenBuckets:
    """Token buckets by key, for one process; safe to use from several threads.

    Each bucket is kept as what was used and not yet refilled (a leaky bucket's level), not as
    what is left: so a limit lowered by the policy counts what was already taken under the old
    one, and a bucket's state never depends on the limit it was last read with.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._max_keys = max_keys
        self._guard = threading.Lock()
        # key → (tokens used and not refilled yet, when counted); most recently used last
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, limit: Limit, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when taken, else the seconds until
        they would be there (nothing is taken then). A bucket that can never hold ``cost``
        tokens (burst below it, or no refill) answers ``math.inf``."""
        with self._guard:
            now = self._clock()
            used = self._used(key, limit, now)
            if used + cost <= limit.burst:
                self._store(key, used + cost, now)
                return 0.0
            self._store(key, used, now)
            if cost > limit.burst or limit.per_second <= 0:
                return math.inf
            return (used + cost - limit.burst) / limit.per_second

    def charge(self, key: str, limit: Limit, cost: float) -> None:
        """Take up to ``cost`` tokens, as many as there are (a penalty: never refused)."""
        with self._guard:
            now = self._clock()
            used = self._used(key, limit, now)
            self._store(key, max(used, min(limit.burst, used + cost)), now)

    def tokens(self, key: str, limit: Limit) -> float:
        """The tokens ``key`` has now under ``limit`` (``limit.burst`` for a key never seen)."""
        with self._guard:
            return max(0.0, limit.burst - self._used(key, limit, self._clock()))

    def _used(self, key: str, limit: Limit, now: float) -> float:
        stored = self._buckets.get(key)
        if stored is None:
            return 0.0
        used, then = stored
        return max(0.0, used - max(0.0, now - then) * limit.per_second)

    def _store(self, key: str, used: float, now: float) -> None:
        self._buckets[key] = (used, now)
        self._buckets.move_to_end(key)
        # the least recently used go first; the newest (just stored) always stays
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds (RFC 9110 section 10.2.3), at least 1."""
    if not math.isfinite(seconds):
        return "3600"
    return str(max(1, math.ceil(seconds)))


class RateLimits:
    """The broker's limits: from settings, lowered per subject by policy obligations."""

    def __init__(
        self, settings: RateLimitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        # one table per scope, so a flood of login addresses never evicts a reader's buckets
        self._buckets: dict[Scope, TokenBuckets] = {
            scope: TokenBuckets(max_keys=settings.max_keys, clock=clock)
            for scope in ("issue_link", "redeem", "login")
        }
        self._configured: dict[Scope, Limit] = {
            "issue_link": Limit(settings.issue_burst, settings.issue_per_minute),
            "redeem": Limit(settings.redeem_burst, settings.redeem_per_minute),
            "login": Limit(settings.login_burst, settings.login_per_minute),
        }
        self._guard = threading.Lock()
        self._lowered: OrderedDict[tuple[Scope, str], Limit] = OrderedDict()

    def limit(self, scope: Scope, key: str) -> Limit:
        """The limit that holds for ``key`` in ``scope`` now."""
        with self._guard:
            return self._lowered.get((scope, key)) or self._configured[scope]

    def check(self, scope: Scope, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens, or raise :class:`RateLimited` with the seconds to wait."""
        if not self.settings.enabled:
            return
        wait = self._buckets[scope].take(key, self.limit(scope, key), cost)
        if wait > 0:
            raise RateLimited(scope, retry_after_header(wait))

    def penalize(self, scope: Scope, key: str, cost: float) -> None:
        """Take ``cost`` more tokens, as many as are left (a failed login callback)."""
        if self.settings.enabled and cost > 0:
            self._buckets[scope].charge(key, self.limit(scope, key), cost)

    def apply_obligation(self, scope: Scope, key: str, obligation: object) -> None:
        """What a decision for ``key`` in ``scope`` said: ``rate_limit`` lowers the settings'
        limit until the next decision; a decision without one restores the settings' limit."""
        lowered = self._configured[scope].lowered_by(obligation)
        with self._guard:
            if lowered == self._configured[scope]:
                self._lowered.pop((scope, key), None)
                return
            self._lowered[(scope, key)] = lowered
            self._lowered.move_to_end((scope, key))
            while len(self._lowered) > self.settings.max_keys:
                self._lowered.popitem(last=False)
