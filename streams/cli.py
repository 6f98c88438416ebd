"""``telerad audit ...``: the audit consumers and the auditor's tools.

telerad audit ledger   append events to the Merkle ledger, sign and publish tree heads
telerad audit alerts   raise alerts (break-glass, denial bursts, outside assignment, ...)
telerad audit export   FHIR AuditEvent / DICOM audit messages, to files or syslog
telerad audit verify   recompute the ledger (and optionally compare with the topic)
telerad audit prove    an inclusion proof for one event, with the signed head it is under
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from broker.config import Settings, check_environment

__all__ = ["add_audit_commands"]


def _settings() -> Settings:
    check_environment()
    return Settings()


def _progress(runner: Any, every: float = 10.0) -> threading.Thread:
    def report() -> None:
        while not runner.stop_event.wait(every):
            s = runner.stats
            rate = s.events / max(time.monotonic() - s.started, 1e-9)
            print(
                f"[telerad audit {runner.name}] {s.events} events ({rate:.0f}/s), "
                f"{s.dead_letters} dead letters, {s.retries} retries",
                file=sys.stderr,
                flush=True,
            )

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    return thread


def _ledger(args: argparse.Namespace) -> int:
    from broker.audit.kafka import make_producer, security_config
    from streams.ledger import LedgerConsumer, load_private_key
    from streams.ledger_store import LedgerStore, SignedTreeHead
    from streams.runner import ConsumerRunner

    settings = _settings()
    cfg = settings.streams
    cfg.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    key = load_private_key(cfg.ledger_key_path, create=args.create_key)
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))

    def publish(head: SignedTreeHead) -> None:
        producer.send(cfg.heads_topic, key=b"head", value=head.to_json().encode()).get(timeout=10)

    with LedgerStore(cfg.ledger_path) as store:
        ledger = LedgerConsumer(
            store,
            key,
            head_every_seconds=cfg.head_every_seconds,
            head_every_leaves=cfg.head_every_leaves,
            publish_head=publish,
        )
        runner = ConsumerRunner(
            "ledger",
            bootstrap=settings.kafka.bootstrap_servers,
            topic=settings.kafka.audit_topic,
            group_id=args.group,
            handler=ledger.handle,
            dead_letter_topic=cfg.dead_letter_topic,
            client_config=security_config(settings.kafka),
        )
        runner.install_signal_handlers()
        _progress(runner)
        stats = runner.run(idle_exit_seconds=args.idle_exit)
        head = ledger.maybe_sign(force=True)
        producer.close(5)
        print(
            json.dumps(
                {
                    "events": stats.events,
                    "appended": ledger.appended,
                    "duplicates_skipped": ledger.duplicates,
                    "dead_letters": stats.dead_letters,
                    "size": store.size(),
                    "head": json.loads(head.to_json()) if head else None,
                }
            )
        )
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from broker.audit.kafka import make_producer, security_config
    from streams.alerts import Alert, AlertDetector
    from streams.runner import ConsumerRunner

    settings = _settings()
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))
    detector = AlertDetector()

    def publish(alert: Alert) -> None:
        producer.send(
            settings.streams.alerts_topic,
            key=(alert.subject or alert.id).encode(),
            value=alert.to_json(),
            headers=[
                ("ce_specversion", b"1.0"),
                ("ce_id", alert.id.encode()),
                ("ce_type", f"org.telerad.alert.{alert.rule}.v1".encode()),
                ("ce_source", b"/telerad-broker/alerts"),
                ("content-type", b"application/json"),
            ],
        ).get(timeout=10)

    def handle(events: list[Any]) -> None:
        detector.handle(events, publish)

    runner = ConsumerRunner(
        "alerts",
        bootstrap=settings.kafka.bootstrap_servers,
        topic=settings.kafka.audit_topic,
        group_id=args.group,
        handler=handle,
        dead_letter_topic=settings.streams.dead_letter_topic,
        client_config=security_config(settings.kafka),
    )
    runner.install_signal_handlers()
    _progress(runner)
    stats = runner.run(idle_exit_seconds=args.idle_exit)
    producer.close(5)
    print(json.dumps({"events": stats.events, "dead_letters": stats.dead_letters}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from streams.export import run_export

    return run_export(_settings(), args)


def _verify(args: argparse.Namespace) -> int:
    from streams.ledger import event_bytes, load_public_key
    from streams.ledger_store import LedgerStore

    settings = _settings()
    cfg = settings.streams
    public_key = load_public_key(
        Path(args.public_key) if args.public_key else cfg.ledger_key_path.with_suffix(".pub")
    )
    started = time.monotonic()
    with LedgerStore(cfg.ledger_path) as store:
        report = store.verify(public_key)
        problems = [f"{p.kind}: {p.message}" for p in report.problems]
        topic_checked = 0
        if args.from_topic:
            topic_events = _read_topic(settings)
            topic_checked = len(topic_events)
            problems += _compare_with_topic(store, topic_events, event_bytes)
        size = store.size()
    result = {
        "ok": not problems,
        "size": size,
        "topic_events": topic_checked if args.from_topic else None,
        "seconds": round(time.monotonic() - started, 2),
        "problems": problems[:100],
        "problem_count": report.problem_count + len(problems) - len(report.problems),
    }
    print(json.dumps(result, indent=2))
    return 0 if not problems else 1


def _read_topic(settings: Settings) -> list[tuple[int, Any]]:
    """Every event now in the audit topic, with its partition, in partition order."""
    from kafka import TopicPartition

    from broker.audit.cloudevents import PoisonRecord, from_record
    from broker.audit.kafka import make_consumer, security_config

    consumer = make_consumer(
        settings.kafka.bootstrap_servers, group_id=None, **security_config(settings.kafka)
    )
    try:
        topic = settings.kafka.audit_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        out: list[tuple[int, Any]] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for record in records:
                    try:
                        out.append((tp.partition, from_record(record.value, record.headers)))
                    except PoisonRecord:
                        continue
        return out
    finally:
        consumer.close()


def _compare_with_topic(
    store: Any, topic_events: list[tuple[int, Any]], to_bytes: Any
) -> list[str]:
    problems: list[str] = []
    positions: dict[int, int] = {}
    seen: set[str] = set()
    for partition, event in topic_events:
        if event.id in seen:
            continue  # a duplicate in the topic is appended once; that is the contract
        seen.add(event.id)
        index = store.index_of(event.id)
        if index is None:
            problems.append(
                f"missing_from_ledger: event {event.id} is in the topic, not the ledger"
            )
            continue
        if store.leaf(index)[1] != to_bytes(event):
            problems.append(f"content_differs: event {event.id} at leaf {index}")
        if index < positions.get(partition, -1):
            problems.append(
                f"order_differs: event {event.id} (partition {partition}) at leaf {index}"
            )
        positions[partition] = index
    if store.size() > len(seen):
        problems.append(f"extra_in_ledger: {store.size() - len(seen)} leaves not in the topic")
    return problems


def _prove(args: argparse.Namespace) -> int:
    from streams.ledger_store import LedgerStore

    cfg = _settings().streams
    with LedgerStore(cfg.ledger_path) as store:
        head = store.latest_head()
        if head is None:
            print("no signed tree head yet", file=sys.stderr)
            return 1
        index = store.index_of(args.event_id)
        if index is None or index >= head.size:
            print("event not (yet) under a signed tree head", file=sys.stderr)
            return 1
        _, proof = store.inclusion_proof(index, head.size)
        _, data, leaf_hash = store.leaf(index)
        print(
            json.dumps(
                {
                    "event_id": args.event_id,
                    "leaf_index": index,
                    "leaf_hash": base64.b64encode(leaf_hash).decode(),
                    "event": json.loads(data),
                    "proof": [base64.b64encode(p).decode() for p in proof],
                    "head": json.loads(head.to_json()),
                },
                indent=2,
            )
        )
    return 0


def add_audit_commands(sub: Any) -> None:
    """Register ``telerad audit ...`` on the top-level parser's subparsers."""
    audit = sub.add_parser("audit", help="the audit consumers and the auditor's tools")
    cmds = audit.add_subparsers(dest="audit_command", required=True)

    def consumer(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmds.add_parser(name, help=help_text)
        parser.add_argument("--group", default=f"telerad-{name}", help="consumer group id")
        parser.add_argument(
            "--idle-exit",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop after this long without records (batch runs); default: run until SIGTERM",
        )
        parser.set_defaults(func=func)
        return parser

    ledger = consumer("ledger", _ledger, "append audit events to the Merkle ledger")
    ledger.add_argument(
        "--create-key", action="store_true", help="create the signing key if it does not exist"
    )
    consumer("alerts", _alerts, "raise alerts from the audit stream")
    export = consumer("export", _export, "export audit events for auditors and SIEMs")
    export.add_argument("--format", choices=["fhir", "dicom"], default="fhir")
    export.add_argument("--syslog", metavar="HOST:PORT", help="send to a syslog endpoint")
    export.add_argument("--protocol", choices=["udp", "tcp"], default="tcp")

    verify = cmds.add_parser("verify", help="recompute the ledger and check every signed head")
    verify.add_argument("--public-key", help="the ledger's public key (PEM); default: <key>.pub")
    verify.add_argument("--from-topic", action="store_true", help="also compare with the topic")
    verify.set_defaults(func=_verify)

    prove = cmds.add_parser("prove", help="inclusion proof of one event under the latest head")
    prove.add_argument("event_id")
    prove.set_defaults(func=_prove)
