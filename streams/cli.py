"""``telerad audit ...``: the audit consumers and the auditor's tools.

telerad audit ledger   append events to the Merkle ledger, sign and publish tree heads
telerad audit alerts   raise alerts (break-glass, denial bursts, outside assignment, ...)
telerad audit export   FHIR AuditEvent / DICOM audit messages, to files or syslog
telerad audit worklist check the RIS's worklist topic: what no replica can apply, dead-lettered
telerad audit ledger rebuild|backup|restore   get the ledger back (streams/recovery.py)
telerad audit verify   recompute the ledger, compare it with every published head (and the topic)
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
    from streams.ledger_store import LedgerGoneError, LedgerStore, SignedTreeHead
    from streams.runner import ConsumerRunner
    from streams.segments import SEGMENT_KEY, Segment

    if args.operation != "run":
        return _recovery(args)
    settings = _settings()
    cfg = settings.streams
    cfg.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    key = load_private_key(cfg.ledger_key_path, create=args.create_key)
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))

    def publish(head: SignedTreeHead) -> None:
        producer.send(cfg.heads_topic, key=b"head", value=head.to_json().encode()).get(timeout=10)

    def publish_segment(segment: Segment) -> None:
        producer.send(cfg.segments_topic, key=SEGMENT_KEY, value=segment.to_json()).get(timeout=10)

    with LedgerStore(cfg.ledger_path) as store:
        ledger = LedgerConsumer(
            store,
            key,
            head_every_seconds=cfg.head_every_seconds,
            head_every_leaves=cfg.head_every_leaves,
            publish_head=publish,
            publish_segment=publish_segment,
        )
        runner = ConsumerRunner(
            "ledger",
            bootstrap=settings.kafka.bootstrap_servers,
            topic=settings.kafka.audit_topic,
            group_id=args.group,
            handler=ledger.handle,
            dead_letter_topic=cfg.dead_letter_topic,
            with_origin=True,
            client_config=security_config(settings.kafka),
            **cfg.health_options(),
        )
        runner.install_signal_handlers()
        _progress(runner)
        try:
            stats = runner.run(idle_exit_seconds=args.idle_exit, give_up_seconds=args.give_up)
        except LedgerGoneError as exc:
            producer.close(5)
            print(
                f"telerad audit ledger: stopped: {exc}. Nothing more was appended or committed; "
                "get it back with `telerad audit ledger restore --path <backup>` or "
                "`telerad audit ledger rebuild --from-topic`.",
                file=sys.stderr,
            )
            return 3
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
    from dataclasses import replace

    from broker.audit.kafka import make_producer, security_config
    from streams.alerts import Alert, AlertDetector, AlertRules
    from streams.containment import Containment
    from streams.runner import ConsumerRunner

    settings = _settings()
    cfg = settings.streams
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))
    detector = AlertDetector(
        AlertRules(
            bulk_studies=cfg.alerts_bulk_studies, bulk_window_seconds=cfg.alerts_bulk_window_seconds
        )
    )
    containment = Containment(
        cfg.contain_rules,
        allow=cfg.contain_allow,
        seconds=cfg.contain_seconds,
        cooldown_seconds=cfg.contain_cooldown_seconds,
    )

    def publish(alert: Alert) -> None:
        contained = containment.event_for(alert)
        if contained is not None:
            # durable on the audit topic (the ledger) and the control topic (every replica)
            # before the alert says so
            _publish_control(settings, producer, contained, source="/telerad-broker/alerts")
            alert = replace(
                alert,
                severity="high",
                detail=alert.detail | {"contained": True, "containment_event": contained.id},
            )
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
        **cfg.health_options(),
    )
    runner.install_signal_handlers()
    _progress(runner)
    stats = runner.run(idle_exit_seconds=args.idle_exit, give_up_seconds=args.give_up)
    producer.close(5)
    print(json.dumps({"events": stats.events, "dead_letters": stats.dead_letters}))
    return 0


def _worklist(args: argparse.Namespace) -> int:
    """The RIS's worklist topic, checked record by record: what no replica can apply (not a
    CloudEvent, an unknown type, invalid data, headers or key that disagree with the data) goes
    to the dead-letter topic with the reason. The replicas ignore such records themselves; this
    consumer is where the RIS's integrators see them."""
    from broker.audit.kafka import security_config
    from broker.worklist.events import from_record
    from streams.runner import ConsumerRunner

    settings = _settings()
    cfg = settings.streams
    if not settings.kafka.worklist_topic:
        print("telerad audit worklist: TELERAD_KAFKA__WORKLIST_TOPIC is empty", file=sys.stderr)
        return 2
    readable: dict[str, int] = {}

    def handle(events: list[Any]) -> None:
        for event in events:
            readable[event.kind.value] = readable.get(event.kind.value, 0) + 1

    runner = ConsumerRunner(
        "worklist",
        bootstrap=settings.kafka.bootstrap_servers,
        topic=settings.kafka.worklist_topic,
        group_id=args.group,
        handler=handle,
        dead_letter_topic=cfg.dead_letter_topic,
        client_config=security_config(settings.kafka),
        decode=lambda r: from_record(r.value, r.headers, r.key),
        **cfg.health_options(),
    )
    runner.install_signal_handlers()
    _progress(runner)
    stats = runner.run(idle_exit_seconds=args.idle_exit, give_up_seconds=args.give_up)
    print(
        json.dumps(
            {"events": stats.events, "dead_letters": stats.dead_letters, "kinds": readable},
            sort_keys=True,
        )
    )
    return 0


