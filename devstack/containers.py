"""The stack's parts as containers (testcontainers) on a Docker engine, with host networking.

Selected by ``TELERAD_STACK_BACKEND=testcontainers`` (a private engine is started when none is
reachable, see :mod:`devstack.engine`), or by ``auto`` (the default) when an engine already
answers. The images are the projects' public ones where they can be pulled, else built here
(:mod:`devstack.images`, ``TELERAD_STACK_IMAGES``): no registry is needed.
``TELERAD_STACK_IMAGE_<PART>`` (``KAFKA``, ``OPA``, ``KEYCLOAK``, ``ORTHANC``) names another
image instead, which must have the same layout (``/opt/kafka/libs`` and ``java``; ``opa``;
``/opt/keycloak``; ``Orthanc`` with the DICOMweb plugin on Debian's path).

Every container uses the host's network (``--network host``: the private engine runs without a
bridge, so ports cannot be published) and listens on a free loopback port, exactly like the
process backend; configuration and data live in the run directory, mounted at the same path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack import provision, services
from devstack._procs import ServiceStartError, free_port, log_tail, progress
from devstack.engine import DockerEngine, engine_answers
from devstack.images import PUBLIC_OPA, PUBLIC_ORTHANC_DICOMWEB, Images, is_public
from devstack.kafka_cluster import kafka_jvm
from devstack.services import Service

__all__ = ["ContainerBackend", "docker_engine_reachable", "selected"]


def docker_engine_reachable() -> bool:
    """True when a Docker engine answers (not merely a docker client installed)."""
    return engine_answers(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))


def selected() -> bool:
    """Whether to use containers (``TELERAD_STACK_BACKEND``: auto, process or testcontainers)."""
    backend = os.environ.get("TELERAD_STACK_BACKEND", "auto")
    if backend == "process":
        return False
    if backend == "testcontainers":
        return True
    reachable = docker_engine_reachable()
    if not reachable:
        progress("no Docker engine reachable: parts run as local processes")
    return reachable


class _ContainerService(Service):
    container: Any = None

    def stop(self) -> None:
        if self.container is not None:
            _keep_logs(self.container, self.log_path)
            self.container.stop()
            self.container = None

    def running(self) -> bool:
        return self.container is not None and _status(self.container) == "running"


def _status(container: Any) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.status)


def _keep_logs(container: Any, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stdout, stderr = container.get_logs()
    except Exception as exc:  # noqa: BLE001 - logs are a courtesy; the container may be gone
        stdout, stderr = b"", f"(no logs: {exc})".encode()
    log_path.write_bytes(stdout + stderr)


class ContainerBackend:
    """An engine (reachable or started here), the local images, and the containers on it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.engine = DockerEngine.ensure(run_dir)
        self._saved_env = {k: os.environ.get(k) for k in self.engine.env()}
        os.environ.update(self.engine.env())  # testcontainers' client reads DOCKER_HOST
        from testcontainers.core.config import testcontainers_config

        testcontainers_config.ryuk_disabled = True  # Ryuk is a Docker Hub image; we stop our own
        self.images = Images(self.engine.host)
        self._build_lock = threading.Lock()  # two cores: one image build at a time

    def close(self) -> None:
        """Close the client and stop the engine if it was started here."""
        self.images.close()
        self.engine.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def image(self, part: str) -> str:
        with self._build_lock:
            started = time.monotonic()
            tag = self.images.part(part)
            progress(f"{part}: image {tag} ({time.monotonic() - started:.0f} s)")
            return tag

    def starter(self, part: str, root: Path) -> Callable[[], Service]:
        """A function that starts ``part`` in a container and returns it as a :class:`Service`."""
        starters: dict[str, Callable[[], Service]] = {
            "kafka": self._kafka,
            "opa": lambda: self._opa(root),
            "keycloak": self._keycloak,
            "orthanc": self._orthanc,
        }
        return starters[part]

    def _run(
        self,
        part: str,
        command: list[str],
        *,
        mounts: dict[Path, str],
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> Any:
        from testcontainers.core.container import DockerContainer

        image = self.image(part)
        progress(f"{part}: starting a container ({image})")
        container = DockerContainer(image).with_command(command)
        for host, mode in mounts.items():
            container = container.with_volume_mapping(str(host), str(host), mode)
        for key, value in (env or {}).items():
            container = container.with_env(key, value)
        kwargs: dict[str, Any] = {"network_mode": "host", "entrypoint": []}
        if workdir is not None:
            kwargs["working_dir"] = str(workdir)
        return container.with_kwargs(**kwargs).start()

    def _wait(
        self, part: str, container: Any, ready: Callable[[], bool], *, timeout: float
    ) -> Path:
        log_path = self.run_dir / "logs" / f"{part}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _status(container) != "running":
                _keep_logs(container, log_path)
                container.stop()
                raise ServiceStartError(
                    f"{part} (container) exited before it was ready; last lines of "
                    f"{log_path}:\n{log_tail(log_path)}"
                )
            with contextlib.suppress(Exception):  # not answering yet
                if ready():
                    return log_path
            time.sleep(0.5)
        _keep_logs(container, log_path)
        container.stop()
        raise ServiceStartError(
            f"{part} (container) not ready after {timeout:.0f} s; last lines of {log_path}:\n"
            f"{log_tail(log_path)}"
        )

    def _wrap(self, name: str, container: Any, endpoints: dict[str, str], log: Path) -> Service:
        service = _ContainerService(name, endpoints, log)
        service.container = container
        return service

    def _kafka(self) -> Service:
        home = self.run_dir / "kafka"
        cluster_id = services.prepare_kafka_home(home)
        config = str(home / "server.properties")
        jvm = kafka_jvm("java", "/opt/kafka/libs/*", home)
        fmt = [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", config]
        serve = [*jvm, "kafka.Kafka", config]
        bootstrap = services.kafka_bootstrap(home)
        container = self._run(
            "kafka",
            ["sh", "-c", f"{shlex.join(fmt)} > /dev/null && exec {shlex.join(serve)}"],
            mounts={home: "rw"},
        )
        log = self._wait("kafka", container, lambda: services.kafka_ready(bootstrap), timeout=180)
        service = self._wrap("kafka", container, {"bootstrap": bootstrap}, log)
        service.extra["run_dir"] = self.run_dir
        return service

    def _opa(self, root: Path) -> Service:
        from devstack.stack import _revision

        home = self.run_dir / "opa"
        policy_paths = [root / "policies" / "telerad", root / "policies" / "data"]
        services.bundle_source(
            home / "bundle-src", [p for p in policy_paths if p.exists()], _revision(root)
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        build = ["opa", "build", "--bundle", "bundle-src", "-o", "policy-bundle.tar.gz"]
        serve = [
            "run",
            "--server",
            f"--addr=127.0.0.1:{port}",
            "--log-format=json",
            "--log-level=info",
            "--set=decision_logs.console=true",
            "--bundle",
            "policy-bundle.tar.gz",
        ]
        if is_public(self.image("opa")):
            # OPA's own image has no shell: the bundle is built here, with the cache's opa
            build[0] = str(provision.go_tool("opa"))
            subprocess.run(build, cwd=home, check=True, capture_output=True)
            command = [PUBLIC_OPA, *serve]
        else:
            command = ["sh", "-c", f"{shlex.join(build)} && exec opa {shlex.join(serve)}"]
        container = self._run("opa", command, mounts={home: "rw"}, workdir=home)
        log = self._wait("opa", container, lambda: services.http_ok(f"{url}/health"), timeout=60)
        return self._wrap("opa", container, {"url": url}, log)

    def _keycloak(self) -> Service:
        imports = self.run_dir / "keycloak" / "import"
        shutil.rmtree(imports, ignore_errors=True)
        imports.mkdir(parents=True)
        realms = sorted(services.resource("keycloak").glob("*.json"))
        if not realms:
            raise ServiceStartError("no Keycloak realm files under devstack/resources/keycloak")
        for realm in realms:
            shutil.copy(realm, imports / realm.name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # the distribution's data/import is where --import-realm looks
        container = self._run(
            "keycloak",
            [
                "sh",
                "-c",
                f"mkdir -p /opt/keycloak/data && ln -sfn {shlex.quote(str(imports))} "
                "/opt/keycloak/data/import && exec /opt/keycloak/bin/kc.sh "
                + shlex.join(services.keycloak_args(port)),
            ],
            mounts={imports: "ro"},
            env=services.KEYCLOAK_ENV,
        )
        log = self._wait(
            "keycloak",
            container,
            lambda: services.keycloak_ready(url),
            timeout=300,
        )
        return self._wrap("keycloak", container, services.keycloak_endpoints(url), log)

    def _orthanc(self) -> Service:
        # the same configuration and TLS files as the process backend's (the home is mounted at
        # the same path, so the certificate paths in orthanc.json hold inside the container)
        home = self.run_dir / "orthanc"
        port = free_port()
        # Plain HTTP on loopback here: Debian's civetweb inside the container has not served HTTPS
        # with the OpenSSL 3 shim the process backend uses ("port in use" at start); the PACS's
        # TLS is tested on the process backend (tests/integration/test_pacs_tls.py).
        tls: services.OrthancTls = "plaintext"
        prepared = services.prepare_orthanc_home(home, port, tls)
        if is_public(self.image("orthanc")):
            settings = json.loads(prepared.config.read_text())
            settings["Plugins"] = [PUBLIC_ORTHANC_DICOMWEB]  # not Debian's path there
            prepared.config.write_text(json.dumps(settings, indent=2))
        container = self._run(
            "orthanc",
            ["Orthanc", "--logfile=/dev/stdout", str(prepared.config)],
            mounts={home: "rw"},
            env=prepared.env,
        )
        endpoints = services.orthanc_endpoints(port, tls)
        probe = services.Service(
            "orthanc", endpoints, Path("/dev/null"), extra=dict(prepared.extra)
        )
        probe.extra.update(user=services.ORTHANC_USER, password=services.ORTHANC_PASSWORD)
        log = self._wait("orthanc", container, lambda: services.orthanc_answers(probe), timeout=90)
        service = self._wrap("orthanc", container, endpoints, log)
        service.extra.update(
            user=services.ORTHANC_USER,
            password=services.ORTHANC_PASSWORD,
            storage=str(home / "db"),  # mounted at the same path: the integrity drill edits it
            **prepared.extra,
        )
        return service
