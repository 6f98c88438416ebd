"""Getting the ledger back: rebuild from the topics, backup and restore, checks against heads.

The ledger appends events in consumption order, which no one can guess afterwards. So before
each batch it appends, the ledger consumer publishes a :class:`Segment` to the segments topic
(``telerad.ledger.segments.v1``, one partition's offsets ``first..last`` and the ledger size
before them), and acknowledged before anything is appended. Replaying the segments in order,
reading those offsets from the audit topic and appending as the consumer did (idempotent by
event id, unreadable records skipped), gives the same leaves in the same order, hence the same
roots as every signed head on the heads topic. A segment published for a batch that a crash
kept from being appended, or delivered twice, replays as nothing new.

- :func:`rebuild` fills an empty ledger from the segments and the audit topic, then stores every
  published head whose root it reproduces (a head it does not reproduce is a finding).
- :func:`backup` copies a live ledger with SQLite's online backup, then checks the copy.
- :func:`restore` puts a checked backup in place and replays the segments beyond its size, so
  the ledger catches up with what was appended after the backup (and verifies against the
  newest published head).
- :func:`check_against_heads` compares a ledger with the heads published on the heads topic:
  an emptied, truncated or rolled-back ledger fails even when it is consistent in itself.

All of this needs the audit topic to keep every event (its retention is the hospital's record
keeping period) and the segments and heads topics to keep every record (never compacted).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.cloudevents import PoisonRecord, from_record
from broker.audit.events import AuditEvent
from streams.ledger import event_bytes
from streams.ledger_store import LedgerStore, SignedTreeHead
from streams.segments import Segment

__all__ = [
    "Report",
    "backup",
    "check_against_heads",
    "read_topic_values",
    "rebuild",
    "replay",
    "restore",
]


@dataclass
class Report:
    """What a rebuild, restore or check found."""

    segments: int = 0
    appended: int = 0
    duplicates: int = 0
    unreadable: int = 0
    heads_checked: int = 0
    size: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "size": self.size,
            "segments": self.segments,
            "appended": self.appended,
            "duplicates_skipped": self.duplicates,
            "unreadable_records": self.unreadable,
            "heads_checked": self.heads_checked,
            "problems": self.problems[:100],
        }


# (topic, partition, first, last) -> the records' (value, headers) in offset order
Fetch = Callable[[str, int, int, int], list[tuple[bytes, list[tuple[str, bytes]]]]]


def replay(
    store: LedgerStore,
    segments: Iterable[Segment],
    fetch: Fetch,
    *,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Append what each segment names, as the ledger consumer did."""
    report = Report()
    for segment in segments:
        report.segments += 1
        events: list[AuditEvent] = []
        for value, headers in fetch(
            segment.topic, segment.partition, segment.first_offset, segment.last_offset
        ):
            try:
                events.append(from_record(value, headers))
            except PoisonRecord:
                report.unreadable += 1  # dead-lettered by the consumer too, never a leaf
        if events:
            results = store.append_many([(e.id, event_bytes(e)) for e in events])
            added = sum(1 for r in results if r is not None)
            report.appended += added
            report.duplicates += len(results) - added
        if progress is not None and report.segments % 100 == 0:
            progress(report)
    report.size = store.size()
    return report


def _head_problem(
    store: LedgerStore, head: SignedTreeHead, public_key: Ed25519PublicKey
) -> str | None:
    size = store.size()
    if not head.verify(public_key):
        return f"head_signature: the published head of size {head.size} is forged"
    if head.size > size:
        return (
            f"ledger_behind_head: the ledger has {size} leaves, a published head has "
            f"{head.size} (emptied, truncated or rolled back)"
        )
    if store.root(head.size) != head.root:
        return f"root_differs: the ledger's root at size {head.size} is not the head's"
    return None


def check_against_heads(
    store: LedgerStore, heads: Iterable[SignedTreeHead], public_key: Ed25519PublicKey
) -> list[str]:
    """Every published head must verify and be reproduced by the ledger at its size."""
    return [p for head in heads if (p := _head_problem(store, head, public_key)) is not None]


