"""The dev/test stack's services as local processes: Kafka (in :mod:`.kafka_cluster`), OPA,
Keycloak, Orthanc.

Each ``start_*`` function provisions what it needs (see :mod:`devstack.provision`), starts the
service on free loopback ports with its log under the run directory, waits until it answers, and
returns a :class:`Service` that knows its endpoints and how to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from broker.config import ClientTlsSettings
from broker.tls import client_ssl_context
from devstack import provision
from devstack._procs import ManagedProcess, ServiceStartError, free_port, progress
from devstack.kafka_cluster import new_cluster_id, start_kafka
from devstack.pki import DevCa

__all__ = [
    "ORTHANC_PASSWORD",
    "ORTHANC_USER",
    "OrthancHome",
    "OrthancTls",
    "Service",
    "orthanc_broker_env",
    "orthanc_client",
    "orthanc_ssl_context",
    "orthanc_tls_settings",
    "start_kafka",
    "start_keycloak",
    "start_opa",
    "start_orthanc",
]

# Dev-only credentials of the local PACS (never used outside the loopback dev stack).
ORTHANC_USER = "telerad"
ORTHANC_PASSWORD = "dev-only-orthanc"  # noqa: S105
KEYCLOAK_ADMIN_PASSWORD = "dev-only-admin"  # noqa: S105


@dataclass
class Service:
    """A running stack service: its name, endpoints, log and process."""

    name: str
    endpoints: dict[str, str]
    log_path: Path
    process: ManagedProcess | None = None
    extra: dict[str, object] = field(default_factory=dict)
    more: list[ManagedProcess] = field(default_factory=list)  # a cluster's other nodes

    def stop(self) -> None:
        for process in [*self.more, self.process]:
            if process is not None:
                process.stop()

    def running(self) -> bool:
        processes = [self.process, *self.more]
        return all(p is not None and p.running() for p in processes)


def http_ok(url: str, *, auth: tuple[str, str] | None = None) -> bool:
    return httpx.get(url, auth=auth, timeout=2.0).status_code == 200


def resource(name: str) -> Path:
    """A file or folder under ``devstack/resources`` (realms, Orthanc and OPA configuration)."""
    return Path(__file__).parent / "resources" / name


# ------------------------------------------------- Kafka (the container backend's PLAINTEXT node)
# The process backend's secured Kafka is devstack.kafka_cluster's; the container backend
# runs one PLAINTEXT node from these.
def prepare_kafka_home(home: Path) -> str:
    """A fresh ``home`` (config on new loopback ports, log config, empty data); the cluster id."""
    shutil.rmtree(home, ignore_errors=True)
    (home / "data").mkdir(parents=True)
    _write_kafka_config(home / "server.properties", home, free_port(), free_port())
    shutil.copy(resource("kafka-log4j2.xml"), home / "log4j2.xml")
    return new_cluster_id()


def kafka_bootstrap(home: Path) -> str:
    """The bootstrap address the Kafka in ``home`` advertises."""
    port = int(_property(home / "server.properties", "advertised.listeners").rsplit(":", 1)[1])
    return f"127.0.0.1:{port}"


def _write_kafka_config(config: Path, home: Path, port: int, controller_port: int) -> None:
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={home / 'data'}",
                "num.partitions=3",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=3",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "min.insync.replicas=1",
                "",
            ]
        )
    )


def _property(config: Path, name: str) -> str:
    for line in config.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise KeyError(name)


def kafka_ready(bootstrap: str) -> bool:
    from broker.audit.kafka import cluster_brokers  # kafka-python is slow to import

    return cluster_brokers(bootstrap, 3000) >= 1


# ----------------------------------------------------------------------------------------- OPA
def bundle_source(target: Path, policy_paths: list[Path], revision: str) -> Path:
    """A bundle directory: the policies (no tests), their data, and a manifest that claims only
    the ``telerad`` root, so the rest of OPA's namespace stays writable (the smoke tests use it).
    """
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in policy_paths:
        if path.is_file():
            shutil.copy(path, target / path.name)
            continue
        for item in path.rglob("*"):
            if (
                item.is_file()
                and not item.name.endswith("_test.rego")
                and not item.name.startswith(".")
            ):
                destination = target / item.relative_to(path.parent)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(item, destination)
    # data files keep their place: policies/data/data.json holds {"telerad": {...}} at the root
    for data in target.glob("data/*.json"):
        data.rename(target / data.name)
    (target / ".manifest").write_text(json.dumps({"revision": revision, "roots": ["telerad"]}))
    return target


def start_opa(
    run_dir: Path,
    *,
    policy_paths: list[Path],
    revision: str | None = None,
    timeout: float = 30.0,
) -> Service:
    """An OPA server with the given policy/data paths loaded (test files excluded).

    With ``revision``, the paths are first built into a bundle (``opa build --revision``) and
    served as one, so every decision names the policy revision it came from; without it, they
    are loaded as plain files, which leaves the data writable through OPA's API.
    """
    opa = provision.go_tool("opa")
    port = free_port()
    log_path = run_dir / "logs" / "opa.log"
    sources = [str(p) for p in policy_paths]
    if revision is not None:
        bundle = run_dir / "opa" / "policy-bundle.tar.gz"
        source = bundle_source(run_dir / "opa" / "bundle-src", policy_paths, revision)
        build = subprocess.run(
            [str(opa), "build", "--bundle", str(source), "-o", str(bundle)],
            capture_output=True,
            text=True,
            check=False,
        )
        if build.returncode != 0:
            raise ServiceStartError(
                f"opa: the policy bundle did not build:\n{build.stderr[-2000:]}"
            )
        sources = ["--bundle", bundle.name]  # relative: OPA names the bundle by this path
    argv = [
        str(opa),
        "run",
        "--server",
        f"--addr=127.0.0.1:{port}",
        "--log-format=json",
        "--log-level=info",
        # plain files: skip tests and dotfiles (a bundle is already clean, and its .manifest,
        # which names the roots it owns, must not be skipped)
        *(["--ignore=*_test.rego", "--ignore=.*"] if revision is None else []),
        "--set=decision_logs.console=true",  # decision ids in answers, decisions in the log
        *sources,
    ]
    progress(f"opa: starting on 127.0.0.1:{port}")
    (run_dir / "opa").mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess("opa", argv, log_path=log_path, cwd=run_dir / "opa")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: http_ok(f"{url}/health"), timeout=timeout)
    return Service("opa", {"url": url}, log_path, proc)


# ------------------------------------------------------------------------------------ Orthanc
OrthancTls = Literal["plaintext", "https", "mutual"]


def orthanc_tls_mode() -> OrthancTls:
    """The stack's Orthanc: HTTPS by default; ``TELERAD_STACK_ORTHANC_MTLS=1`` also requires
    client certificates; ``TELERAD_STACK_ORTHANC_PLAINTEXT=1`` keeps plain HTTP (the smallest
    local runs, like PLAINTEXT Kafka; the broker refuses it in production)."""
    if os.environ.get("TELERAD_STACK_ORTHANC_PLAINTEXT", "").lower() in ("1", "true", "yes"):
        return "plaintext"
    if os.environ.get("TELERAD_STACK_ORTHANC_MTLS", "").lower() in ("1", "true", "yes"):
        return "mutual"
    return "https"


@dataclass(frozen=True)
class OrthancHome:
    """A prepared Orthanc home: its config file, what the :class:`Service` carries about its
    TLS (``tls``, ``ca_file``, ``client_cert``, ``client_key``) and the process's environment."""

    config: Path
    extra: dict[str, object]
    env: dict[str, str]


