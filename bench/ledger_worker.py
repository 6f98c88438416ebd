"""The ledger consumer as it runs in production, timed: emit → Kafka → ledger append.

``python -m bench.ledger_worker`` runs :class:`streams.runner.ConsumerRunner` with
:class:`streams.ledger.LedgerConsumer` on a temporary :class:`streams.ledger_store.LedgerStore`
(signed heads every 1000 leaves, published to a heads topic, as ``telerad audit ledger`` does).
Its handler is wrapped only to note, once a batch is durably appended (the transaction
committed), how long ago each event was created (``event.time``, set when the emitting request
built it). Latencies are grouped by ``detail.bench_phase``.

It writes a status file while running (events appended so far, per phase) and, on SIGTERM or
SIGINT, a JSON result (latency percentiles per phase, batch sizes) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.httpload import summarize
from broker.audit import AuditEvent
from broker.audit.kafka import make_producer
from streams.ledger import LedgerConsumer
from streams.ledger_store import LedgerStore, SignedTreeHead
from streams.runner import ConsumerRunner

__all__ = ["main"]


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _rate(count: int, span: list[float]) -> float | None:
    seconds = span[1] - span[0]
    return round((count - 1) / seconds, 1) if count > 1 and seconds > 0 else None


def main(argv: list[str] | None = None) -> int:
    """Consume until signalled; write the latencies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    parser = argparse.ArgumentParser(prog="python -m bench.ledger_worker")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--heads-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--status", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    latencies: dict[str, list[float]] = {}
    spans: dict[str, list[float]] = {}  # phase -> [first append, last append] (time.time())
    batches: list[int] = []
    lock = threading.Lock()
    producer = make_producer(args.bootstrap)

    def publish(head: SignedTreeHead) -> None:
        producer.send(args.heads_topic, key=b"head", value=head.to_json().encode()).get(timeout=10)

    with LedgerStore(args.ledger) as store:
        ledger = LedgerConsumer(
            store, Ed25519PrivateKey.generate(), head_every_leaves=1000, publish_head=publish
        )

        def handle(events: list[AuditEvent]) -> None:
            ledger.handle(events)
            now = time.time()
            with lock:
                batches.append(len(events))
                for event in events:
                    phase = str(event.detail.get("bench_phase", "other"))
                    latencies.setdefault(phase, []).append(now - event.time.timestamp())
                    span = spans.setdefault(phase, [now, now])
                    span[1] = now

        runner = ConsumerRunner(
            "bench-ledger",
            bootstrap=args.bootstrap,
            topic=args.topic,
            group_id=args.group,
            handler=handle,
            dead_letter_topic=f"{args.topic}.dlq",
            poll_ms=100,
        )
        runner.install_signal_handlers()

        def report() -> None:
            while not runner.stop_event.wait(0.25):
                with lock:
                    counts = {phase: len(values) for phase, values in latencies.items()}
                _write(args.status, {"appended": ledger.appended, "by_phase": counts})

        threading.Thread(target=report, daemon=True).start()
        _write(args.status, {"appended": 0, "by_phase": {}})
        stats = runner.run()
        with lock:
            result = {
                "appended": ledger.appended,
                "duplicates": ledger.duplicates,
                "size": store.size(),
                "batches": len(batches),
                "mean_batch": round(sum(batches) / len(batches), 1) if batches else 0,
                "max_batch": max(batches, default=0),
                "retries": stats.retries,
                "dead_letters": stats.dead_letters,
                "latency_by_phase": {
                    phase: dict[str, Any]({"events": len(values)})
                    | summarize(values)
                    # appends/s from the first to the last event of the phase: the consumer's
                    # throughput when it was behind (the emitter faster than the consumer)
                    | {"append_rate_per_s": _rate(len(values), spans[phase])}
                    for phase, values in latencies.items()
                },
            }
    producer.close(5)
    _write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