def _keep_heads(
    store: LedgerStore,
    heads: Iterable[SignedTreeHead],
    public_key: Ed25519PublicKey,
    report: Report,
) -> None:
    """Store every head the ledger reproduces; the others are findings."""
    for head in heads:
        problem = _head_problem(store, head, public_key)
        if problem is None:
            store.add_head(head)
            report.heads_checked += 1
        else:
            report.problems.append(problem)


def rebuild(
    store: LedgerStore,
    segments: Iterable[Segment],
    fetch: Fetch,
    heads: list[SignedTreeHead],
    public_key: Ed25519PublicKey,
    *,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Fill an empty ledger from the segments, then keep every head it reproduces."""
    if store.size() != 0:
        raise ValueError("rebuild fills an empty ledger; this one has leaves")
    report = replay(store, segments, fetch, progress=progress)
    _keep_heads(store, heads, public_key, report)
    return report


def backup(source: Path, destination: Path, public_key: Ed25519PublicKey) -> Report:
    """Copy the live ledger at ``source`` with SQLite's online backup, then verify the copy."""
    if destination.exists():
        raise FileExistsError(f"{destination} exists; a backup never overwrites")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(str(source)) as live, sqlite3.connect(str(partial)) as copy:
        live.backup(copy)
    copy.close()
    report = _verified(partial, public_key)
    if not report.ok:
        partial.unlink(missing_ok=True)
        return report
    partial.rename(destination)
    return report


def restore(
    backup_path: Path,
    ledger_path: Path,
    public_key: Ed25519PublicKey,
    segments: Iterable[Segment],
    fetch: Fetch,
    heads: list[SignedTreeHead],
) -> Report:
    """Put a verified backup in place of the ledger and replay what came after it."""
    checked = _verified(backup_path, public_key)
    if not checked.ok:
        return checked
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    staging = ledger_path.with_name(ledger_path.name + ".restoring")
    staging.unlink(missing_ok=True)
    shutil.copyfile(backup_path, staging)
    with LedgerStore(staging) as store:
        size = store.size()
        later = (s for s in segments if s.size_before >= size or _overlaps(s, size))
        report = replay(store, later, fetch)
        _keep_heads(store, heads, public_key, report)
    if report.ok:
        for suffix in ("-wal", "-shm"):
            Path(str(ledger_path) + suffix).unlink(missing_ok=True)
        staging.replace(ledger_path)
    return report


def _overlaps(segment: Segment, size: int) -> bool:
    # a segment that began before the backup's size may still hold leaves beyond it
    return (
        segment.size_before
        < size
        <= segment.size_before + (segment.last_offset - segment.first_offset + 1)
    )


def _verified(path: Path, public_key: Ed25519PublicKey) -> Report:
    report = Report()
    with LedgerStore(path) as store:
        found = store.verify(public_key)
        report.size = store.size()
        report.problems = [f"{p.kind}: {p.message}" for p in found.problems]
    return report


def read_topic_values(consumer: Any, topic: str) -> Iterator[bytes]:
    """Every record value of ``topic`` from the beginning to its end now, partition by partition
    (a one-partition topic keeps the order it was published in)."""
    from kafka import TopicPartition

    partitions = sorted(
        TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
    )
    for tp in partitions:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    if record.offset < end:
                        yield record.value


def kafka_fetch(consumer: Any) -> Fetch:
    """A :data:`Fetch` reading offset ranges with an assigned (group-less) consumer."""
    from kafka import TopicPartition

    def fetch(
        topic: str, partition: int, first: int, last: int
    ) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, first)
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        while consumer.position(tp) <= last:
            polled = consumer.poll(timeout_ms=2000).get(tp, [])
            if not polled and consumer.position(tp) <= last:
                end = consumer.end_offsets([tp])[tp]
                if end <= consumer.position(tp):
                    raise LookupError(
                        f"{topic}/{partition}: offsets up to {last} are gone (retention?)"
                    )
            for record in polled:
                if first <= record.offset <= last:
                    out.append((record.value, list(record.headers or [])))
        return out

    return fetch