def prepare_orthanc_home(home: Path, port: int, tls: OrthancTls) -> OrthancHome:
    """A fresh ``home``: storage, the configuration and, with TLS, a throw-away CA, the server's
    certificate (``localhost``/``127.0.0.1``), one client certificate and the OpenSSL 3 shim
    Debian's civetweb needs to serve HTTPS (:func:`provision.orthanc_openssl3_shim`)."""
    shutil.rmtree(home, ignore_errors=True)
    (home / "db").mkdir(parents=True)
    extra: dict[str, object] = {"tls": tls}
    env: dict[str, str] = {}
    config = orthanc_config(home, port)
    if tls != "plaintext":
        directory = home / "tls"
        directory.mkdir()
        (home / "lib").mkdir()
        shutil.copy(provision.orthanc_openssl3_shim(), home / "lib" / "libssl.so")
        env["LD_LIBRARY_PATH"] = str(home / "lib")  # inside the home: containers mount it too
        ca = DevCa("telerad dev-stack Orthanc CA (throw-away)")
        server = ca.issue("telerad-orthanc", server=True)
        server_pem = directory / "server.pem"  # Orthanc wants the key and the certificate in one
        server_pem.write_bytes(server.key_pem() + server.cert_pem())
        server_pem.chmod(0o600)
        cert, key = ca.issue("telerad-broker", server=False).write(
            directory / "client.crt.pem", directory / "client.key.pem"
        )
        extra |= {
            "ca_file": str(ca.write(directory / "ca.pem")),
            "client_cert": str(cert),
            "client_key": str(key),
        }
        config |= {"SslEnabled": True, "SslCertificate": str(server_pem)}
        if tls == "mutual":  # a client certificate signed by the CA, or the handshake fails
            config |= {
                "SslVerifyPeers": True,
                "SslTrustedClientCertificates": str(extra["ca_file"]),
            }
    config_path = home / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    return OrthancHome(config_path, extra, env)


