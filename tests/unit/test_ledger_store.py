"""The SQLite Merkle ledger: appends, proofs, signed heads and tamper detection."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from streams import merkle
from streams.ledger_store import (
    STH_DOMAIN,
    LedgerStore,
    ProblemKind,
    SignedTreeHead,
    VerifyReport,
    sth_message,
)

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.generate()


def event(i: int) -> tuple[str, bytes]:
    body = {"event_id": f"ev-{i}", "actor": f"dr-{i % 7}", "study": f"1.2.3.{i}", "op": "view"}
    return f"ev-{i}", json.dumps(body, sort_keys=True).encode()


def events(start: int, stop: int) -> list[tuple[str, bytes]]:
    return [event(i) for i in range(start, stop)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def store(db: Path) -> Iterator[LedgerStore]:
    with LedgerStore(db) as s:
        yield s


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """Direct write access to the file, as an attacker with the disk but not the key has."""
    conn = sqlite3.connect(path)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def rehash_everything(conn: sqlite3.Connection) -> None:
    """What a careful attacker does after editing events: rewrite every derived hash."""
    rows = conn.execute("SELECT idx, data FROM leaves ORDER BY idx").fetchall()
    level = []
    for idx, data in rows:
        h = merkle.leaf_hash(data)
        conn.execute("UPDATE leaves SET leaf_hash = ? WHERE idx = ?", (h, idx))
        level.append(h)
    conn.execute("DELETE FROM nodes")
    lv = 0
    while len(level) >= 2:
        lv += 1
        level = [merkle.node_hash(level[2 * j], level[2 * j + 1]) for j in range(len(level) // 2)]
        conn.executemany(
            "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
            [(lv, j, h) for j, h in enumerate(level)],
        )


def signed_ledger(db: Path, sizes: list[int]) -> list[SignedTreeHead]:
    """A ledger with a signed head at each of ``sizes`` (ascending); returns those heads."""
    heads = []
    with LedgerStore(db) as s:
        for size in sizes:
            s.append_many(events(s.size(), size))
            heads.append(s.sign_head(KEY, "k1"))
        assert s.verify(PUB).ok
    return heads


def verify_file(db: Path, public_key: Ed25519PublicKey = PUB) -> VerifyReport:
    with LedgerStore(db) as s:
        return s.verify(public_key)


# --- appending -------------------------------------------------------------------------------


def test_append_assigns_consecutive_indexes_and_is_idempotent(store: LedgerStore) -> None:
    assert store.size() == 0
    assert store.root() == merkle.EMPTY_ROOT
    assert store.append("a", b"one") == 0
    assert store.append("b", b"two") == 1
    assert store.append("a", b"one again") is None  # same event_id: no second leaf
    assert store.size() == 2
    assert store.leaf(0) == ("a", b"one", merkle.leaf_hash(b"one"))
    assert store.index_of("b") == 1
    assert store.index_of("nope") is None
    with pytest.raises(IndexError):
        store.leaf(2)


def test_append_many_dedupes_within_the_batch_and_against_the_store(store: LedgerStore) -> None:
    store.append("x", b"x")
    got = store.append_many([("a", b"1"), ("x", b"dup"), ("b", b"2"), ("a", b"dup"), ("c", b"3")])
    assert got == [1, None, 2, None, 3]
    assert store.size() == 4
    assert [store.leaf(i)[0] for i in range(4)] == ["x", "a", "b", "c"]
    assert store.append_many([]) == []


def test_a_bad_batch_appends_nothing(store: LedgerStore) -> None:
    store.append("a", b"1")
    with pytest.raises(TypeError):
        store.append_many([("b", b"2"), ("c", "not bytes")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.append("", b"empty id")
    assert store.size() == 1
    assert store.append("b", b"2") == 1


def test_roots_and_proofs_match_the_pure_tree_for_every_size(store: LedgerStore) -> None:
    items = events(0, 70)
    hashes = [merkle.leaf_hash(d) for _, d in items]
    roots = [merkle.root(hashes[:n]) for n in range(len(items) + 1)]
    for n, (eid, data) in enumerate(items):
        assert store.root() == roots[n]
        assert store.append(eid, data) == n
    for n in range(len(items) + 1):
        assert store.root(n) == roots[n]
        for i in range(n):
            index, proof = store.inclusion_proof(i, n)
            assert index == i
            assert merkle.verify_inclusion(hashes[i], i, n, proof, roots[n])
        for old in range(n + 1):
            proof = store.consistency_proof(old, n)
            assert merkle.verify_consistency(old, n, roots[old], roots[n], proof)
    for start in range(0, 70, 7):
        for end in range(start, 71, 5):
            assert store.subtree(start, end) == merkle.root(hashes[start:end])


def test_nodes_table_holds_exactly_the_complete_subtrees(store: LedgerStore, db: Path) -> None:
    store.append_many(events(0, 11))
    store.append_many(events(11, 23))
    hashes = [merkle.leaf_hash(d) for _, d in events(0, 23)]
    expected = {
        (level, idx, merkle.root(hashes[idx << level : (idx + 1) << level]))
        for level in range(1, 5)
        for idx in range(23 >> level)
    }
    with raw(db) as conn:
        assert set(conn.execute("SELECT level, idx, hash FROM nodes").fetchall()) == expected
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_proofs_by_event_id_and_bad_arguments(store: LedgerStore) -> None:
    store.append_many(events(0, 10))
    index, proof = store.inclusion_proof("ev-6")
    assert index == 6
    assert merkle.verify_inclusion(store.leaf(6)[2], 6, 10, proof, store.root())
    assert store.inclusion_proof("ev-6", 7)[1] == store.inclusion_proof(6, 7)[1]
    with pytest.raises(KeyError):
        store.inclusion_proof("ev-404")
    with pytest.raises(ValueError):
        store.inclusion_proof(6, 6)  # leaf 6 is not in the tree of size 6
    with pytest.raises(ValueError):
        store.inclusion_proof(0, 11)
    with pytest.raises(ValueError):
        store.consistency_proof(5, 11)
    with pytest.raises(ValueError):
        store.consistency_proof(6, 5)
    with pytest.raises(ValueError):
        store.root(11)
    with pytest.raises(ValueError):
        store.subtree(3, 11)


def test_reopening_continues_the_same_tree(db: Path) -> None:
    with LedgerStore(db) as s:
        s.append_many(events(0, 37))
        s.sign_head(KEY, "k1")
    with LedgerStore(db) as s:
        assert s.size() == 37
        assert s.append_many(events(30, 67)) == [None] * 7 + list(range(37, 67))
        s.sign_head(KEY, "k1")
        hashes = [merkle.leaf_hash(d) for _, d in events(0, 67)]
        assert s.root() == merkle.root(hashes)
        assert [h.size for h in s.heads()] == [37, 67]
        report = s.verify(PUB)
    assert report.ok, report.problems
    assert (report.leaves, report.heads, report.verified_size) == (67, 2, 67)


def test_appends_from_worker_threads(store: LedgerStore) -> None:
    async def main() -> list[int | None]:
        batches = [events(i, i + 10) for i in range(0, 100, 10)]
        results = await asyncio.gather(*(asyncio.to_thread(store.append_many, b) for b in batches))
        return [i for r in results for i in r]

    assert sorted(i for i in asyncio.run(main()) if i is not None) == list(range(100))
    assert store.verify(PUB).ok


# --- signed tree heads ----------------------------------------------------------------------


def test_signed_head_message_format() -> None:
    root = bytes(range(32))
    msg = sth_message(0x0102, 0x0A0B0C, root)
    assert msg == b"telerad-sth-v1" + bytes.fromhex("000000000000010200000000000a0b0c") + root
    assert len(msg) == 62 and msg.startswith(STH_DOMAIN)
    for bad in [(-1, 0, root), (2**64, 0, root), (0, -1, root), (0, 0, root[:31])]:
        with pytest.raises(ValueError):
            sth_message(*bad)


def test_sign_verify_and_json_round_trip(store: LedgerStore) -> None:
    store.append_many(events(0, 5))
    head = store.sign_head(KEY, "k1")
    assert (head.size, head.root, head.key_id) == (5, store.root(), "k1")
    assert head.verify(PUB)
    assert not head.verify(OTHER_KEY.public_key())
    PUB.verify(head.signature, head.message())  # plain Ed25519 over the documented bytes

    again = SignedTreeHead.from_json(head.to_json())
    assert again == head and again.verify(PUB)
    assert json.loads(head.to_json())["tree_size"] == 5

    for forged in [
        replace(head, size=4),
        replace(head, timestamp=head.timestamp + 1),
        replace(head, root=merkle.EMPTY_ROOT),
        replace(head, signature=bytes(64)),
        replace(head, signature=head.signature[:-1]),
        replace(head, size=-1),
    ]:
        assert not forged.verify(PUB)
    assert replace(head, key_id="relabelled").verify(PUB)  # key_id is a hint, not signed


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "not json",
        '{"v": "telerad-sth-v2"}',
        '{"v":"telerad-sth-v1","tree_size":-1,"timestamp":0,"root_hash":"","signature":"","key_id":"k"}',
        '{"v":"telerad-sth-v1","tree_size":1,"timestamp":0,"root_hash":"!!","signature":"","key_id":"k"}',
        '{"v":"telerad-sth-v1","tree_size":1,"timestamp":0,"root_hash":"AAAA","signature":"AAAA","key_id":"k"}',
    ],
)
def test_from_json_rejects_malformed_heads(text: str) -> None:
    with pytest.raises(ValueError):
        SignedTreeHead.from_json(text)


def test_heads_are_listed_by_size_and_re_signing_replaces(store: LedgerStore) -> None:
    store.sign_head(KEY, "k1")  # the empty tree can be signed too
    store.append_many(events(0, 3))
    first = store.sign_head(KEY, "k1")
    second = store.sign_head(KEY, "k2")
    assert [h.size for h in store.heads()] == [0, 3]
    assert store.heads()[1] == second == store.latest_head()
    assert second.timestamp >= first.timestamp
    assert store.heads()[0].root == merkle.EMPTY_ROOT
    assert store.verify(PUB).ok


# --- verification and tampering --------------------------------------------------------------


def test_clean_ledger_verifies(db: Path) -> None:
    assert verify_file(db).ok  # empty
    signed_ledger(db, [3, 8, 21])
    with LedgerStore(db) as s:
        s.append_many(events(21, 30))  # an unsigned tail is not a problem, only not covered
        report = s.verify(PUB)
    assert report.ok
    assert (report.leaves, report.heads, report.verified_size) == (30, 3, 21)
    assert report.nodes == sum(30 >> level for level in range(1, 5))


def test_verification_needs_only_the_public_key(db: Path) -> None:
    heads = signed_ledger(db, [9, 20])
    published = heads[-1].to_json()
    public_bytes = PUB.public_bytes(Encoding.Raw, PublicFormat.Raw)

    # A third party with the file and 32 public bytes, nothing else:
    pub = Ed25519PublicKey.from_public_bytes(public_bytes)
    with LedgerStore(db) as s:
        report = s.verify(pub)
        head = SignedTreeHead.from_json(published)
        index, proof = s.inclusion_proof("ev-13", head.size)
        _, data, _ = s.leaf(index)
        old = s.heads()[0]
        consistency = s.consistency_proof(old.size, head.size)
    assert report.ok and report.verified_size == 20
    assert head.verify(pub) and old.verify(pub)
    assert merkle.verify_inclusion(merkle.leaf_hash(data), index, head.size, proof, head.root)
    assert merkle.verify_consistency(old.size, head.size, old.root, head.root, consistency)
    # ... and the wrong public key rejects every head.
    bad = verify_file(db, OTHER_KEY.public_key())
    assert {p.size for p in bad.of_kind(ProblemKind.HEAD_SIGNATURE_INVALID)} == {9, 20}


def test_edited_event_is_detected(db: Path) -> None:
    signed_ledger(db, [10, 16])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET data = ? WHERE idx = 12", (b'{"op":"nothing to see"}',))
    report = verify_file(db)
    assert [p.index for p in report.of_kind(ProblemKind.LEAF_HASH_MISMATCH)] == [12]
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)] == [16]
    assert report.verified_size == 10  # the head at 10 does not cover leaf 12


def test_edited_event_with_every_hash_rewritten_is_detected_by_the_signed_head(db: Path) -> None:
    signed_ledger(db, [10, 16])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET data = ? WHERE idx = 3", (b'{"op":"rewritten"}',))
        rehash_everything(conn)
    report = verify_file(db)
    # Internally consistent again: only the signatures remember the old events.
    assert ProblemKind.LEAF_HASH_MISMATCH not in report.kinds()
    assert ProblemKind.NODE_MISMATCH not in report.kinds()
    assert {p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)} == {10, 16}
    assert report.verified_size == 0


def test_stale_node_after_edit_is_reported(db: Path) -> None:
    signed_ledger(db, [8])
    with raw(db) as conn:  # data and leaf_hash updated, nodes left alone
        conn.execute(
            "UPDATE leaves SET data = ?, leaf_hash = ? WHERE idx = 5",
            (b"forged", merkle.leaf_hash(b"forged")),
        )
    report = verify_file(db)
    assert ProblemKind.LEAF_HASH_MISMATCH not in report.kinds()
    mismatched = {(p.level, p.index) for p in report.of_kind(ProblemKind.NODE_MISMATCH)}
    assert mismatched == {(1, 2), (2, 1), (3, 0)}  # every subtree above leaf 5
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)] == [8]


def test_deleted_event_is_detected(db: Path) -> None:
    signed_ledger(db, [6, 14])
    with raw(db) as conn:
        conn.execute("DELETE FROM leaves WHERE idx = 9")
    report = verify_file(db)
    gaps = report.of_kind(ProblemKind.LEAF_INDEX_GAP)
    assert [p.index for p in gaps] == [9]
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_BEYOND_LOG)] == [14]
    assert report.verified_size == 6


def test_deleted_and_reindexed_event_is_detected(db: Path) -> None:
    signed_ledger(db, [6, 14, 20])
    with raw(db) as conn:
        conn.execute("DELETE FROM leaves WHERE idx = 9")
        conn.execute("UPDATE leaves SET idx = -idx WHERE idx > 9")  # shift down without
        conn.execute("UPDATE leaves SET idx = -idx - 1 WHERE idx < 0")  # PK collisions
        rehash_everything(conn)
    report = verify_file(db)
    assert ProblemKind.LEAF_INDEX_GAP not in report.kinds()
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)] == [14]
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_BEYOND_LOG)] == [20]
    assert report.verified_size == 6


def test_inserted_event_is_detected(db: Path) -> None:
    signed_ledger(db, [6, 14])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET idx = -idx - 1 WHERE idx >= 4")  # make room at 4
        conn.execute("UPDATE leaves SET idx = -idx WHERE idx < 0")
        conn.execute(
            "INSERT INTO leaves (idx, event_id, data, leaf_hash, appended_at) VALUES (?,?,?,?,0)",
            (4, "ev-backdated", b"backdated", merkle.leaf_hash(b"backdated")),
        )
        rehash_everything(conn)
    report = verify_file(db)
    assert {p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)} == {6, 14}
    assert report.verified_size == 0 and report.leaves == 15


def test_unsigned_tail_is_not_covered_but_not_a_problem(db: Path) -> None:
    # Appending at the end is what a log is for: such a leaf is just not covered until signed.
    signed_ledger(db, [6])
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO leaves VALUES (6, 'ev-late', x'00', ?, 0)", (merkle.leaf_hash(b"\x00"),)
        )
    report = verify_file(db)
    assert report.ok and report.verified_size == 6 and report.leaves == 7


@pytest.mark.parametrize("rehash", [False, True])
def test_swapped_events_are_detected(db: Path, rehash: bool) -> None:
    signed_ledger(db, [4, 12])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET idx = -1 WHERE idx = 5")
        conn.execute("UPDATE leaves SET idx = 5 WHERE idx = 8")
        conn.execute("UPDATE leaves SET idx = 8 WHERE idx = -1")
        if rehash:
            rehash_everything(conn)
    report = verify_file(db)
    assert ProblemKind.LEAF_HASH_MISMATCH not in report.kinds()  # each row is self-consistent
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_ROOT_MISMATCH)] == [12]
    if not rehash:
        assert {(p.level, p.index) for p in report.of_kind(ProblemKind.NODE_MISMATCH)} >= {
            (1, 2),
            (1, 4),
        }
    assert report.verified_size == 4


def test_head_forged_without_the_key_is_detected(db: Path) -> None:
    signed_ledger(db, [5, 9])
    with LedgerStore(db) as s:
        s.append_many(events(9, 13))
        root13 = s.root(13)
    # The attacker computes the right root but can only sign with some other key.
    forged = sth_message(13, 1_900_000_000_000, root13)
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO heads VALUES (13, ?, 1900000000000, ?, 'k1')",
            (root13, OTHER_KEY.sign(forged)),
        )
    report = verify_file(db)
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_SIGNATURE_INVALID)] == [13]
    assert report.kinds() == {ProblemKind.HEAD_SIGNATURE_INVALID}
    assert report.verified_size == 9


def test_modified_signature_is_detected(db: Path) -> None:
    heads = signed_ledger(db, [5, 9])
    sig = bytearray(heads[0].signature)
    sig[10] ^= 0x40
    with raw(db) as conn:
        conn.execute("UPDATE heads SET signature = ? WHERE size = 5", (bytes(sig),))
    report = verify_file(db)
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_SIGNATURE_INVALID)] == [5]
    assert report.kinds() == {ProblemKind.HEAD_SIGNATURE_INVALID}


def test_rewritten_history_with_rewritten_head_roots_is_detected(db: Path) -> None:
    signed_ledger(db, [7])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET data = x'deadbeef' WHERE idx = 2")
        rehash_everything(conn)
        new_root = merkle.root(
            [merkle.leaf_hash(r[0]) for r in conn.execute("SELECT data FROM leaves ORDER BY idx")]
        )
        conn.execute("UPDATE heads SET root = ? WHERE size = 7", (new_root,))
    report = verify_file(db)
    assert report.kinds() == {ProblemKind.HEAD_SIGNATURE_INVALID}
    assert report.verified_size == 0


def test_deleted_and_extra_nodes_are_reported(db: Path) -> None:
    signed_ledger(db, [16])
    with raw(db) as conn:
        conn.execute("DELETE FROM nodes WHERE level = 1 AND idx IN (3, 4)")
        conn.execute("DELETE FROM nodes WHERE level = 4")
        conn.execute("INSERT INTO nodes VALUES (1, 8, x'00')")  # leaves 16-17 do not exist
    report = verify_file(db)
    assert {(p.level, p.index) for p in report.of_kind(ProblemKind.NODE_MISSING)} == {
        (1, 3),
        (4, 0),
    }
    assert any("3..4" in p.message for p in report.of_kind(ProblemKind.NODE_MISSING))
    assert {(p.level, p.index) for p in report.of_kind(ProblemKind.NODE_UNEXPECTED)} == {(1, 8)}
    assert ProblemKind.HEAD_ROOT_MISMATCH not in report.kinds()  # roots come from the events


def test_heads_signed_out_of_time_order_are_reported(db: Path) -> None:
    signed_ledger(db, [3])
    with LedgerStore(db) as s:
        s.append_many(events(3, 6))
        root6 = s.root()
    ts = 1_000  # validly signed with the real key, but dated before the head for size 3
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO heads VALUES (6, ?, ?, ?, 'k1')",
            (root6, ts, KEY.sign(sth_message(6, ts, root6))),
        )
    report = verify_file(db)
    assert [p.size for p in report.of_kind(ProblemKind.HEAD_TIMESTAMP_ORDER)] == [6]


def test_report_keeps_a_bounded_number_of_problems(db: Path) -> None:
    signed_ledger(db, [40])
    with raw(db) as conn:
        conn.execute("UPDATE leaves SET leaf_hash = x'00'")
    with LedgerStore(db) as s:
        report = s.verify(PUB, max_problems=5)
    assert not report.ok
    assert len(report.problems) == 5 and report.problem_count == 40
