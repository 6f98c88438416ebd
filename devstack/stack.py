"""The whole dev/test stack: which backend serves each part, starting them together, the env.

For each part the backend is chosen automatically, and reported:

* ``external`` when an environment variable points at a running service
  (``TELERAD_STACK_KAFKA_BOOTSTRAP``, ``TELERAD_STACK_OPA_URL``, ``TELERAD_STACK_KEYCLOAK_URL``,
  ``TELERAD_STACK_ORTHANC_URL`` with ``TELERAD_STACK_ORTHANC_USER``/``_PASSWORD``);
* ``testcontainers`` with ``TELERAD_STACK_BACKEND=testcontainers`` (or ``auto`` when a Docker
  engine answers): the part runs in a container built here, on that engine or on a private one
  the stack starts and stops (see :mod:`devstack.containers`);
* ``process`` otherwise: the part is provisioned into the cache and run as a local process.
  (With a Docker engine present, ``TELERAD_STACK_BACKEND=testcontainers`` selects containers;
  see :mod:`devstack.containers`.)

The process backend's Kafka is secured (TLS, SCRAM, ACLs; :mod:`devstack.kafka_cluster`)
unless ``TELERAD_STACK_KAFKA_PLAINTEXT=1``; external and container Kafkas are PLAINTEXT. It has
one node, or ``TELERAD_STACK_KAFKA_NODES`` (``telerad stack up --kafka-nodes 3``).

Orthanc (process and container backends) serves HTTPS with a certificate from a CA made at start
(:func:`devstack.services.prepare_orthanc_home`); the broker's environment carries that CA
(``TELERAD_PACS__TLS__CA_FILE``). ``TELERAD_STACK_ORTHANC_MTLS=1`` makes it require a client
certificate too (the broker's is passed), ``TELERAD_STACK_ORTHANC_PLAINTEXT=1`` keeps plain HTTP.
An external Orthanc's CA is ``TELERAD_STACK_ORTHANC_CA_FILE`` (none: the system's trust store).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devstack import containers, services
from devstack._procs import progress
from devstack.kafka_cluster import BROKER, CONSUMER, kafka_env
from devstack.services import Service

__all__ = ["DEV_USERS", "PARTS", "Stack", "kafka_plaintext", "repo_root"]

PARTS = ("kafka", "opa", "keycloak", "orthanc")

# Dev-only client secrets, matching devstack/resources/keycloak/*.json.
_REALMS = {
    "hospital-a": "dev-broker-secret-a",
    "hospital-b": "dev-broker-secret-b",
}


# Who `make run` tells a new user to sign in as (the realms' dev users; kept out of the image with
# the rest of devstack).
DEV_USERS = "a dev user: ada, ben or eve (password dev-password; eve's one-time code: README)"


def repo_root() -> Path:
    """The checkout this package lives in (the stack serves the repo's own policies)."""
    return Path(__file__).resolve().parents[1]


def kafka_plaintext() -> bool:
    """Whether the local Kafka runs PLAINTEXT (``TELERAD_STACK_KAFKA_PLAINTEXT=1``)."""
    return os.environ.get("TELERAD_STACK_KAFKA_PLAINTEXT", "").lower() in ("1", "true", "yes")


def _external(part: str) -> Service | None:
    env = os.environ
    if part == "kafka" and env.get("TELERAD_STACK_KAFKA_BOOTSTRAP"):
        return Service(
            "kafka", {"bootstrap": env["TELERAD_STACK_KAFKA_BOOTSTRAP"]}, Path("/dev/null")
        )
    if part == "opa" and env.get("TELERAD_STACK_OPA_URL"):
        return Service("opa", {"url": env["TELERAD_STACK_OPA_URL"].rstrip("/")}, Path("/dev/null"))
    if part == "keycloak" and env.get("TELERAD_STACK_KEYCLOAK_URL"):
        url = env["TELERAD_STACK_KEYCLOAK_URL"].rstrip("/")
        realms = {name: f"{url}/realms/{name}" for name in _REALMS}
        return Service("keycloak", {"url": url, **realms}, Path("/dev/null"))
    if part == "orthanc" and env.get("TELERAD_STACK_ORTHANC_URL"):
        url = env["TELERAD_STACK_ORTHANC_URL"].rstrip("/")
        return Service(
            "orthanc",
            {"url": url, "dicomweb": f"{url}/dicom-web"},
            Path("/dev/null"),
            extra={
                "user": env.get("TELERAD_STACK_ORTHANC_USER", services.ORTHANC_USER),
                "password": env.get("TELERAD_STACK_ORTHANC_PASSWORD", services.ORTHANC_PASSWORD),
                "tls": "https" if url.startswith("https://") else "plaintext",
                "ca_file": env.get("TELERAD_STACK_ORTHANC_CA_FILE", ""),  # empty: system store
            },
        )
    return None


@dataclass
class Stack:
    """The running parts of the stack, by name, and where their logs are."""

    run_dir: Path
    services: dict[str, Service] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    containers: containers.ContainerBackend | None = None

    @classmethod
    def start(
        cls,
        parts: tuple[str, ...] = PARTS,
        run_dir: Path | None = None,
        *,
        kafka_nodes: int | None = None,
    ) -> Stack:
        """Start ``parts`` concurrently; on any failure stop what did start and re-raise."""
        nodes = kafka_nodes or int(os.environ.get("TELERAD_STACK_KAFKA_NODES") or 1)
        run_dir = run_dir or Path(tempfile.mkdtemp(prefix="telerad-stack-"))
        stack = cls(run_dir)
        starters: dict[str, Callable[[], Service]] = {}
        externals = {part: _external(part) for part in parts}
        if containers.selected() and None in externals.values():
            stack.containers = containers.ContainerBackend(run_dir)
        for part in parts:
            external = externals[part]
            if external is not None:
                stack.services[part] = external
                stack.backends[part] = "external"
            elif stack.containers is not None:
                starters[part] = stack.containers.starter(part, repo_root())
                stack.backends[part] = "testcontainers"
            else:
                starters[part] = _process_starter(part, run_dir, nodes)
                stack.backends[part] = "process"
        progress("backends: " + ", ".join(f"{p}={b}" for p, b in stack.backends.items()))
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=len(starters) or 1) as pool:
            futures = {part: pool.submit(start) for part, start in starters.items()}
            for part, future in futures.items():
                try:
                    stack.services[part] = future.result()
                except BaseException as exc:  # noqa: BLE001 - collected, the rest stopped, re-raised
                    errors.append(exc)
        if errors:
            stack.stop()
            raise errors[0]
        if "orthanc" in stack.services:
            from devstack.samples import load_samples

            load_samples(stack.services["orthanc"])
        if "kafka" in stack.services:
            from devstack.samples import publish_sample_worklist

            # the RIS's assignments of the sample studies (the policy no longer has them)
            publish_sample_worklist(stack.services["kafka"])
        progress(
            "stack ready: " + ", ".join(f"{n} {s.endpoints}" for n, s in stack.services.items())
        )
        return stack

    def stop(self) -> None:
        """Stop every part this stack started (external ones are left alone)."""
        for name, service in self.services.items():
            if self.backends.get(name) != "external":
                service.stop()
        if self.containers is not None:
            self.containers.close()
            self.containers = None

    def consumer_env(self) -> dict[str, str]:
        """:meth:`broker_env` with the audit consumers' Kafka principal instead of the broker's."""
        return self.broker_env() | kafka_env(self.services["kafka"], CONSUMER)

    def _write_facts(self) -> Path:
        path = self.run_dir / "facts.json"
        path.write_text(json.dumps(_facts_catalog(), indent=2))
        return path

    def broker_env(self) -> dict[str, str]:
        """``TELERAD_*`` variables that point the broker at this stack."""
        env: dict[str, str] = {
            "TELERAD_ENVIRONMENT": "development",
            # The loopback stack speaks plain HTTP, where a Secure cookie would never come back.
            "TELERAD_IDENTITY__SESSION_COOKIE_SECURE": "false",
            # /metrics on a free loopback port (9464 may be another checkout's on this machine)
            "TELERAD_METRICS_PORT": "0",
        }
        if kafka := self.services.get("kafka"):
            env |= kafka_env(kafka, BROKER)
            # the topics' floor is what the dev cluster can hold (production keeps 3 and 2)
            nodes = len(kafka.extra.get("nodes") or [None])  # type: ignore[arg-type]
            env["TELERAD_KAFKA__REPLICATION_FACTOR"] = str(min(3, nodes))
            env["TELERAD_KAFKA__MIN_INSYNC_REPLICAS"] = str(min(2, nodes))
        if opa := self.services.get("opa"):
            env["TELERAD_OPA__URL"] = opa.endpoints["url"]
        if orthanc := self.services.get("orthanc"):
            env |= services.orthanc_broker_env(orthanc)
            env["TELERAD_FACTS_FILE"] = str(self._write_facts())
        if keycloak := self.services.get("keycloak"):
            env["TELERAD_ISSUERS"] = json.dumps(
                [
                    {
                        "issuer": keycloak.endpoints[realm],
                        "audiences": ["telerad-broker"],
                        "algorithms": ["RS256", "PS256", "ES256"],
                        "client_id": "telerad-broker",
                        "client_secret": secret,
                    }
                    for realm, secret in _REALMS.items()
                ]
            )
        return env