def orthanc_endpoints(port: int, tls: OrthancTls) -> dict[str, str]:
    """The REST root (``url``) and the DICOMweb root of an Orthanc on loopback ``port``."""
    url = f"{'http' if tls == 'plaintext' else 'https'}://127.0.0.1:{port}"
    return {"url": url, "dicomweb": f"{url}/dicom-web"}


def orthanc_ssl_context(orthanc: Service, *, client_cert: bool = True) -> ssl.SSLContext | None:
    """How a direct client verifies the stack's Orthanc (its CA; its client certificate when
    it asks for one, unless ``client_cert=False``); None for a plain-HTTP one."""
    if orthanc.extra.get("tls", "plaintext") == "plaintext":
        return None
    return client_ssl_context(orthanc_tls_settings(orthanc, client_cert=client_cert))


def orthanc_tls_settings(orthanc: Service, *, client_cert: bool = True) -> ClientTlsSettings:
    """The broker's ``pacs.tls`` for this Orthanc (no CA file: the system's trust store)."""

    def path(key: str) -> Path | None:
        value = orthanc.extra.get(key)
        return Path(str(value)) if value else None

    mutual = client_cert and orthanc.extra.get("tls") == "mutual"
    return ClientTlsSettings(
        ca_file=path("ca_file"),
        cert_file=path("client_cert") if mutual else None,
        key_file=path("client_key") if mutual else None,
    )


def orthanc_broker_env(orthanc: Service, *, client_cert: bool = True) -> dict[str, str]:
    """``TELERAD_PACS__*`` for a broker that reads this Orthanc: URL, credentials, its CA and,
    when it requires one (and ``client_cert``), the client certificate."""
    env = {
        "TELERAD_PACS__URL": orthanc.endpoints["dicomweb"],
        "TELERAD_PACS__USERNAME": str(orthanc.extra["user"]),
        "TELERAD_PACS__PASSWORD": str(orthanc.extra["password"]),
    }
    tls = orthanc_tls_settings(orthanc, client_cert=client_cert)
    for name, value in (
        ("CA_FILE", tls.ca_file),
        ("CERT_FILE", tls.cert_file),
        ("KEY_FILE", tls.key_file),
    ):
        if value is not None:
            env[f"TELERAD_PACS__TLS__{name}"] = str(value)
    return env


def orthanc_client(orthanc: Service, **options: Any) -> httpx.Client:
    """An httpx client on the Orthanc's REST root, authenticated and verifying its TLS."""
    auth = (str(orthanc.extra["user"]), str(orthanc.extra["password"]))
    verify = orthanc_ssl_context(orthanc)
    return httpx.Client(
        base_url=orthanc.endpoints["url"],
        auth=auth,
        verify=verify if verify is not None else True,
        **options,
    )


def start_orthanc(
    run_dir: Path, *, timeout: float = 60.0, tls: OrthancTls | None = None
) -> Service:
    """Orthanc with the DICOMweb plugin on loopback with basic auth, DICOM port closed; HTTPS
    (``tls="https"``, the default from :func:`orthanc_tls_mode`), mutual TLS (``"mutual"``) or
    plain HTTP (``"plaintext"``)."""
    tls = tls or orthanc_tls_mode()
    binary = provision.orthanc_binary()
    home = run_dir / "orthanc"
    port = free_port()
    prepared = prepare_orthanc_home(home, port, tls)
    log_path = run_dir / "logs" / "orthanc.log"
    progress(f"orthanc: starting on 127.0.0.1:{port} ({tls})")
    proc = ManagedProcess(
        "orthanc",
        [str(binary), "--logfile=/dev/stdout", str(prepared.config)],
        log_path=log_path,
        env=prepared.env,
    )
    proc.start()
    endpoints = orthanc_endpoints(port, tls)
    service = Service(
        "orthanc",
        endpoints,
        log_path,
        proc,
        extra={"user": ORTHANC_USER, "password": ORTHANC_PASSWORD, "storage": str(home / "db")}
        | prepared.extra,
    )
    proc.wait_ready(lambda: orthanc_answers(service), timeout=timeout)
    return service


