"""SQLite-backed, append-only, tamper-evident ledger: an RFC 6962 Merkle log of audit events.

Every event becomes one leaf ``leaf_hash(data)``; the hash of every *complete* aligned subtree
is stored as it completes, so the root of any prefix and every proof element are O(log n)
reads. Signed tree heads (Ed25519) commit to ``(size, timestamp, root)``; :meth:`LedgerStore.
verify` recomputes the whole tree from the stored event bytes and checks it against the
stored hashes and against every signed head, using the public key alone.

Signed-head message (fixed length, 62 bytes, big-endian, no separators needed)::

    b"telerad-sth-v1"            14 bytes, domain separation / format version
    tree_size                     8 bytes, unsigned big-endian
    timestamp                     8 bytes, unsigned big-endian, milliseconds since the epoch
    root_hash                    32 bytes, MTH of the first tree_size leaves

``key_id`` is *not* signed: it is only a hint for choosing the public key; a head verifies
only against the key that made it, whatever its label says.

What the tree commits to is the event *bytes*: ``event_id`` is the idempotency key of the
store and is not hashed, so callers that need it covered should include it in ``data``.

Concurrency: one connection, one writer. Methods are synchronous and serialised by a lock;
async callers run them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from streams import merkle

__all__ = [
    "STH_DOMAIN",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerStore",
    "Problem",
    "ProblemKind",
    "SignedTreeHead",
    "VerifyReport",
    "sth_message",
]

STH_DOMAIN = b"telerad-sth-v1"
"""Prefix of every signed-head message; also the ``v`` field of the JSON form."""

_U64 = 1 << 64
_ED25519_SIGNATURE_SIZE = 64
_SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS leaves (
    idx         INTEGER PRIMARY KEY,
    event_id    TEXT UNIQUE NOT NULL,
    data        BLOB NOT NULL,
    leaf_hash   BLOB NOT NULL,
    appended_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heads (
    size      INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    signature BLOB NOT NULL,
    key_id    TEXT NOT NULL
);
PRAGMA user_version = {_SCHEMA_VERSION};
"""


class LedgerError(Exception):
    """Base class of the ledger's own errors."""


class LedgerGoneError(LedgerError):
    """The ledger's database file was deleted or replaced while open: stop, never write on."""

    fatal = True  # the consumer runner stops instead of retrying (see streams.runner)


class LedgerCorruptError(LedgerError):
    """A hash the tree needs is missing from the store (run :meth:`LedgerStore.verify`)."""


