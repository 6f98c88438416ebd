"""The export consumer: FHIR R4 AuditEvent (IHE BALP) or DICOM PS3.15 audit messages.

To files (one record per line, fsync'd before the offsets are committed) under the export
directory, or as RFC 5424 syslog to a SIEM: over UDP, TCP, or TLS (RFC 5425, the collector
verified against ``streams.syslog_tls``). Idempotent by event id: the ids already exported are
kept in a small SQLite table beside the files, so a re-delivered batch is not written twice (a
crash between the fsync and that table can repeat a line; each line carries the event id).
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

from broker.audit.events import AuditEvent
from broker.config import Settings
from streams.formats import (
    FileExporter,
    SyslogSender,
    syslog_severity,
    syslog_timestamp,
    to_dicom_audit_message,
    to_fhir_audit_event,
    to_syslog,
)

__all__ = ["Exporter", "run_export"]


class Exporter:
    """Turns batches of events into export records and writes them once each."""

    def __init__(self, directory: Path, fmt: str, sender: SyslogSender | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.format = fmt
        self._sender = sender
        suffix = "fhir.ndjson" if fmt == "fhir" else "dicom-audit.xml.lines"
        self._file = FileExporter(directory / f"audit-{suffix}") if sender is None else None
        self._seen = sqlite3.connect(directory / f"exported-{fmt}.sqlite3", check_same_thread=False)
        self._seen.execute("CREATE TABLE IF NOT EXISTS exported (event_id TEXT PRIMARY KEY)")
        self._host = socket.gethostname()
        self.written = 0

    def handle(self, events: list[AuditEvent]) -> dict[str, str]:
        """Export the events not yet exported; name those no format can express."""
        fresh = [e for e in events if not self._exported(e.id)]
        rejected: dict[str, str] = {}
        for event in fresh:
            data = event.model_dump(mode="json")
            try:
                if self.format == "fhir":
                    record: Any = to_fhir_audit_event(data, ce_type=event.type)
                    text = json.dumps(record, separators=(",", ":"), sort_keys=True)
                else:
                    text = to_dicom_audit_message(data, ce_type=event.type)
            except ValueError as exc:
                rejected[event.id] = str(exc)[:200]
                continue
            if self._sender is not None:
                line = to_syslog(
                    text,
                    hostname=self._host,
                    severity=syslog_severity(data, ce_type=event.type),
                    timestamp=syslog_timestamp(event.time),
                )
                self._sender.send(line)
            elif self._file is not None:
                self._file.write(text)
        if self._file is not None:
            self._file.flush()  # durable before the ids are recorded and the offsets committed
        with self._seen:
            self._seen.executemany(
                "INSERT OR IGNORE INTO exported (event_id) VALUES (?)", [(e.id,) for e in fresh]
            )
        self.written += len(fresh) - len(rejected)
        return rejected

    def _exported(self, event_id: str) -> bool:
        row = self._seen.execute(
            "SELECT 1 FROM exported WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sender is not None:
            self._sender.close()
        self._seen.close()


def run_export(settings: Settings, args: argparse.Namespace) -> int:
    """``telerad audit export``."""
    from broker.audit.kafka import security_config
    from broker.tls import client_ssl_context
    from streams.runner import ConsumerRunner

    sender = None
    if args.syslog:
        host, _, port = args.syslog.rpartition(":")
        # RFC 5425: the collector's certificate and host name are verified (CA bundle from
        # TELERAD_STREAMS__SYSLOG_TLS__CA_FILE), a client certificate shown when configured
        context = (
            client_ssl_context(settings.streams.syslog_tls) if args.protocol == "tls" else None
        )
        sender = SyslogSender(host, int(port), protocol=args.protocol, ssl_context=context)
    exporter = Exporter(settings.streams.export_dir, args.format, sender)
    try:
        runner = ConsumerRunner(
            f"export-{args.format}",
            bootstrap=settings.kafka.bootstrap_servers,
            topic=settings.kafka.audit_topic,
            group_id=args.group
            if args.group != "telerad-export"
            else f"telerad-export-{args.format}",
            handler=exporter.handle,
            dead_letter_topic=settings.streams.dead_letter_topic,
            client_config=security_config(settings.kafka),
            **settings.streams.health_options(),
        )
        runner.install_signal_handlers()
        stats = runner.run(idle_exit_seconds=args.idle_exit, give_up_seconds=args.give_up)
    finally:
        exporter.close()
    print(json.dumps({"events": stats.events, "written": exporter.written}), file=sys.stdout)
    return 0
