"""Where audit events go. A sink either makes an event durable or raises; it never drops one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from broker.audit.events import AuditEvent
from broker.errors import DependencyUnavailable

__all__ = ["AuditSink", "AuditUnavailable", "LogSink", "MemorySink"]

log = logging.getLogger("telerad.audit")


class AuditUnavailable(DependencyUnavailable):
    """The event could not be made durable: the caller must not grant (fail closed; a 503)."""

    message = "The audit trail is unavailable; nothing was granted."


class AuditSink(Protocol):
    """Records audit events; ``emit`` returns only once the event is durable."""

    async def emit(self, event: AuditEvent) -> None: ...

    async def emit_many(self, events: Sequence[AuditEvent]) -> None:
        """Return once every one of ``events`` is durable (one produce, one wait)."""
        ...

    async def close(self) -> None: ...


class MemorySink:
    """Keeps events in a list (tests, and development without Kafka)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.fail = False

    async def emit(self, event: AuditEvent) -> None:
        if self.fail:
            raise AuditUnavailable("memory sink set to fail")
        self.events.append(event)

    async def emit_many(self, events: Sequence[AuditEvent]) -> None:
        if self.fail:
            raise AuditUnavailable("memory sink set to fail")
        self.events.extend(events)

    async def close(self) -> None:
        return None

    def kinds(self) -> list[str]:
        return [event.kind.value for event in self.events]


class LogSink:
    """Writes each event as a structured log line (until the Kafka sink is configured)."""

    async def emit(self, event: AuditEvent) -> None:
        log.info("audit %s", event.type, extra={"audit": event.model_dump(mode="json")})

    async def emit_many(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            await self.emit(event)

    async def close(self) -> None:
        return None
