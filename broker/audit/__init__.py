"""Audit events and the sinks that make them durable before anything is granted."""

from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.audit.sink import AuditSink, AuditUnavailable, LogSink, MemorySink

__all__ = [
    "AuditEvent",
    "AuditSink",
    "AuditUnavailable",
    "EventKind",
    "LogSink",
    "MemorySink",
    "Outcome",
]
