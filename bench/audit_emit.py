"""One process emitting audit events through :class:`broker.audit.kafka.KafkaAuditSink`.

Run by the harness as ``python -m bench.audit_emit ...`` so that its event loop and its CPU are
its own (and py-spy can profile it). Two modes:

* ``saturate``: ``--concurrency`` tasks emit back to back until ``--count`` events are
  acknowledged: the most events per second one process gets into Kafka with the broker's
  durability settings (``acks=all``, idempotent, acknowledged before ``emit`` returns);
* ``paced``: ``--rate`` events per second on a fixed schedule, each emit its own task, to see
  latencies at a load the system is not saturated by.

Every event carries ``detail.bench_phase`` so the ledger worker can tell the phases apart.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

from bench.httpload import summarize
from broker.audit import AuditEvent, AuditUnavailable, EventKind, Outcome
from broker.audit.kafka import KafkaAuditSink

__all__ = ["FEATURES", "apply_features", "main", "make_event"]

FEATURES = ("linger-0", "confluent-kafka")
"""What-if features, joined with '+' into a ``--variant`` (``baseline``: none). They only size
a proposal; the broker's code is never changed. ``linger-0``: the producer sends a batch at
once instead of waiting up to 2 ms for more records; ``confluent-kafka``: the same contract
(acks=all, idempotent, acknowledged before ``emit`` returns) on librdkafka, a package the
project does not depend on (``--whatif-path``)."""


_STUDY_ROOT = "1.2.826.0.1.3680043.10.1119.99."
STUDIES = 1000
"""Distinct studies the events are about: the record key is the study, so this spreads them
over the topic's partitions as a real worklist would (one study would be one partition)."""


def make_event(phase: str, n: int) -> AuditEvent:
    """A decision event shaped like the broker's (an allowed link issuance)."""
    return AuditEvent(
        kind=EventKind.DECISION,
        outcome=Outcome.ALLOW,
        subject="npi:1000000001",
        issuer="http://127.0.0.1/realms/hospital-a",
        roles=["radiologist"],
        action="issue_link",
        study_uid=f"{_STUDY_ROOT}{n % STUDIES + 1}",
        operations=["view"],
        reasons=["assigned_on_worklist", "group_coverage", "privileged"],
        decision_id=f"bench-{phase}-{n}",
        policy_revision=None,
        client_ip="127.0.0.1",
        user_agent="telerad-bench/1",
        detail={
            "bench_phase": phase,
            "obligations": {"link_ttl_seconds": 600, "operations": ["view"], "alert": False},
        },
    )


class _ConfluentSink:
    """The same contract (acked with acks=all, idempotent, before emit returns) on librdkafka.

    Only for sizing a proposal: needs ``confluent-kafka``, which the project does not depend on.
    Delivery reports are served by a polling thread and handed to the loop.
    """

    def __init__(
        self, bootstrap: str, topic: str, timeout: float = 2.0, linger_ms: int = 2
    ) -> None:
        from confluent_kafka import Producer  # type: ignore[import-not-found,unused-ignore]

        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                "client.id": "telerad-bench",
            }
        )
        self._topic = topic
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def start(self) -> None:
        self._thread.start()

    async def emit(self, event: AuditEvent) -> None:
        from broker.audit.cloudevents import to_record

        key, value, headers = to_record(event, source="/telerad-bench/audit")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle(error: object) -> None:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(AuditUnavailable(str(error)))

        def delivered(error: object, _message: object) -> None:
            loop.call_soon_threadsafe(settle, error)

        self._producer.produce(
            self._topic, value=value, key=key, headers=headers, on_delivery=delivered
        )
        await asyncio.wait_for(future, self._timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self._producer.flush, 5)
        self._stop.set()
        self._thread.join(timeout=5)


def apply_features(variant: str) -> set[str]:
    """Apply the in-process parts of a what-if ``variant``; return its features."""
    features = set() if variant == "baseline" else set(variant.split("+"))
    if unknown := features - set(FEATURES):
        raise SystemExit(f"unknown what-if features: {sorted(unknown)}")
    if "linger-0" in features:
        import broker.audit.kafka as kafka

        make = kafka.make_producer
        # no wait before sending a batch (the broker's default is 2 ms)
        kafka.make_producer = lambda bootstrap, **kw: make(bootstrap, **({"linger_ms": 0} | kw))
    return features


def _sink(variant: str, bootstrap: str, topic: str) -> Any:
    features = apply_features(variant)
    if "confluent-kafka" in features:
        return _ConfluentSink(bootstrap, topic, linger_ms=0 if "linger-0" in features else 2)
    return KafkaAuditSink(bootstrap, topic, source="/telerad-bench/audit")


def _describe(exc: BaseException) -> str:
    """The exception and its cause, briefly."""
    cause = exc.__cause__
    text = f"{type(exc).__name__}: {exc}"
    return (text + (f" (from {type(cause).__name__}: {cause})" if cause else ""))[:300]


async def _saturate(sink: Any, phase: str, count: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors, first_error
        while next_index < count:
            n = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                await sink.emit(make_event(phase, n))
            except Exception as exc:  # noqa: BLE001 - counted; the figure says how many failed
                errors += 1
                first_error = first_error or _describe(exc)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {
        "events": count,
        "errors": errors,
        "first_error": first_error,
        "seconds": round(seconds, 3),
        "events_per_s": round((count - errors) / seconds, 1),
        "ack_latency": summarize(latencies),
    }


async def _paced(sink: Any, phase: str, count: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    max_lag = 0.0

    async def one(n: int) -> None:
        nonlocal errors, first_error
        started = time.perf_counter()
        try:
            await sink.emit(make_event(phase, n))
        except Exception as exc:  # noqa: BLE001 - counted; the figure says how many failed
            errors += 1
            first_error = first_error or _describe(exc)
        latencies.append(time.perf_counter() - started)

    tasks = []
    started = time.perf_counter()
    for n in range(count):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return {
        "events": count,
        "errors": errors,
        "first_error": first_error,
        "seconds": round(seconds, 3),
        "rate_asked": rate,
        "events_per_s": round((count - errors) / seconds, 1),
        "max_schedule_lag_ms": round(1000 * max_lag, 1),
        "ack_latency": summarize(latencies),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    sink = _sink(args.variant, args.bootstrap, args.topic)
    await sink.start()
    try:
        warmup_errors = 0
        if args.warmup:
            warm = await _saturate(sink, "warmup", args.warmup, min(args.concurrency, 64))
            warmup_errors = warm["errors"]
        cpu_started = time.process_time()
        if args.mode == "saturate":
            result = await _saturate(sink, args.phase, args.count, args.concurrency)
        else:
            result = await _paced(sink, args.phase, args.count, args.rate)
        # this process's CPU (every thread: the loop, the executor, kafka-python's sender)
        cpu = time.process_time() - cpu_started
        result["cpu_percent_of_one_core"] = round(100 * cpu / result["seconds"], 1)
        result["warmup_errors"] = warmup_errors
    finally:
        await sink.close()
    return {
        "mode": args.mode,
        "phase": args.phase,
        "variant": args.variant,
        "concurrency": args.concurrency,
    } | result


def main(argv: list[str] | None = None) -> int:
    """Emit, then print the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.audit_emit")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--mode", choices=["saturate", "paced"], default="saturate")
    parser.add_argument("--phase", default="saturate")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--variant", default="baseline", help="baseline, or features joined by +")
    args = parser.parse_args(argv)
    import uvloop

    result = uvloop.run(_main(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