def _facts_catalog() -> dict[str, object]:
    from devstack.samples import sample_studies

    studies = sample_studies()
    return {
        "institutions": {s.raw["institution"]: s.facility for s in studies},
        "studies": {
            s.study_uid: {
                "labels": list(s.labels),
                "consent": s.consent,
                "referring_physician": s.referring_physician,
            }
            for s in studies
        },
    }


def _revision(root: Path) -> str:
    """The checkout's commit, as the policy bundle's revision ("dev" outside a git checkout)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "dev"
    return f"git-{head}" if head else "dev"


def _process_starter(part: str, run_dir: Path, kafka_nodes: int = 1) -> Callable[[], Service]:
    root = repo_root()
    if part == "kafka":
        return lambda: services.start_kafka(
            run_dir, secure=not kafka_plaintext(), nodes=kafka_nodes
        )
    if part == "opa":
        policy_paths = [root / "policies" / "telerad", root / "policies" / "data"]
        return lambda: services.start_opa(
            run_dir, policy_paths=[p for p in policy_paths if p.exists()], revision=_revision(root)
        )
    if part == "keycloak":
        return lambda: services.start_keycloak(run_dir)
    if part == "orthanc":
        return lambda: services.start_orthanc(run_dir)
    raise ValueError(f"unknown stack part {part!r}")