def orthanc_answers(orthanc: Service) -> bool:
    """Whether the Orthanc answers ``/system`` with 200 (its TLS verified)."""
    with orthanc_client(orthanc, timeout=2.0) as client:
        return client.get("/system").status_code == 200


def orthanc_config(home: Path, port: int) -> dict[str, object]:
    """Orthanc's configuration: storage under ``home``, HTTP on loopback ``port``, basic auth
    (TLS is added by :func:`prepare_orthanc_home`)."""
    return {
        "Name": "telerad-dev-pacs",
        "StorageDirectory": str(home / "db"),
        "IndexDirectory": str(home / "db"),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "HttpDescribeErrors": False,
        "Plugins": [str(provision.orthanc_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        "StorageCompression": False,
        # every read from disk, as the integrity sweep and its drill need (no in-memory copy)
        "MaximumStorageCacheSize": 0,
    }


# ----------------------------------------------------------------------------------- Keycloak
def _keycloak_run_home(dist: Path, home: Path) -> Path:
    """A Keycloak home of our own: the cached distribution linked in, ``data/`` per run.

    Keycloak imports realms only from ``<home>/data/import`` and keeps its database under
    ``<home>/data``, so each run gets its own home; ``kc.sh`` is copied (it resolves its home
    from its own real path) and the rest is linked.
    """
    shutil.rmtree(home, ignore_errors=True)
    (home / "bin").mkdir(parents=True)
    for entry in dist.iterdir():
        if entry.name in ("bin", "data", "conf"):
            continue
        (home / entry.name).symlink_to(entry)
    shutil.copytree(dist / "conf", home / "conf")
    for entry in (dist / "bin").iterdir():
        if entry.name == "kc.sh":
            shutil.copy2(entry, home / "bin" / "kc.sh")
        else:
            (home / "bin" / entry.name).symlink_to(entry)
    imports = home / "data" / "import"
    imports.mkdir(parents=True)
    for realm in sorted(resource("keycloak").glob("*.json")):
        shutil.copy(realm, imports / realm.name)
    return home


def start_keycloak(run_dir: Path, *, timeout: float = 360.0) -> Service:
    """Keycloak in dev mode with the telerad realms imported into a fresh in-memory database."""
    dist = provision.keycloak_home()
    java_home = provision.java_home(21)
    home = _keycloak_run_home(dist, run_dir / "keycloak")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = run_dir / "logs" / "keycloak.log"
    env = {"JAVA_HOME": java_home, **KEYCLOAK_ENV}
    argv = [str(home / "bin" / "kc.sh"), *keycloak_args(port)]
    progress(f"keycloak: starting on 127.0.0.1:{port} (20-40 s on two cores)")
    proc = ManagedProcess("keycloak", argv, log_path=log_path, env=env, cwd=home)
    proc.start()
    proc.wait_ready(lambda: keycloak_ready(url), timeout=timeout, interval=1.0)
    return Service("keycloak", keycloak_endpoints(url), log_path, proc)


KEYCLOAK_ENV = {
    "JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx768m",
    "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
    "KC_BOOTSTRAP_ADMIN_PASSWORD": KEYCLOAK_ADMIN_PASSWORD,
}


def keycloak_endpoints(url: str) -> dict[str, str]:
    """The server's URL and each telerad realm's issuer."""
    realms = ("hospital-a", "hospital-b", "northstar-reading")
    return {"url": url, **{r: f"{url}/realms/{r}" for r in realms}}


def keycloak_ready(url: str) -> bool:
    """Keycloak is up *and* every telerad realm was imported (its discovery document answers).

    A server whose import found no realm files reports healthy; waiting on the realms makes that
    a start-up failure with Keycloak's log instead of a 404 in every identity test.
    """
    endpoints = keycloak_endpoints(url)
    issuers = [v for k, v in endpoints.items() if k != "url"]
    return http_ok(f"{url}/health/ready") and all(
        http_ok(f"{issuer}/.well-known/openid-configuration") for issuer in issuers
    )


def keycloak_args(port: int) -> list[str]:
    """``kc.sh`` arguments: dev mode on loopback ``port``, the realms imported at start."""
    url = f"http://127.0.0.1:{port}"
    return [
        "start-dev",
        "--import-realm",
        "--db=dev-mem",  # a fresh import every start: the realms always match the repo's files
        "--http-host=127.0.0.1",
        f"--http-port={port}",
        f"--hostname={url}",  # pins `iss`; otherwise dev mode builds it from the Host header
        "--health-enabled=true",
        "--http-management-health-enabled=false",  # health on the main port, no port 9000
    ]