def sth_message(size: int, timestamp: int, root: bytes) -> bytes:
    """Return the exact bytes a tree head signature covers (see the module docstring).

    Raises ValueError when a field does not fit the fixed-length format.
    """
    if not (0 <= size < _U64 and 0 <= timestamp < _U64):
        raise ValueError("tree_size and timestamp must be unsigned 64-bit integers")
    if len(root) != merkle.HASH_SIZE:
        raise ValueError(f"root must be {merkle.HASH_SIZE} bytes")
    return STH_DOMAIN + size.to_bytes(8, "big") + timestamp.to_bytes(8, "big") + bytes(root)


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A signed commitment to the first ``size`` leaves of the ledger.

    ``timestamp`` is in milliseconds since the Unix epoch; ``signature`` is Ed25519 over
    :func:`sth_message`; ``key_id`` is an unsigned label naming the signing key.
    """

    size: int
    root: bytes
    timestamp: int
    signature: bytes
    key_id: str

    def message(self) -> bytes:
        """Return the signed bytes: ``STH_DOMAIN || size || timestamp || root``."""
        return sth_message(self.size, self.timestamp, self.root)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """Return True iff the signature is valid for this head under ``public_key``.

        Never raises: malformed fields (from a tampered store or JSON) verify as False.
        """
        if not (
            _is_uint(self.size)
            and _is_uint(self.timestamp)
            and isinstance(self.root, bytes)
            and isinstance(self.signature, bytes)
            and len(self.root) == merkle.HASH_SIZE
            and len(self.signature) == _ED25519_SIGNATURE_SIZE
        ):
            return False
        try:
            public_key.verify(self.signature, self.message())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> str:
        """Serialise as compact JSON; hashes and signature are standard base64 (as in CT)."""
        return json.dumps(
            {
                "v": STH_DOMAIN.decode(),
                "tree_size": self.size,
                "timestamp": self.timestamp,
                "root_hash": base64.b64encode(self.root).decode(),
                "signature": base64.b64encode(self.signature).decode(),
                "key_id": self.key_id,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedTreeHead:
        """Parse :meth:`to_json` output. Raises ValueError on anything malformed.

        Parsing does not verify the signature: call :meth:`verify` with the public key.
        """
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("v") != STH_DOMAIN.decode():
            raise ValueError("not a telerad-sth-v1 signed tree head")
        size, timestamp, key_id = obj.get("tree_size"), obj.get("timestamp"), obj.get("key_id")
        if not (_is_uint(size) and _is_uint(timestamp) and isinstance(key_id, str)):
            raise ValueError("tree_size/timestamp must be unsigned integers, key_id a string")
        root = _b64field(obj, "root_hash")
        signature = _b64field(obj, "signature")
        if len(root) != merkle.HASH_SIZE or len(signature) != _ED25519_SIGNATURE_SIZE:
            raise ValueError("root_hash must be 32 bytes and signature 64 bytes")
        return cls(size=size, root=root, timestamp=timestamp, signature=signature, key_id=key_id)


def _is_uint(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def _b64field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a base64 string")
    return base64.b64decode(value, validate=True)


class ProblemKind(StrEnum):
    """What :meth:`LedgerStore.verify` found wrong."""

    LEAF_INDEX_GAP = "leaf_index_gap"
    """Leaf indexes are not 0, 1, 2, ... (a leaf was deleted or inserted without re-indexing)."""
    LEAF_MALFORMED = "leaf_malformed"
    """A leaf row has a column of the wrong type."""
    LEAF_HASH_MISMATCH = "leaf_hash_mismatch"
    """Stored leaf_hash != leaf_hash(data): the event bytes or the hash were changed."""
    NODE_MISMATCH = "node_mismatch"
    """A stored subtree hash differs from the one recomputed from the events."""
    NODE_MISSING = "node_missing"
    """A complete subtree has no stored hash."""
    NODE_UNEXPECTED = "node_unexpected"
    """A stored node does not correspond to any complete subtree of the stored leaves."""
    HEAD_MALFORMED = "head_malformed"
    """A heads row has a column of the wrong type."""
    HEAD_SIGNATURE_INVALID = "head_signature_invalid"
    """A signed head's signature does not verify with the public key (forged or altered)."""
    HEAD_BEYOND_LOG = "head_beyond_log"
    """A signed head covers more leaves than the store holds (leaves were removed)."""
    HEAD_ROOT_MISMATCH = "head_root_mismatch"
    """The root recomputed from the stored events differs from the one a head signed."""
    HEAD_INCONSISTENT = "head_inconsistent"
    """Two consecutive signed heads are not linked by a consistency proof of the events."""
    HEAD_TIMESTAMP_ORDER = "head_timestamp_order"
    """A larger signed head carries an earlier timestamp than a smaller one."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :meth:`LedgerStore.verify`; ``index``/``size``/``level`` locate it."""

    kind: ProblemKind
    message: str
    index: int | None = None
    size: int | None = None
    level: int | None = None


@dataclass(slots=True)
class VerifyReport:
    """The outcome of :meth:`LedgerStore.verify`.

    ``verified_size`` is the largest tree size covered by a signed head whose signature and
    root both check out: leaves beyond it are only self-consistent, not yet signed.
    ``problem_count`` counts every problem; ``problems`` keeps the first ``max_problems``.
    """

    leaves: int = 0
    nodes: int = 0
    heads: int = 0
    verified_size: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    max_problems: int = 10_000

    @property
    def ok(self) -> bool:
        """True iff no problem was found."""
        return self.problem_count == 0

    def of_kind(self, kind: ProblemKind) -> list[Problem]:
        """Return the recorded problems of one kind."""
        return [p for p in self.problems if p.kind is kind]

    def kinds(self) -> set[ProblemKind]:
        """Return the set of problem kinds recorded."""
        return {p.kind for p in self.problems}

    def add(self, problem: Problem) -> None:
        """Record a problem (kept if fewer than ``max_problems`` are recorded)."""
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)


