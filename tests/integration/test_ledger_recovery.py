"""The ledger drill against real Kafka: delete it under load, rebuild it, back it up, restore it.

The audit topic has three partitions, so the ledger's order is one no one could guess; the
rebuild must still arrive at the roots of every head the ledger published.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.kafka_cluster import CONSUMER, kafka_env
from devstack.stack import Stack
from streams.ledger_store import LedgerStore
from tests.integration.test_audit_stream import _ledger_size, _produce, topics

__all__ = ["topics"]  # the fixture, shared with the audit stream's tests

pytestmark = pytest.mark.integration


def telerad(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout.strip(), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def remove_ledger(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def test_the_ledger_is_deleted_under_load_then_rebuilt_backed_up_and_restored(
    stack: Stack, topics: dict[str, str], tmp_path: Path
) -> None:
    kafka = stack.services["kafka"]
    audit_topic = topics["TELERAD_KAFKA__AUDIT_TOPIC"]
    ledger = tmp_path / "ledger.db"
    env = (
        os.environ
        | kafka_env(kafka, CONSUMER)
        | {
            "TELERAD_STREAMS__LEDGER_PATH": str(ledger),
            "TELERAD_STREAMS__LEDGER_KEY_PATH": str(tmp_path / "key.pem"),
            "TELERAD_STREAMS__SEGMENTS_TOPIC": f"segments-{uuid.uuid4().hex[:10]}",
            "TELERAD_STREAMS__HEAD_EVERY_LEAVES": "400",
        }
    )
    ids = _produce(kafka, audit_topic, 3000)

    # 1. under load (events keep arriving), the ledger's file is deleted: it stops, loudly
    consumer = subprocess.Popen(
        [sys.executable, "-m", "broker", "audit", "ledger", "--create-key", "--idle-exit", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _ledger_size(ledger) < 1200:
        assert consumer.poll() is None and time.monotonic() < deadline, "the ledger never started"
        time.sleep(0.05)
    more: list[str] = []
    producing = threading.Thread(target=lambda: more.extend(_produce(kafka, audit_topic, 1000)))
    producing.start()
    remove_ledger(ledger)
    _, stderr = consumer.communicate(timeout=120)
    producing.join()
    assert consumer.returncode == 3, stderr[-3000:]
    assert "was deleted or replaced" in stderr and "Traceback" not in stderr

    # 2. an emptied ledger fails verification by default (the published heads say otherwise)
    empty = telerad(env, "verify")
    assert empty.returncode == 1 and "ledger_behind_head" in empty.stdout, empty.stdout
    remove_ledger(ledger)

    # 3. rebuilt from the topics: the same roots as every head the dead ledger published
    started = time.monotonic()
    rebuilt = telerad(env, "ledger", "rebuild", "--from-topic", "--path", str(tmp_path / "new.db"))
    took = time.monotonic() - started
    summary = report(rebuilt)
    assert rebuilt.returncode == 0 and summary["ok"], rebuilt.stdout + rebuilt.stderr[-2000:]
    # every head the dead ledger published is reproduced ("ok": none differs or is missing);
    # how many there are depends on how its batches fell (a head once 400 leaves are new)
    assert summary["heads_checked"] >= 1 and summary["appended"] >= 1200, summary
    print(
        f"\nrebuild: {summary['appended']} leaves, {summary['segments']} segments, "
        f"{summary['heads_checked']} heads reproduced, {took:.1f} s"
    )
    (tmp_path / "new.db").rename(ledger)

    # 4. the consumer goes on where it left off; nothing twice, nothing lost
    caught_up = telerad(env, "ledger", "--idle-exit", "4")
    assert caught_up.returncode == 0, caught_up.stderr[-3000:]
    with LedgerStore(ledger) as store:
        assert store.size() == 4000
        assert {store.leaf(i)[0] for i in range(store.size())} == set(ids) | set(more)
    verified = telerad(env, "verify")
    assert verified.returncode == 0 and report(verified)["ok"], verified.stdout

    # 5. backed up online, more events arrive, the ledger is lost, the backup is restored and
    #    caught up from the topics to the newest published head
    backups = tmp_path / "backups"
    backups.mkdir()
    # as the chart's CronJob runs it: into a directory, a dated file
    assert report(telerad(env, "ledger", "backup", "--path", f"{backups}/"))["ok"]
    (kept,) = backups.iterdir()
    assert kept.name.startswith("telerad-ledger-") and kept.suffix == ".sqlite3"
    later = _produce(kafka, audit_topic, 500)
    assert telerad(env, "ledger", "--idle-exit", "4").returncode == 0
    remove_ledger(ledger)
    restored = telerad(env, "ledger", "restore", "--path", str(kept))
    assert restored.returncode == 0 and report(restored)["ok"], restored.stdout
    with LedgerStore(ledger) as store:
        assert store.size() == 4500
        assert {store.leaf(i)[0] for i in range(store.size())} == set(ids) | set(more) | set(later)
    final = report(telerad(env, "verify", "--from-topic"))
    assert final["ok"] and final["published_heads_checked"] >= 3, final  # 1 + a forced one per run
