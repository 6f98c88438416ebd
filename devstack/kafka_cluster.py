"""The dev stack's Kafka: KRaft on loopback, secured by default (TLS, SCRAM, ACLs).

Secured, the node has three listeners:

* ``CLIENT`` (SASL_SSL, SCRAM-SHA-512): what the broker and the audit consumers use;
* ``INTERNAL`` (SSL, client certificate required): inter-broker traffic, and mutual-TLS clients;
* ``CONTROLLER`` (SSL, client certificate required): the KRaft quorum.

The CA and certificates are made at start (:mod:`devstack.kafka_tls`); the SCRAM users are
created when storage is formatted (``--add-scram``), with random passwords kept in the run
directory; KRaft's ``StandardAuthorizer`` enforces the ACLs in :data:`DEV_ACLS` (nothing is
allowed that is not granted). ``secure=False`` (``TELERAD_STACK_KAFKA_PLAINTEXT=1``) keeps the
old single PLAINTEXT listener for the smallest local runs.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from broker.audit.kafka_admin import AclGrant, admin_client, create_acls
from devstack import provision
from devstack._procs import ManagedProcess, free_port, progress
from devstack.kafka_tls import NODE_CN, make_pki

__all__ = [
    "ADMIN",
    "BROKER",
    "CONSUMER",
    "DEV_ACLS",
    "INTRUDER",
    "RIS",
    "client_kwargs",
    "kafka_env",
    "kafka_jvm",
    "new_cluster_id",
    "security_kwargs",
    "start_kafka",
]

ADMIN = "telerad-admin"  # super user: creates the ACLs and topics
BROKER = "telerad-broker"  # the broker's principal: writes audit and control topics
CONSUMER = "telerad-consumer"  # the audit consumers: read; write only their own outputs
INTRUDER = "telerad-intruder"  # a valid SCRAM user with no grants (the attacker tests use it)
# the alerts consumer when its rules contain (streams.containment): reads like a consumer, and
# may write revocations to the control topic, as only the broker may otherwise
RESPONDER = "telerad-responder"
# the RIS (or its integration engine): the only principal that may write the worklist topic;
# the broker and the consumers only read it, so the broker cannot forge an assignment
RIS = "telerad-ris"
USERS = (ADMIN, BROKER, CONSUMER, INTRUDER, RESPONDER, RIS)
MTLS_CLIENT = "telerad-broker"  # CN of the mutual-TLS client certificate (User:CN=...)

# Topic name prefixes: the defaults' and the test suite's fresh per-test names.
_AUDIT = ("telerad.audit.", "audit-")
_CONTROL = ("telerad.revocations.", "revocations-")
_WORKLIST = ("telerad.worklist.", "worklist-")
# instance fingerprints: the integrity watcher (the broker's principal here) writes, every
# broker replica reads; the audit consumers may read them too
_FINGERPRINTS = ("telerad.fingerprints.", "fingerprints-")
_STREAM_OUT = (
    "telerad.audit.dlq.",
    "telerad.ledger.heads.",
    "telerad.ledger.segments.",
    "telerad.alerts.",
    "dlq-",
    "heads-",
    "segments-",
)


def _grants() -> list[AclGrant]:
    broker = (f"User:{BROKER}", f"User:CN={MTLS_CLIENT}")
    grants: list[AclGrant] = []
    for principal in broker:
        grants += [AclGrant(principal, "topic", p, ("WRITE", "CREATE", "DESCRIBE")) for p in _AUDIT]
        grants += [AclGrant(principal, "topic", p, ("DESCRIBE_CONFIGS",)) for p in _AUDIT]
        grants += [
            AclGrant(principal, "topic", p, ("WRITE", "READ", "CREATE", "DESCRIBE"))
            for p in _CONTROL + _FINGERPRINTS
        ]
        grants += [AclGrant(principal, "topic", p, ("READ", "DESCRIBE")) for p in _WORKLIST]
    consumer = f"User:{CONSUMER}"
    grants += [AclGrant(consumer, "topic", p, ("READ", "DESCRIBE")) for p in _WORKLIST]
    ris = f"User:{RIS}"
    grants += [
        AclGrant(ris, "topic", p, ("WRITE", "READ", "CREATE", "DESCRIBE")) for p in _WORKLIST
    ]
    grants += [
        AclGrant(consumer, "topic", p, ("READ", "DESCRIBE"))
        for p in _AUDIT + _CONTROL + _FINGERPRINTS
    ]
    grants += [
        AclGrant(consumer, "topic", p, ("WRITE", "READ", "CREATE", "DESCRIBE")) for p in _STREAM_OUT
    ]
    grants.append(AclGrant(consumer, "group", "*", ("READ",), literal=True))
    responder = f"User:{RESPONDER}"
    grants += [AclGrant(responder, "topic", p, ("READ", "DESCRIBE")) for p in _AUDIT + _CONTROL]
    grants += [AclGrant(responder, "topic", p, ("WRITE", "CREATE")) for p in _AUDIT + _CONTROL]
    grants += [
        AclGrant(responder, "topic", p, ("WRITE", "READ", "CREATE", "DESCRIBE"))
        for p in _STREAM_OUT
    ]
    grants.append(AclGrant(responder, "group", "*", ("READ",), literal=True))
    return grants


DEV_ACLS = _grants()


def kafka_jvm(java: str, classpath: str, home: Path) -> list[str]:
    """The JVM command line a Kafka node runs with (its main class and arguments follow);
    the process nodes here and the container backend's node alike."""
    return [
        java,
        "-Xms128m",
        "-Xmx512m",
        "-XX:+UseSerialGC",  # two cores: a small heap with the serial collector starts fastest
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={home / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={home}",
        "-cp",
        classpath,
    ]


def new_cluster_id() -> str:
    """A KRaft cluster id the storage tool accepts (never starting with "-", read as an option)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def _jvm(home: Path) -> list[str]:
    java = str(Path(provision.java_home(17)) / "bin" / "java")
    return kafka_jvm(java, provision.kafka_classpath(), home)


def start_kafka(
    run_dir: Path,
    *,
    timeout: float = 120.0,
    fresh: bool = True,
    secure: bool = True,
    nodes: int = 1,
) -> Any:
    """A KRaft cluster of ``nodes`` combined broker+controller nodes; returns a ``Service``.

    ``nodes=3`` is a three-voter controller quorum, as Kafka's docs recommend, with topics
    replicated three times and ``min.insync.replicas=2`` by default. ``fresh`` formats new storage
    on new ports (with new certificates and passwords); otherwise the cluster in ``run_dir`` is
    started again with its data (a restart, as after an outage).
    """
    from devstack.services import Service

    home = run_dir / "kafka"
    state_file = home / "stack-state.json"  # ports, passwords: dev-only, in the run directory
    jvm = _jvm(home)
    if fresh or not state_file.exists():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        shutil.copy(Path(__file__).parent / "resources" / "kafka-log4j2.xml", home / "log4j2.xml")
        state: dict[str, Any] = {
            "secure": secure,
            "nodes": [
                {
                    "id": i,
                    "port": free_port(),
                    "internal_port": free_port(),
                    "controller_port": free_port(),
                }
                for i in range(1, nodes + 1)
            ],
            "users": {user: secrets.token_urlsafe(18) for user in USERS} if secure else {},
        }
        scram: list[str] = []
        if secure:
            pki = make_pki(home / "tls", (MTLS_CLIENT,))
            state |= {
                "ca_file": str(pki.ca_file),
                "keystore": str(pki.node_keystore),
                "key_password": pki.node_key_password,
                "client_certs": {cn: [str(c), str(k)] for cn, (c, k) in pki.client_certs.items()},
            }
            for user, password in state["users"].items():
                scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        state_file.write_text(json.dumps(state, indent=2))
        state_file.chmod(0o600)
        cluster_id = new_cluster_id()
        progress(
            f"kafka: formatting KRaft storage of {nodes} node(s)"
            + (" with SCRAM users" if secure else "")
        )
        formats = []
        for node in state["nodes"]:
            config = _node_home(home, node) / "server.properties"
            (config.parent / "data").mkdir(parents=True)
            config.write_text(_config(state, node, config.parent))
            storage = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)]
            fmt = ManagedProcess(
                f"kafka-{node['id']} (storage format)",
                [*jvm, *storage, *scram],
                log_path=run_dir / "logs" / f"kafka-{node['id']}.log",
            )
            fmt.start()
            formats.append(fmt)
        started = time.monotonic()
        while any(f.running() for f in formats):
            if time.monotonic() - started > 90:
                for fmt in formats:
                    fmt.stop()
                break
            time.sleep(0.2)
    state = json.loads(state_file.read_text())
    bootstrap = ",".join(f"127.0.0.1:{n['port']}" for n in state["nodes"])
    mode = "SASL_SSL, ACLs on" if state["secure"] else "PLAINTEXT"
    progress(f"kafka: starting {len(state['nodes'])} node(s) on {bootstrap} ({mode})")
    procs = []
    for node in state["nodes"]:
        config = _node_home(home, node) / "server.properties"
        proc = ManagedProcess(
            f"kafka-{node['id']}" if len(state["nodes"]) > 1 else "kafka",
            [*jvm, "kafka.Kafka", str(config)],
            log_path=run_dir / "logs" / f"kafka-{node['id']}.log",
        )
        proc.start()
        procs.append(proc)
    endpoints = {"bootstrap": bootstrap}
    if state["secure"]:
        endpoints["bootstrap_mtls"] = ",".join(
            f"127.0.0.1:{n['internal_port']}" for n in state["nodes"]
        )
    service = Service(
        "kafka",
        endpoints,
        procs[0].log_path,
        procs[0],
        extra={"run_dir": run_dir, "node_processes": procs} | state,
        more=procs[1:],
    )
    admin = client_kwargs(service, ADMIN)
    try:
        for proc in procs:
            proc.wait_ready(lambda: _ready(admin, len(procs)), timeout=timeout, interval=0.5)
    except BaseException:
        service.stop()
        raise
    # (again) when the grants changed since this cluster's ACLs were made: creating is idempotent
    wanted = sum(len(grant.operations) for grant in DEV_ACLS)
    if state["secure"] and (fresh or state.get("acls") != wanted):
        with admin_client(**admin) as client:
            made = create_acls(client, DEV_ACLS)
        progress(f"kafka: {made} ACLs created")
        state["acls"] = made
        state_file.write_text(json.dumps(state, indent=2))
        service.extra["acls"] = made
    return service


def _node_home(home: Path, node: dict[str, Any]) -> Path:
    return home / f"node-{node['id']}"


def _config(state: dict[str, Any], node: dict[str, Any], home: Path) -> str:
    port, internal, controller = node["port"], node["internal_port"], node["controller_port"]
    n = len(state["nodes"])
    voters = ",".join(f"{v['id']}@127.0.0.1:{v['controller_port']}" for v in state["nodes"])
    isr = min(2, n)
    common = [
        "process.roles=broker,controller",
        f"node.id={node['id']}",
        f"controller.quorum.voters={voters}",
        "controller.listener.names=CONTROLLER",
        f"log.dirs={home / 'data'}",
        "num.partitions=3",
        f"default.replication.factor={n}",
        f"offsets.topic.replication.factor={n}",
        "offsets.topic.num.partitions=3",
        f"transaction.state.log.replication.factor={n}",
        f"transaction.state.log.min.isr={isr}",
        f"share.coordinator.state.topic.replication.factor={n}",
        f"share.coordinator.state.topic.min.isr={isr}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        f"min.insync.replicas={isr}",
    ]
    if not state["secure"]:
        lines = [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
        return "\n".join([*common, *lines, ""])
    scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    lines = [
        "listeners="
        f"CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},"
        f"CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}",
        "inter.broker.listener.name=INTERNAL",
        "listener.security.protocol.map=CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL",
        # one certificate for the node, presented as server and as client (to the controller)
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={state['keystore']}",
        f"ssl.keystore.password={state['key_password']}",
        f"ssl.key.password={state['key_password']}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={state['ca_file']}",
        "ssl.endpoint.identification.algorithm=https",
        "listener.name.internal.ssl.client.auth=required",
        "listener.name.controller.ssl.client.auth=required",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512",
        f"listener.name.client.scram-sha-512.sasl.jaas.config={scram_login}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:CN={NODE_CN};User:{ADMIN}",
    ]
    return "\n".join([*common, *lines, ""])


def _ready(admin: dict[str, Any], nodes: int) -> bool:
    from broker.audit.kafka import cluster_brokers  # kafka-python is slow to import

    security = {k: v for k, v in admin.items() if k != "bootstrap_servers"}
    return cluster_brokers(admin["bootstrap_servers"], 3000, **security) >= nodes


def client_kwargs(service: Any, user: str = BROKER) -> dict[str, Any]:
    """kafka-python keyword arguments (``bootstrap_servers`` included) for ``user``."""
    return {"bootstrap_servers": service.endpoints["bootstrap"]} | security_kwargs(service, user)


def security_kwargs(service: Any, user: str = BROKER) -> dict[str, Any]:
    """kafka-python's security keyword arguments for ``user`` (none for a PLAINTEXT node)."""
    if not service.extra.get("secure"):
        return {}
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": service.extra["users"][user],
        "ssl_cafile": service.extra["ca_file"],
    }


def kafka_env(service: Any, user: str = BROKER) -> dict[str, str]:
    """``TELERAD_KAFKA__*`` variables that connect the broker (or a consumer) as ``user``."""
    env = {"TELERAD_KAFKA__BOOTSTRAP_SERVERS": service.endpoints["bootstrap"]}
    if not service.extra.get("secure"):
        return env | {"TELERAD_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"}
    return env | {
        "TELERAD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "TELERAD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "TELERAD_KAFKA__SASL_USERNAME": user,
        "TELERAD_KAFKA__SASL_PASSWORD": service.extra["users"][user],
        "TELERAD_KAFKA__SSL_CA_FILE": service.extra["ca_file"],
    }
