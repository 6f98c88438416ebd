"""``telerad``: the broker's command line.

telerad serve                      run the broker (settings from TELERAD_* variables)
telerad stack provision            fetch/build the dev stack's parts into the cache
telerad stack up [--with-broker]   run the dev stack (and the broker) until Ctrl-C
                 [--kafka-nodes 3] with a three-node KRaft cluster
telerad kafka topics [--dry-run]   print the topics plan (partitions, replication, retention),
                                   then apply it
telerad worklist publish KIND STUDY_UID --facility F [--reader R ...] [--about R]
                 [--priority stat|urgent|routine] [--accession A] [--system S] [--dry-run]
                                   publish one RIS worklist event (as the Kafka principal of
                                   TELERAD_KAFKA__*; only the RIS's may write the topic)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from broker.app import create_app
    from broker.config import Settings, check_environment
    from broker.server import server_config

    try:
        check_environment()
        settings = Settings()
        # the command line's host and port win; the metrics listener binds the same host
        overrides = {"host": args.host, "port": args.port}
        settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        app = create_app(settings)
    except (ValueError, ValidationError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"telerad: configuration error: {_config_message(exc)}", file=sys.stderr)
        return 2
    server = uvicorn.Server(server_config(app, settings))
    server.run()
    return 0 if server.started else 3  # 3: it never started (uvicorn's code; port taken, …)


def _config_message(exc: Exception) -> str:
    """What is wrong with the settings, naming fields but never echoing their values."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        fields = [".".join(str(p) for p in e["loc"]) + f" ({e['msg']})" for e in exc.errors()]
        return "; ".join(fields)
    return str(exc)


def _no_devstack() -> bool:
    """Whether the dev stack is absent (it ships with a checkout, never in the image)."""
    if importlib.util.find_spec("devstack") is not None:
        return False
    print(
        "telerad stack: the dev stack is not part of this installation; "
        "run it from a source checkout (make run)",
        file=sys.stderr,
    )
    return True


def _provision(args: argparse.Namespace) -> int:
    if _no_devstack():
        return 2
    from devstack import provision

    tools = tuple(t for t in args.tools.split(",") if t)
    provision.ensure_all(tools=tools)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    if _no_devstack():
        return 2
    from devstack import provision
    from devstack._procs import ManagedProcess, free_port, progress
    from devstack.stack import DEV_USERS, PARTS, Stack

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    parts = tuple(p for p in args.parts.split(",") if p) if args.parts else PARTS
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    stack = Stack.start(parts, run_dir, kafka_nodes=args.kafka_nodes)
    broker: ManagedProcess | None = None
    try:
        env = stack.broker_env()
        if args.env_file:
            lines = [f"{k}='{v}'" for k, v in sorted(env.items())]
            Path(args.env_file).write_text("\n".join(lines) + "\n")
            progress(f"broker environment written to {args.env_file}")
        if args.with_broker:
            port = args.port or free_port()
            env |= {"TELERAD_PORT": str(port), "TELERAD_PUBLIC_URL": f"http://127.0.0.1:{port}"}
            env.setdefault("TELERAD_VIEWER_DIR", str(provision.ohif_dist()))
            broker = ManagedProcess(
                "broker",
                [sys.executable, "-m", "broker", "serve"],
                log_path=stack.run_dir / "logs" / "broker.log",
                env=env,
            )
            broker.start()
            broker.wait_ready(lambda: _ready(f"http://127.0.0.1:{port}/readyz"), timeout=60)
            progress(f"broker ready on http://127.0.0.1:{port} (readyz: every dependency ready)")
            progress(f"broker log: {broker.log_path}")
            progress(f"open http://127.0.0.1:{port}/ in a browser and sign in as {DEV_USERS}")
        progress(f"logs under {stack.run_dir / 'logs'}; Ctrl-C stops everything")
        while True:
            time.sleep(1)
            if broker is not None and not broker.running():
                progress("the broker exited; stopping the stack")
                return 1
    except KeyboardInterrupt:
        progress("stopping")
        return 0
    finally:
        if broker is not None:
            broker.stop()
        stack.stop()
        progress("stopped")


