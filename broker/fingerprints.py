"""The instance fingerprints every replica checks reads against, held in memory.

``telerad integrity watch`` publishes each fingerprint (the ``instance.stored`` event it also
writes to the audit topic) to a compacted topic keyed by SOP Instance UID
(``TELERAD_KAFKA__FINGERPRINT_TOPIC``). Every replica reads that topic from its beginning into a
:class:`FingerprintIndex` (the same by-hand assignment as the control topic, no consumer group),
and is not ready until it has read it up to the end offsets it saw at start: no replica is the
source of the fingerprints, and none serves a read it could not check.

Memory is bounded by ``TELERAD_INTEGRITY__INDEX_MIB``. An entry costs its SOP Instance UID, 32
bytes per digest (the file's and one per frame) and a fixed :data:`ENTRY_OVERHEAD` for the
Python objects: about 250 bytes for a single-frame instance, so the default 256 MiB holds about
a million instances. Once full, new fingerprints are not taken in and :attr:`FingerprintIndex.full`
is set; a lookup of an instance the index does not hold then answers :data:`UNKNOWN_FULL`, which
the proxy refuses whatever the policy says about unfingerprinted instances (fail closed: a full
index must not turn "never recorded" into "served unchecked").
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal

from broker.audit.events import AuditEvent, EventKind

__all__ = ["ENTRY_OVERHEAD", "UNKNOWN_FULL", "FingerprintIndex", "Recorded", "ServedUnchecked"]

log = logging.getLogger("telerad.integrity")

ENTRY_OVERHEAD: Final = 160  # bytes: dict slot, key str, value tuple and bytes headers
UNKNOWN_FULL: Final = "unknown_index_full"


@dataclass(frozen=True, slots=True)
class Recorded:
    """What an instance was when the watcher fingerprinted it."""

    file_sha256: bytes
    frame_sha256: tuple[bytes, ...]
    transfer_syntax: str

    def cost(self, sop_uid: str) -> int:
        return ENTRY_OVERHEAD + len(sop_uid) + 32 * (1 + len(self.frame_sha256))


class FingerprintIndex:
    """SOP Instance UID → :class:`Recorded`, bounded in bytes; safe across threads.

    Fed by the fingerprint-topic listener's thread (:meth:`apply`), read by requests on the
    event loop (:meth:`lookup`).
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._entries: dict[str, Recorded] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.full = False
        self.dropped = 0  # fingerprints not taken in because the index was full

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def apply(self, event: AuditEvent) -> bool:
        """Take in an ``instance.stored`` event's fingerprint; False for anything else."""
        if event.kind is not EventKind.INSTANCE_STORED:
            return False
        raw = event.detail.get("fingerprint")
        if not isinstance(raw, dict):
            return False
        try:
            sop_uid = str(raw["sop_uid"])
            recorded = Recorded(
                file_sha256=bytes.fromhex(str(raw["file_sha256"])),
                frame_sha256=tuple(bytes.fromhex(str(h)) for h in raw.get("frame_sha256", [])),
                transfer_syntax=str(raw.get("transfer_syntax", "")),
            )
        except (KeyError, ValueError, TypeError):
            log.warning("ignored a malformed fingerprint record")
            return False
        if len(recorded.file_sha256) != 32 or any(len(h) != 32 for h in recorded.frame_sha256):
            log.warning("ignored a fingerprint record with a digest that is not SHA-256")
            return False
        with self._lock:
            old = self._entries.get(sop_uid)
            grown = recorded.cost(sop_uid) - (old.cost(sop_uid) if old else 0)
            if self._bytes + grown > self._max:
                if not self.full:
                    log.error(
                        "fingerprint index full (%d instances, %d bytes): unknown instances "
                        "are refused; raise TELERAD_INTEGRITY__INDEX_MIB",
                        len(self._entries),
                        self._bytes,
                    )
                self.full = True
                self.dropped += 1
                return False
            self._entries[sop_uid] = recorded
            self._bytes += grown
        return True

    def lookup(self, sop_uid: str) -> Recorded | Literal["unknown_index_full"] | None:
        """The instance's fingerprint; None if it has none; :data:`UNKNOWN_FULL` if it may
        have one the full index could not take in."""
        found = self._entries.get(sop_uid)
        if found is None and self.full:
            return UNKNOWN_FULL
        return found


class ServedUnchecked:
    """The instances this replica recently served without a fingerprint (bounded, LRU), so
    that the ``integrity.violation`` event saying so is raised once per instance, not per frame.
    """

    def __init__(self, remember: int = 4096) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def first(self, sop_uid: str) -> bool:
        """True the first time ``sop_uid`` is seen (again after it was forgotten)."""
        if sop_uid in self._seen:
            self._seen.move_to_end(sop_uid)
            return False
        self._seen[sop_uid] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return True

    def forget(self, sop_uid: str) -> None:
        """Take ``sop_uid`` back (its event could not be recorded: the next read tries again)."""
        self._seen.pop(sop_uid, None)
