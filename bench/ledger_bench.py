"""The Merkle ledger alone: appends/s, proof time and size at growing sizes, full verify.

``python -m bench.ledger_bench --dir D --sizes 10000,100000,1000000 --out F`` grows one
:class:`streams.ledger_store.LedgerStore` (SQLite, WAL, ``synchronous=FULL``) in ``D`` to each
size in turn with realistic event bytes (a broker decision event, ~600 bytes), signing a tree
head every 1000 leaves as the ledger consumer does, and at each size times inclusion proofs
(by event id, as an auditor asks) and consistency proofs (from a random earlier size), and
their verification. At the largest size it runs :meth:`LedgerStore.verify` (recompute
everything, check every signed head). The directory is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.audit_emit import make_event
from bench.httpload import summarize
from streams import merkle
from streams.ledger import event_bytes, key_id
from streams.ledger_store import LedgerStore

__all__ = ["main"]

_PLACEHOLDER = b'"decision_id":"bench-ledger-0"'


def _leaf(i: int, template: bytes) -> tuple[str, bytes]:
    data = template.replace(_PLACEHOLDER, f'"decision_id":"bench-ledger-{i}"'.encode(), 1)
    return f"bench-{i:09d}", data


def _grow(
    store: LedgerStore, key: Ed25519PrivateKey, kid: str, target: int, batch: int, template: bytes
) -> float:
    """Append until ``target`` leaves in batches; sign a head every 1000 leaves. Seconds."""
    started = time.perf_counter()
    size = store.size()
    while size < target:
        n = min(batch, target - size, 1000 - size % 1000)
        store.append_many([_leaf(i, template) for i in range(size, size + n)])
        size += n
        if size % 1000 == 0 or size == target:
            store.sign_head(key, kid)
    return time.perf_counter() - started


def _proofs(store: LedgerStore, size: int, samples: int, rng: random.Random) -> dict[str, Any]:
    root = store.root(size)
    inc_times, inc_verify, inc_hashes = [], [], []
    for _ in range(samples):
        i = rng.randrange(size)
        event_id = f"bench-{i:09d}"
        started = time.perf_counter()
        index, path = store.inclusion_proof(event_id, size)
        inc_times.append(time.perf_counter() - started)
        leaf = store.leaf(index)[2]
        started = time.perf_counter()
        ok = merkle.verify_inclusion(leaf, index, size, path, root)
        inc_verify.append(time.perf_counter() - started)
        if not ok:
            raise AssertionError(f"inclusion proof of leaf {index} in {size} does not verify")
        inc_hashes.append(len(path))
    con_times, con_verify, con_hashes = [], [], []
    for _ in range(samples):
        old = rng.randrange(1, size)
        started = time.perf_counter()
        proof = store.consistency_proof(old, size)
        con_times.append(time.perf_counter() - started)
        old_root = store.root(old)
        started = time.perf_counter()
        ok = merkle.verify_consistency(old, size, old_root, root, proof)
        con_verify.append(time.perf_counter() - started)
        if not ok:
            raise AssertionError(f"consistency proof {old} -> {size} does not verify")
        con_hashes.append(len(proof))
    return {
        "size": size,
        "samples": samples,
        "inclusion": {
            "prove": summarize(inc_times),
            "verify": summarize(inc_verify),
            "hashes_max": max(inc_hashes),
            "bytes_max": 32 * max(inc_hashes),
            "bytes_mean": round(32 * sum(inc_hashes) / len(inc_hashes), 1),
        },
        "consistency": {
            "prove": summarize(con_times),
            "verify": summarize(con_verify),
            "hashes_max": max(con_hashes),
            "bytes_max": 32 * max(con_hashes),
            "bytes_mean": round(32 * sum(con_hashes) / len(con_hashes), 1),
        },
    }


def _append_rate(directory: Path, template: bytes, batch: int, count: int) -> dict[str, Any]:
    """Appends/s into a fresh store with ``batch`` events per transaction (one fsync each)."""
    path = directory / f"rate-{batch}.sqlite3"
    with LedgerStore(path) as store:
        started = time.perf_counter()
        for first in range(0, count, batch):
            store.append_many([_leaf(i, template) for i in range(first, first + batch)])
        seconds = time.perf_counter() - started
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"batch": batch, "events": count, "appends_per_s": round(count / seconds, 1)}


def run(directory: Path, sizes: list[int], samples: int, batch: int) -> dict[str, Any]:
    """Everything above; the store lives in ``directory``."""
    rng = random.Random(6962)
    template = event_bytes(make_event("ledger", 0))
    if _PLACEHOLDER not in template:
        raise AssertionError("the event template lost its placeholder")
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    result: dict[str, Any] = {
        "event_bytes": len(template),
        "append_rates": [
            _append_rate(directory, template, 1, 500),
            _append_rate(directory, template, batch, 20 * batch),
        ],
        "sizes": [],
    }
    path = directory / "ledger.sqlite3"
    with LedgerStore(path) as store:
        grow_seconds = 0.0
        for size in sorted(sizes):
            before = store.size()
            seconds = _grow(store, key, kid, size, batch, template)
            grow_seconds += seconds
            entry = _proofs(store, size, samples, rng)
            entry["grow"] = {
                "events": size - before,
                "seconds": round(seconds, 2),
                "appends_per_s": round((size - before) / seconds, 1),
            }
            result["sizes"].append(entry)
            print(f"ledger: {size} leaves ({entry['grow']['appends_per_s']:.0f}/s)", flush=True)
        report = store.verify(key.public_key())
        result["verify"] = {
            "leaves": report.leaves,
            "nodes": report.nodes,
            "heads": report.heads,
            "verified_size": report.verified_size,
            "ok": report.ok,
            "seconds": round(report.seconds, 2),
        }
    files = [Path(f"{path}{s}") for s in ("", "-wal", "-shm")]
    result["file_bytes"] = sum(f.stat().st_size for f in files if f.exists())
    return result


def main(argv: list[str] | None = None) -> int:
    """Run in a fresh directory, print JSON to ``--out``, delete the directory."""
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_bench")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        result = run(args.dir, sizes, args.samples, args.batch)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