def _kafka_topics(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from broker.audit.kafka import security_config
    from broker.config import Settings, check_environment

    try:
        check_environment()
        settings = Settings()
        security = security_config(settings.kafka)
    except (ValueError, ValidationError) as exc:
        print(f"telerad: configuration error: {_config_message(exc)}", file=sys.stderr)
        return 2
    try:
        return _plan_and_apply(settings, security, dry_run=args.dry_run)
    except Exception as exc:  # noqa: BLE001 - Kafka's refusal, reported by name, exit 1
        print(f"telerad: kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _worklist_publish(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from broker.audit.kafka import security_config
    from broker.config import Settings, check_environment
    from broker.worklist import WorklistEvent, to_record

    try:
        event = WorklistEvent(
            kind=args.kind,
            study_uid=args.study_uid,
            accession_number=args.accession,
            facility=args.facility,
            readers=args.reader or [],
            reader=args.about,
            assigning_system=args.system,
            priority=args.priority,
        )
    except ValidationError as exc:
        print(f"telerad: not a valid worklist event: {_config_message(exc)}", file=sys.stderr)
        return 2
    key, value, headers = to_record(event, source=f"/ris/{args.system}")
    if args.dry_run:
        print(json.dumps({"key": key.decode(), "headers": {k: v.decode() for k, v in headers}}))
        print(value.decode())
        return 0
    try:
        check_environment()
        settings = Settings()
        security = security_config(settings.kafka)
    except (ValueError, ValidationError) as exc:
        print(f"telerad: configuration error: {_config_message(exc)}", file=sys.stderr)
        return 2
    from broker.worklist.publish import publish

    topic = settings.kafka.worklist_topic
    try:
        publish(
            [event],
            bootstrap=settings.kafka.bootstrap_servers,
            topic=topic,
            source=f"/ris/{args.system}",
            client_config=security,
        )
    except Exception as exc:  # noqa: BLE001 - Kafka's refusal (ACLs), reported by name, exit 1
        print(f"telerad: kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"published {event.type} for {event.study_uid} to {topic} (id {event.id})")
    return 0


def _plan_and_apply(settings: Any, security: dict[str, Any], *, dry_run: bool) -> int:
    from broker.audit.kafka_admin import admin_client
    from broker.audit.topics import apply, plan

    with admin_client(settings.kafka.bootstrap_servers, **security) as admin:
        changes = plan(admin, settings)
        print("plan:")
        for change in changes:
            print(f"  {change.line()}")
        if dry_run:
            return 0
        pending = [c for c in changes if c.action in ("create", "alter")]
        if pending:
            apply(admin, pending)
            print(f"applied: {', '.join(c.spec.name for c in pending)}")
        remaining = [c for c in plan(admin, settings) if c.action != "none"]
    for change in remaining:
        print(f"not as planned: {change.line()}", file=sys.stderr)
    return 1 if remaining else 0


def _ready(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=5).status_code == 200


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and for generated CLI docs)."""
    parser = argparse.ArgumentParser(
        prog="telerad", description="Zero-trust access broker for teleradiology."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker (settings from TELERAD_* variables)")
    serve.add_argument("--host", help="listen address (default: TELERAD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: TELERAD_PORT or 8000)")
    serve.set_defaults(func=_serve)

    stack = sub.add_parser(
        "stack", help="the dev/test stack: real Kafka, OPA, Keycloak and Orthanc"
    )
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    prov = stack_sub.add_parser(
        "provision", help="fetch and build every part into ~/.cache/telerad"
    )
    prov.add_argument(
        "--tools", default="opa", help="comma-separated Go tools to build too (opa,regal,helm)"
    )
    prov.set_defaults(func=_provision)
    up = stack_sub.add_parser("up", help="start the stack (and optionally the broker) until Ctrl-C")
    up.add_argument("--parts", help="comma-separated parts (default: kafka,opa,keycloak,orthanc)")
    up.add_argument("--with-broker", action="store_true", help="also start the broker against it")
    up.add_argument(
        "--kafka-nodes",
        type=int,
        choices=(1, 3),
        help="Kafka nodes: 1, or a 3-voter KRaft cluster (default: TELERAD_STACK_KAFKA_NODES or 1)",
    )
    up.add_argument("--port", type=int, help="the broker's port (default: a free one)")
    up.add_argument("--env-file", help="write the broker's TELERAD_* environment to this file")
    up.add_argument(
        "--run-dir", help="directory for the parts' data and logs (default: a temp dir)"
    )
    up.set_defaults(func=_up)

    kafka = sub.add_parser("kafka", help="the Kafka topics the broker and its consumers use")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", required=True)
    topics = kafka_sub.add_parser(
        "topics",
        help="print the plan (partitions, replication, min.insync.replicas, retention), apply it",
    )
    topics.add_argument("--dry-run", action="store_true", help="print the plan only")
    topics.set_defaults(func=_kafka_topics)

    worklist = sub.add_parser("worklist", help="the RIS's worklist events (dev stack, integrators)")
    worklist_sub = worklist.add_subparsers(dest="worklist_command", required=True)
    pub = worklist_sub.add_parser(
        "publish", help="publish one worklist event to TELERAD_KAFKA__WORKLIST_TOPIC"
    )
    pub.add_argument(
        "kind", choices=["assigned", "reassigned", "unassigned", "priority_changed", "closed"]
    )
    pub.add_argument("study_uid", help="the Study Instance UID (the record's key)")
    pub.add_argument("--facility", required=True, help="the facility's id, e.g. st-olaf")
    pub.add_argument(
        "--reader",
        action="append",
        help="a reader assigned AFTER this change (repeat; none: unassigned or closed)",
    )
    pub.add_argument("--about", help="the reader this change is about")
    pub.add_argument("--priority", default="routine", choices=["stat", "urgent", "routine"])
    pub.add_argument("--accession", help="the accession number")
    pub.add_argument("--system", default="ris-dev", help="the assigning system")
    pub.add_argument("--dry-run", action="store_true", help="print the record, send nothing")
    pub.set_defaults(func=_worklist_publish)

    from streams.cli import add_audit_commands, add_integrity_commands

    add_audit_commands(sub)
    add_integrity_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``telerad`` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