class LedgerStore:
    """An append-only Merkle log of events in one SQLite file (WAL, ``synchronous=FULL``).

    Tables: ``leaves`` (one row per event), ``nodes`` (hash of every complete aligned subtree
    of 2**level leaves, level >= 1; level 0 is ``leaves.leaf_hash``) and ``heads`` (signed
    tree heads, one per size). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path | str) -> None:
        """Open (creating if needed) the ledger at ``path``."""
        self._lock = threading.RLock()
        self._path = Path(path)
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()
        except BaseException:
            self._conn.close()
            raise
        self._size: int = int(row[0])
        self._identity = self._file_identity()
        # Right edge of the tree: _frontier[l] is the hash of the complete subtree of 2**l
        # leaves ending the tree, valid where bit l of _size is set. Loaded lazily so that a
        # damaged store still opens (and verify() can say what is wrong with it).
        self._frontier: list[bytes] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Self:
        """Return the store itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_dev, stat.st_ino)

    def check_file(self) -> None:
        """Raise :class:`LedgerGoneError` if the database file is no longer the one opened.

        SQLite goes on writing to a deleted file's inode, so a deleted or swapped ledger
        would otherwise swallow every later event without a word.
        """
        if self._identity is None or self._file_identity() != self._identity:
            raise LedgerGoneError(f"the ledger file {self._path} was deleted or replaced")

    # -- appending ---------------------------------------------------------------------------

    def append(self, event_id: str, data: bytes) -> int | None:
        """Append one event durably; return its leaf index, or None if event_id is known."""
        return self.append_many([(event_id, data)])[0]

    def append_many(self, items: Iterable[tuple[str, bytes]]) -> list[int | None]:
        """Append events in ONE transaction (one fsync); idempotent by event_id.

        Returns, per item, the new leaf index or None when that event_id was already in the
        ledger (or earlier in the same batch). On error nothing of the batch is kept.
        """
        batch = [(_check_event_id(eid), _check_data(data)) for eid, data in items]
        with self._lock:
            frontier = list(self._load_frontier())
            size = self._size
            results: list[int | None] = []
            node_rows: list[tuple[int, int, bytes]] = []
            now = time.time()
            sha256 = hashlib.sha256
            insert = (
                "INSERT INTO leaves (idx, event_id, data, leaf_hash, appended_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
            )
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for event_id, data in batch:
                    h = sha256(b"\x00" + data).digest()  # RFC 6962: SHA-256(0x00 || d(0))
                    if conn.execute(insert, (size, event_id, data, h, now)).rowcount == 0:
                        results.append(None)  # event_id already appended: no second leaf
                        continue
                    results.append(size)
                    # Leaf `size` completes one subtree per trailing 1-bit of `size`: for each
                    # level l >= 1 with (size + 1) % 2**l == 0, node(l, size >> l) =
                    # node_hash(node(l-1, 2k), node(l-1, 2k+1)).
                    level, n = 0, size
                    while n & 1:
                        h = sha256(b"\x01" + frontier[level] + h).digest()
                        level += 1
                        n >>= 1
                        node_rows.append((level, size >> level, h))
                    if level == len(frontier):
                        frontier.append(h)
                    else:
                        frontier[level] = h
                    size += 1
                conn.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", node_rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._size, self._frontier = size, frontier
            return results

    # -- reading -----------------------------------------------------------------------------

    def size(self) -> int:
        """Return the number of leaves (the next index to be assigned)."""
        with self._lock:
            return self._size

    def root(self, size: int | None = None) -> bytes:
        """Return MTH of the first ``size`` leaves (default: all), from stored subtrees.

        O(log n) reads: one per set bit of ``size``.
        """
        with self._lock:
            size = self._size if size is None else size
            if not 0 <= size <= self._size:
                raise ValueError(f"size {size} out of range 0..{self._size}")
            return merkle.subtree_from_nodes(0, size, self._node)

    def subtree(self, start: int, end: int) -> bytes:
        """Return MTH of the leaves ``[start, end)`` (EMPTY_ROOT when start == end)."""
        with self._lock:
            if not 0 <= start <= end <= self._size:
                raise ValueError(f"range [{start}, {end}) out of range 0..{self._size}")
            return merkle.subtree_from_nodes(start, end, self._node)

    def index_of(self, event_id: str) -> int | None:
        """Return the leaf index of ``event_id``, or None if it was never appended."""
        with self._lock:
            row = self._conn.execute(
                "SELECT idx FROM leaves WHERE event_id = ?", (event_id,)
            ).fetchone()
            return None if row is None else int(row[0])

    def leaf(self, index: int) -> tuple[str, bytes, bytes]:
        """Return ``(event_id, data, leaf_hash)`` of leaf ``index``; IndexError if absent."""
        with self._lock:
            row = self._conn.execute(
                "SELECT event_id, data, leaf_hash FROM leaves WHERE idx = ?", (index,)
            ).fetchone()
            if row is None:
                raise IndexError(f"no leaf {index}")
            return str(row[0]), bytes(row[1]), bytes(row[2])

    def inclusion_proof(self, leaf: int | str, size: int | None = None) -> tuple[int, list[bytes]]:
        """Return ``(index, audit path)`` of a leaf (by index or event_id) in tree ``size``.

        The path is RFC 6962 PATH(index, D[size]), checkable with
        :func:`streams.merkle.verify_inclusion` against :meth:`root` (``size``). Raises
        KeyError for an unknown event_id and ValueError when the leaf is not in that tree.
        """
        with self._lock:
            if isinstance(leaf, str):
                found = self.index_of(leaf)
                if found is None:
                    raise KeyError(leaf)
                index = found
            elif isinstance(leaf, int) and not isinstance(leaf, bool):
                index = leaf
            else:
                raise TypeError("leaf must be an index (int) or an event_id (str)")
            size = self._size if size is None else size
            if not 0 <= size <= self._size:
                raise ValueError(f"size {size} out of range 0..{self._size}")
            return index, merkle.inclusion_proof(index, size, self._subtree_unlocked)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return RFC 6962 PROOF(old_size, D[new_size]) (default new_size: current size)."""
        with self._lock:
            new_size = self._size if new_size is None else new_size
            if not 0 <= old_size <= new_size <= self._size:
                raise ValueError(
                    f"need 0 <= old_size <= new_size <= {self._size}, got {old_size}, {new_size}"
                )
            return merkle.consistency_proof(old_size, new_size, self._subtree_unlocked)

    # -- signed tree heads -------------------------------------------------------------------

    def sign_head(self, private_key: Ed25519PrivateKey, key_id: str) -> SignedTreeHead:
        """Sign and store a tree head for the current size; return it.

        The root comes from the in-memory right edge built while appending (no reads). The
        timestamp is now, in ms, but never earlier than the latest stored head's, so heads
        stay ordered in time as in size. A head for the same size is replaced.
        """
        if not isinstance(key_id, str):
            raise TypeError("key_id must be a string")
        with self._lock:
            size = self._size
            root = _fold_frontier(self._load_frontier(), size)
            row = self._conn.execute("SELECT MAX(timestamp) FROM heads").fetchone()
            latest = row[0] if row and isinstance(row[0], int) else 0
            timestamp = max(time.time_ns() // 1_000_000, latest)
            signature = private_key.sign(sth_message(size, timestamp, root))
            head = SignedTreeHead(size, root, timestamp, signature, key_id)
            self._conn.execute(
                "INSERT OR REPLACE INTO heads (size, root, timestamp, signature, key_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (size, root, timestamp, signature, key_id),
            )
            return head

    def add_head(self, head: SignedTreeHead) -> None:
        """Store a head signed elsewhere (a rebuild or restore), if this ledger reproduces it.

        The signature is the caller's to check; the root must be this ledger's at that size.
        """
        with self._lock:
            if head.size > self._size or self.root(head.size) != head.root:
                raise LedgerError(f"the head of size {head.size} is not this ledger's")
            self._conn.execute(
                "INSERT OR REPLACE INTO heads (size, root, timestamp, signature, key_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (head.size, head.root, head.timestamp, head.signature, head.key_id),
            )

    def heads(self) -> list[SignedTreeHead]:
        """Return the stored signed tree heads, by increasing size (signatures unchecked)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT size, root, timestamp, signature, key_id FROM heads ORDER BY size"
            ).fetchall()
        return [SignedTreeHead(*row) for row in rows]

    def latest_head(self) -> SignedTreeHead | None:
        """Return the stored head of the largest size, or None."""
        heads = self.heads()
        return heads[-1] if heads else None

    # -- verification ------------------------------------------------------------------------

    def verify(self, public_key: Ed25519PublicKey, *, max_problems: int = 10_000) -> VerifyReport:
        """Recompute everything from the stored event bytes and report what disagrees.

        Checks: leaf indexes are 0..n-1; every leaf_hash == leaf_hash(data); every stored
        complete-subtree node equals the one recomputed from the data, none missing, none
        extra; every signed head's signature verifies with ``public_key`` alone, its size is
        within the log and its root equals the root recomputed from the data at that size;
        consecutive heads are linked by a consistency proof over the recomputed tree and
        their timestamps do not go backwards. A changed, deleted, inserted or reordered
        event under a signed head changes that head's recomputed root.

        Memory: 32 bytes per leaf and per node (about 64 MB for 10**6 events).
        """
        started = time.perf_counter()
        report = VerifyReport(max_problems=max_problems)
        with self._lock:
            self._conn.execute("BEGIN")  # one read snapshot for all the passes
            try:
                levels = self._verify_leaves(report)
                self._verify_nodes(report, levels)
                self._verify_heads(report, levels, public_key)
            finally:
                self._conn.execute("COMMIT")
        report.seconds = time.perf_counter() - started
        return report

    def _verify_leaves(self, report: VerifyReport) -> list[bytearray]:
        """Pass 1 and 2: rehash every event, then rebuild every complete-subtree level."""
        sha256 = hashlib.sha256
        level0 = bytearray()
        position = 0
        offset = 0  # idx - position of the previous row; reported each time it changes
        rows = self._conn.execute("SELECT idx, data, leaf_hash FROM leaves ORDER BY idx")
        for idx, data, stored in rows:
            if idx - position != offset:
                offset = idx - position
                report.add(
                    Problem(
                        ProblemKind.LEAF_INDEX_GAP,
                        f"leaf number {position} has index {idx}; indexes must be 0, 1, 2, ...",
                        index=position,
                    )
                )
            if not isinstance(data, bytes):
                report.add(
                    Problem(
                        ProblemKind.LEAF_MALFORMED,
                        f"leaf {idx}: data is {type(data).__name__}, not a BLOB",
                        index=idx,
                    )
                )
                data = str(data).encode()
            h = sha256(b"\x00" + data).digest()
            if stored != h:
                report.add(
                    Problem(
                        ProblemKind.LEAF_HASH_MISMATCH,
                        f"leaf {idx}: stored leaf_hash is not SHA-256(0x00 || data)",
                        index=idx,
                    )
                )
            level0 += h
            position += 1
        report.leaves = position

        levels = [level0]
        prev = level0
        while len(prev) >= 2 * merkle.HASH_SIZE:
            view = memoryview(prev)
            nxt = bytearray()
            pairs_end = (len(prev) // (2 * merkle.HASH_SIZE)) * 2 * merkle.HASH_SIZE
            for j in range(0, pairs_end, 2 * merkle.HASH_SIZE):
                h2 = sha256(b"\x01")  # RFC 6962: SHA-256(0x01 || left || right)
                h2.update(view[j : j + 2 * merkle.HASH_SIZE])
                nxt += h2.digest()
            view.release()
            levels.append(nxt)
            prev = nxt
        return levels

    def _verify_nodes(self, report: VerifyReport, levels: list[bytearray]) -> None:
        """Pass 3: compare the stored nodes, in primary-key order, with the recomputed ones."""
        hs = merkle.HASH_SIZE
        counts = [len(level) // hs for level in levels]

        def missing(level: int, first: int, end: int) -> None:
            if first < end:
                report.add(
                    Problem(
                        ProblemKind.NODE_MISSING,
                        f"no stored hash for level {level} nodes {first}..{end - 1}",
                        index=first,
                        level=level,
                    )
                )

        cur_level, next_idx = 1, 0  # the next node expected in (level, idx) order
        stored = 0
        for level, idx, value in self._conn.execute(
            "SELECT level, idx, hash FROM nodes ORDER BY level, idx"
        ):
            stored += 1
            if not (isinstance(level, int) and isinstance(idx, int)):
                report.add(Problem(ProblemKind.NODE_UNEXPECTED, f"node ({level!r}, {idx!r})"))
                continue
            if not (1 <= level < len(levels) and 0 <= idx < counts[level]):
                report.add(
                    Problem(
                        ProblemKind.NODE_UNEXPECTED,
                        f"stored node level {level} index {idx} is not a complete subtree "
                        f"of the {report.leaves} stored leaves",
                        index=idx,
                        level=level,
                    )
                )
                continue
            while cur_level < level:
                missing(cur_level, next_idx, counts[cur_level])
                cur_level, next_idx = cur_level + 1, 0
            missing(level, next_idx, idx)
            next_idx = idx + 1
            if value != levels[level][idx * hs : (idx + 1) * hs]:
                report.add(
                    Problem(
                        ProblemKind.NODE_MISMATCH,
                        f"node level {level} index {idx} (leaves {idx << level}.."
                        f"{((idx + 1) << level) - 1}) differs from the recomputed hash",
                        index=idx,
                        level=level,
                    )
                )
        while cur_level < len(levels):
            missing(cur_level, next_idx, counts[cur_level])
            cur_level, next_idx = cur_level + 1, 0
        report.nodes = stored

    def _verify_heads(
        self, report: VerifyReport, levels: list[bytearray], public_key: Ed25519PublicKey
    ) -> None:
        """Pass 4: signatures, roots against the recomputed tree, links between heads."""
        hs = merkle.HASH_SIZE
        n = report.leaves

        def node(level: int, idx: int) -> bytes:
            return bytes(levels[level][idx * hs : (idx + 1) * hs])

        def subtree(start: int, end: int) -> bytes:
            return merkle.subtree_from_nodes(start, end, node)

        previous: SignedTreeHead | None = None  # last head with a valid signature
        rows = self._conn.execute(
            "SELECT size, root, timestamp, signature, key_id FROM heads ORDER BY size"
        ).fetchall()
        report.heads = len(rows)
        for row in rows:
            head = SignedTreeHead(*row)
            if not (_is_uint(head.size) and isinstance(head.root, bytes)):
                report.add(Problem(ProblemKind.HEAD_MALFORMED, f"heads row {row[0]!r}"))
                continue
            size = head.size
            signed = head.verify(public_key)
            if not signed:
                report.add(
                    Problem(
                        ProblemKind.HEAD_SIGNATURE_INVALID,
                        f"head for size {size} (key_id {head.key_id!r}): signature does not "
                        "verify with the public key",
                        size=size,
                    )
                )
            if size > n:
                report.add(
                    Problem(
                        ProblemKind.HEAD_BEYOND_LOG,
                        f"head for size {size} but only {n} leaves are stored",
                        size=size,
                    )
                )
                continue
            root_ok = subtree(0, size) == head.root
            if not root_ok:
                report.add(
                    Problem(
                        ProblemKind.HEAD_ROOT_MISMATCH,
                        f"head for size {size}: signed root {head.root.hex()} differs from the "
                        f"root recomputed from the stored events",
                        size=size,
                    )
                )
            if not signed:
                continue
            if root_ok:
                report.verified_size = max(report.verified_size, size)
            if previous is not None:
                proof = merkle.consistency_proof(previous.size, size, subtree)
                if not merkle.verify_consistency(
                    previous.size, size, previous.root, head.root, proof
                ):
                    report.add(
                        Problem(
                            ProblemKind.HEAD_INCONSISTENT,
                            f"signed heads {previous.size} and {size} are not linked by a "
                            "consistency proof over the stored events",
                            size=size,
                        )
                    )
                if head.timestamp < previous.timestamp:
                    report.add(
                        Problem(
                            ProblemKind.HEAD_TIMESTAMP_ORDER,
                            f"head for size {size} is older ({head.timestamp}) than the head "
                            f"for size {previous.size} ({previous.timestamp})",
                            size=size,
                        )
                    )
            previous = head

    # -- internals ---------------------------------------------------------------------------

    def _node(self, level: int, idx: int) -> bytes:
        """Stored hash of the complete subtree of 2**level leaves starting at idx * 2**level."""
        if level == 0:
            row = self._conn.execute(
                "SELECT leaf_hash FROM leaves WHERE idx = ?", (idx,)
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, idx)
            ).fetchone()
        if row is None or not isinstance(row[0], bytes) or len(row[0]) != merkle.HASH_SIZE:
            raise LedgerCorruptError(f"no valid stored hash for node level {level} index {idx}")
        return bytes(row[0])

    def _subtree_unlocked(self, start: int, end: int) -> bytes:
        return merkle.subtree_from_nodes(start, end, self._node)

    def _load_frontier(self) -> list[bytes]:
        """The right-edge subtree hashes for the current size (read once, then maintained)."""
        if self._frontier is None:
            size = self._size
            frontier = [b""] * size.bit_length()
            start = 0
            for level in reversed(range(size.bit_length())):
                if size >> level & 1:
                    frontier[level] = self._node(level, start >> level)
                    start += 1 << level
            self._frontier = frontier
        return self._frontier


def _fold_frontier(frontier: Sequence[bytes], size: int) -> bytes:
    """MTH of the tree whose right edge is ``frontier``: combine smallest to largest."""
    acc: bytes | None = None
    for level in range(size.bit_length()):
        if size >> level & 1:
            acc = frontier[level] if acc is None else merkle.node_hash(frontier[level], acc)
    return merkle.EMPTY_ROOT if acc is None else acc


def _check_event_id(event_id: object) -> str:
    if not isinstance(event_id, str) or not event_id:
        raise TypeError("event_id must be a non-empty string")
    return event_id


def _check_data(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError("data must be bytes")
