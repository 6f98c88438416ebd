"""Health of one audit consumer, served on a port of its own for the kubelet's probes.

* ``/healthz`` (liveness): the loop is turning: it reported within ``stale_seconds``. A loop
  stuck in a handler or a dead thread stops reporting, and the kubelet restarts the pod.
* ``/readyz`` (readiness): alive, and the last check of Kafka succeeded: partitions are
  assigned (the group coordinator answered), their end offsets could be read (the partition
  leaders answered), and the last batch did not fail. The body reports the lag per partition.

Anything not yet known is "not ready" (fail closed): before the first check, after a failed one.
The loop calls :meth:`ConsumerHealth.beat` and :meth:`ConsumerHealth.observe`; the health server
reads them from its own thread, so both sides go through a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from broker.ops_server import OpsServer

__all__ = ["ConsumerHealth", "KafkaView", "health_server"]


@dataclass(frozen=True)
class KafkaView:
    """What the loop last learnt from Kafka."""

    ok: bool
    detail: str
    lag: Mapping[str, int] = field(default_factory=dict)  # "topic/partition" → records behind


class ConsumerHealth:
    """Liveness and readiness of one consumer loop."""

    def __init__(
        self,
        name: str,
        *,
        stale_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._stale = stale_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._beat = clock()
        self._view = KafkaView(ok=False, detail="not checked yet")
        self._batch_failed = False

    def beat(self) -> None:
        """The loop turned (called after every poll)."""
        with self._lock:
            self._beat = self._clock()

    def observe(self, view: KafkaView) -> None:
        """The result of the loop's last check of Kafka."""
        with self._lock:
            self._view = view

    def batch_done(self, *, failed: bool) -> None:
        """A batch was processed (committed) or failed (to be retried)."""
        with self._lock:
            self._batch_failed = failed

    def alive(self) -> tuple[bool, float]:
        """Whether the loop reported recently, and how long ago it did (seconds)."""
        with self._lock:
            age = self._clock() - self._beat
        return age <= self._stale, age

    def liveness(self) -> tuple[int, str, bytes]:
        """The ``/healthz`` answer."""
        alive, age = self.alive()
        body = {"consumer": self.name, "status": "ok" if alive else "stalled", "age_s": age}
        return (200 if alive else 503), "application/json", _json(body)

    def readiness(self) -> tuple[int, str, bytes]:
        """The ``/readyz`` answer."""
        alive, age = self.alive()
        with self._lock:
            view, failed = self._view, self._batch_failed
        reasons = []
        if not alive:
            reasons.append(f"loop stalled for {age:.0f} s")
        if not view.ok:
            reasons.append(view.detail)
        if failed:
            reasons.append("the last batch failed (retrying)")
        ready = not reasons
        body = {
            "consumer": self.name,
            "status": "ready" if ready else "unready",
            "detail": "; ".join(reasons) or view.detail,
            "lag": dict(view.lag),
            "lag_total": sum(view.lag.values()),
        }
        return (200 if ready else 503), "application/json", _json(body)


def _json(body: object) -> bytes:
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def health_server(health: ConsumerHealth, host: str, port: int) -> OpsServer:
    """``/healthz`` and ``/readyz`` of ``health`` on ``host:port`` (started; port 0: any)."""
    routes = {"/healthz": health.liveness, "/readyz": health.readiness}
    return OpsServer(host, port, routes, name=f"{health.name}-health").start()