def _publish_control(settings: Settings, producer: Any, event: Any, *, source: str) -> None:
    """An event every replica applies: on the audit and the control topic, both acknowledged."""
    from broker.audit.cloudevents import to_record

    key, value, headers = to_record(event, source=source)
    sent = [
        producer.send(topic, key=key, value=value, headers=headers)
        for topic in (settings.kafka.audit_topic, settings.kafka.revocation_topic)
    ]
    for future in sent:
        future.get(timeout=30)


def _lift(args: argparse.Namespace) -> int:
    import getpass

    from broker.audit.kafka import make_producer, security_config
    from streams.containment import lift_event

    settings = _settings()
    if len(args.reason.strip()) < 10:
        print(
            "telerad audit containment lift: say why (--reason, 10 characters or more)",
            file=sys.stderr,
        )
        return 2
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))
    try:
        event = lift_event(args.subject, args.reason.strip(), f"operator:{getpass.getuser()}")
        _publish_control(settings, producer, event, source="/telerad-broker/operator")
    finally:
        producer.close(5)
    print(json.dumps({"lifted": args.subject, "event_id": event.id}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from streams.export import run_export

    return run_export(_settings(), args)


def _verify(args: argparse.Namespace) -> int:
    from streams.ledger import event_bytes, load_public_key
    from streams.ledger_store import LedgerStore
    from streams.recovery import check_against_heads

    settings = _settings()
    cfg = settings.streams
    public_key = load_public_key(
        Path(args.public_key) if args.public_key else cfg.ledger_key_path.with_suffix(".pub")
    )
    started = time.monotonic()
    with LedgerStore(cfg.ledger_path) as store:
        report = store.verify(public_key)
        problems = [f"{p.kind}: {p.message}" for p in report.problems]
        heads_checked = None
        if not args.offline:
            heads = _published_heads(settings)
            heads_checked = len(heads)
            problems += check_against_heads(store, heads, public_key)
            if not heads:
                problems.append(
                    f"no_published_heads: nothing on {cfg.heads_topic} to check the ledger "
                    "against (use --offline to check the ledger only in itself)"
                )
        topic_checked = 0
        if args.from_topic:
            topic_events = _read_topic(settings)
            topic_checked = len(topic_events)
            problems += _compare_with_topic(store, topic_events, event_bytes)
        size = store.size()
    result = {
        "ok": not problems,
        "size": size,
        "published_heads_checked": heads_checked,
        "topic_events": topic_checked if args.from_topic else None,
        "seconds": round(time.monotonic() - started, 2),
        "problems": problems[:100],
        "problem_count": report.problem_count + len(problems) - len(report.problems),
    }
    print(json.dumps(result, indent=2))
    return 0 if not problems else 1


def _published_heads(settings: Settings) -> list[Any]:
    """Every signed head on the heads topic (unreadable records are findings elsewhere)."""
    from broker.audit.kafka import make_consumer, security_config
    from streams.ledger_store import SignedTreeHead
    from streams.recovery import read_topic_values

    consumer = make_consumer(
        settings.kafka.bootstrap_servers, group_id=None, **security_config(settings.kafka)
    )
    heads: list[Any] = []
    try:
        for value in read_topic_values(consumer, settings.streams.heads_topic):
            try:
                heads.append(SignedTreeHead.from_json(value))
            except (ValueError, KeyError, TypeError):
                print("telerad audit: an unreadable record on the heads topic", file=sys.stderr)
    finally:
        consumer.close()
    return heads


def _segments(settings: Settings) -> list[Any]:
    from broker.audit.kafka import make_consumer, security_config
    from streams.recovery import read_topic_values
    from streams.segments import Segment

    consumer = make_consumer(
        settings.kafka.bootstrap_servers, group_id=None, **security_config(settings.kafka)
    )
    try:
        return [
            Segment.from_json(v)
            for v in read_topic_values(consumer, settings.streams.segments_topic)
        ]
    finally:
        consumer.close()


def _recovery(args: argparse.Namespace) -> int:
    """``telerad audit ledger rebuild|backup|restore``."""
    from broker.audit.kafka import make_consumer, security_config
    from streams.ledger import load_public_key
    from streams.ledger_store import LedgerStore
    from streams.recovery import backup, kafka_fetch, rebuild, restore

    settings = _settings()
    cfg = settings.streams
    public_key = load_public_key(
        Path(args.public_key) if args.public_key else cfg.ledger_key_path.with_suffix(".pub")
    )
    started = time.monotonic()
    if args.operation == "backup":
        if not args.path:
            print("telerad audit ledger backup: give the backup file (--path)", file=sys.stderr)
            return 2
        target = Path(args.path)
        if args.path.endswith("/") or target.is_dir():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = target / f"telerad-ledger-{stamp}.sqlite3"  # a directory: a dated file in it
        report = backup(cfg.ledger_path, target, public_key)
        print(f"telerad audit ledger backup: {target}", file=sys.stderr)
    else:
        heads = _published_heads(settings)
        segments = _segments(settings)
        consumer = make_consumer(
            settings.kafka.bootstrap_servers, group_id=None, **security_config(settings.kafka)
        )
        try:
            fetch = kafka_fetch(consumer)
            if args.operation == "rebuild":
                if not args.from_topic:
                    print("telerad audit ledger rebuild: say --from-topic", file=sys.stderr)
                    return 2
                target = Path(args.path) if args.path else cfg.ledger_path
                if target.exists() and target.stat().st_size > 0:
                    print(
                        f"telerad audit ledger rebuild: {target} exists; rebuild into a new "
                        "file (--path) or move it away",
                        file=sys.stderr,
                    )
                    return 2
                target.parent.mkdir(parents=True, exist_ok=True)

                def progress(r: Any) -> None:
                    print(
                        f"[telerad audit ledger rebuild] {r.segments}/{len(segments)} "
                        f"segments, {r.appended} leaves",
                        file=sys.stderr,
                        flush=True,
                    )

                with LedgerStore(target) as store:
                    report = rebuild(store, segments, fetch, heads, public_key, progress=progress)
            else:
                if not args.path:
                    print(
                        "telerad audit ledger restore: give the backup file (--path)",
                        file=sys.stderr,
                    )
                    return 2
                report = restore(
                    Path(args.path), cfg.ledger_path, public_key, segments, fetch, heads
                )
        finally:
            consumer.close()
    result = report.as_dict() | {
        "operation": args.operation,
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(result, indent=2))
    return 0 if report.ok else 1


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


def _feed(settings: Settings) -> Any:
    from broker.tls import pacs_sync_transport
    from streams.integrity import OrthancFeed

    pacs = settings.pacs
    rest = str(pacs.url).rstrip("/").removesuffix("/dicom-web")  # Orthanc's REST API beside it
    auth = (
        (pacs.username, pacs.password.get_secret_value())
        if pacs.username and pacs.password
        else None
    )
    # the same TLS as the broker's DICOMweb client: CA bundle, client certificate, host name
    return OrthancFeed(rest, auth, transport=pacs_sync_transport(pacs))


def _integrity_watch(args: argparse.Namespace) -> int:
    from broker.audit.cloudevents import to_record
    from broker.audit.kafka import make_producer, security_config
    from streams.health import ConsumerHealth, KafkaView, health_server
    from streams.integrity import Cursor, watch

    settings = _settings()
    cfg = settings.streams
    health = ConsumerHealth("integrity", stale_seconds=cfg.health_stale_seconds)
    server = (
        health_server(health, cfg.health_host, cfg.health_port)
        if cfg.health_port is not None
        else None
    )
    producer = make_producer(settings.kafka.bootstrap_servers, **security_config(settings.kafka))
    stopping = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    def emit(events: list[Any]) -> None:
        sent = []
        for event in events:
            key, value, headers = to_record(event, source="/telerad-broker/integrity")
            sent.append(
                producer.send(settings.kafka.audit_topic, key=key, value=value, headers=headers)
            )
            # every replica's copy: compacted, the newest fingerprint per SOP Instance UID
            sop_uid = str(event.detail["fingerprint"]["sop_uid"]).encode()
            sent.append(
                producer.send(
                    settings.kafka.fingerprint_topic, key=sop_uid, value=value, headers=headers
                )
            )
        try:
            for future in sent:
                future.get(timeout=30)  # durable before the cursor moves past them
        except Exception:
            health.observe(KafkaView(ok=False, detail="Kafka did not acknowledge"))
            raise

    def stop() -> bool:
        # called once per turn of the watch, after the PACS's feed answered
        health.beat()
        health.observe(KafkaView(ok=True, detail="following the PACS's change feed"))
        return stopping.is_set()

    def progress(line: str) -> None:
        print(f"[telerad integrity watch] {line}", file=sys.stderr, flush=True)

    feed = _feed(settings)
    try:
        stats = watch(
            feed,
            emit,
            Cursor.load(settings.streams.integrity_cursor_path),
            stop=stop,
            idle_exit_seconds=args.idle_exit,
            progress=progress,
        )
    finally:
        if server is not None:
            server.stop()
        feed.close()
        producer.close(5)
    print(json.dumps({"backfilled": stats.backfilled, "recorded": stats.recorded}))
    return 0


def _integrity_verify(args: argparse.Namespace) -> int:
    from streams.integrity import fingerprints_in_ledger, sweep
    from streams.ledger_store import LedgerStore

    settings = _settings()
    with LedgerStore(settings.streams.ledger_path) as store:
        recorded = fingerprints_in_ledger(store.leaf(i)[1] for i in range(store.size()))
    feed = _feed(settings)
    try:
        report = sweep(
            feed,
            recorded,
            per_second=args.rate or settings.streams.integrity_sweep_per_second,
            progress=lambda line: print(f"[telerad integrity verify] {line}", file=sys.stderr),
        )
    finally:
        feed.close()
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


def _stall_guarded(func: Any) -> Any:
    """``func``, with a batch run that gave up (StalledError) said in one line: exit 4."""
    from streams.runner import StalledError

    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except StalledError as exc:
            print(f"telerad audit {args.audit_command}: gave up: {exc}", file=sys.stderr)
            return 4
        return result

    return run


def add_integrity_commands(sub: Any) -> None:
    """Register ``telerad integrity ...`` on the top-level parser's subparsers."""
    integrity = sub.add_parser("integrity", help="imaging integrity: fingerprints and sweeps")
    cmds = integrity.add_subparsers(dest="integrity_command", required=True)
    watch = cmds.add_parser(
        "watch", help="fingerprint every instance the PACS stores into the ledger (backfill first)"
    )
    watch.add_argument(
        "--idle-exit", type=float, metavar="SECONDS", help="stop when idle this long"
    )
    watch.set_defaults(func=_integrity_watch)
    verify = cmds.add_parser(
        "verify",
        help="re-read the PACS and compare with the ledger's fingerprints; exit 1 on a finding",
    )
    verify.add_argument("--rate", type=float, help="instances per second (default: settings)")
    verify.set_defaults(func=_integrity_verify)


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
        parser.add_argument(
            "--give-up",
            type=float,
            default=120.0,
            metavar="SECONDS",
            help="batch runs: exit 4 when no partition was assigned, or a batch kept failing, "
            "this long (default: 120)",
        )
        parser.set_defaults(func=_stall_guarded(func))
        return parser

    ledger = consumer(
        "ledger",
        _ledger,
        "append audit events to the Merkle ledger (run), or get it back: rebuild, backup, restore",
    )
    ledger.add_argument(
        "operation",
        nargs="?",
        default="run",
        choices=["run", "rebuild", "backup", "restore"],
        help="run: the consumer (default); rebuild --from-topic [--path NEW]: from the "
        "segments and audit topics; backup --path FILE: an online copy, verified; restore "
        "--path FILE: a verified backup put back, then caught up from the topics",
    )
    ledger.add_argument(
        "--create-key", action="store_true", help="create the signing key if it does not exist"
    )
    ledger.add_argument(
        "--path", help="the backup file (backup, restore) or the new ledger (rebuild)"
    )
    ledger.add_argument("--from-topic", action="store_true", help="rebuild from the topics")
    ledger.add_argument("--public-key", help="the ledger's public key; default: <key>.pub")
    consumer("alerts", _alerts, "raise alerts from the audit stream")
    consumer(
        "worklist",
        _worklist,
        "check the RIS's worklist topic; dead-letter, with the reason, what no replica can apply",
    )
    export = consumer("export", _export, "export audit events for auditors and SIEMs")
    export.add_argument("--format", choices=["fhir", "dicom"], default="fhir")
    export.add_argument("--syslog", metavar="HOST:PORT", help="send to a syslog endpoint")
    export.add_argument(
        "--protocol",
        choices=["udp", "tcp", "tls"],
        default="tcp",
        help="tls: RFC 5425 (port 6514), verified with TELERAD_STREAMS__SYSLOG_TLS__*",
    )

    verify = cmds.add_parser("verify", help="recompute the ledger and check every signed head")
    verify.add_argument("--public-key", help="the ledger's public key (PEM); default: <key>.pub")
    verify.add_argument("--from-topic", action="store_true", help="also compare with the topic")
    verify.add_argument(
        "--offline",
        action="store_true",
        help="check the ledger only in itself: without the published heads an emptied or "
        "rolled-back ledger can pass",
    )
    verify.set_defaults(func=_verify)

    contain = cmds.add_parser("containment", help="alerts that acted: lift a containment")
    contain_cmds = contain.add_subparsers(dest="containment_command", required=True)
    lift = contain_cmds.add_parser(
        "lift", help="end a containment on every replica (an audited event)"
    )
    lift.add_argument("subject", help="the contained subject, e.g. npi:1000000001")
    lift.add_argument("--reason", required=True, help="why (recorded with the event)")
    lift.set_defaults(func=_lift)

    prove = cmds.add_parser("prove", help="inclusion proof of one event under the latest head")
    prove.add_argument("event_id")
    prove.set_defaults(func=_prove)
