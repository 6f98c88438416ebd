"""The stack's parts as containers (testcontainers), used when a Docker engine is reachable.

Selected by ``TELERAD_STACK_BACKEND=testcontainers``, or by ``auto`` (the default) when a Docker
engine answers a ping. The machines this project is developed on have no engine, so this path is
exercised only where one exists; the process backend is the one CI here runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.stack import services
from broker.stack._procs import progress
from broker.stack.provision import KAFKA_VERSION, KEYCLOAK_VERSION, OPA_VERSION
from broker.stack.services import Service

__all__ = ["docker_engine_reachable", "selected", "starter"]


def docker_engine_reachable() -> bool:
    """True when a Docker engine answers (not merely a docker client installed)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


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
            self.container.stop()


def _wrap(name: str, container: Any, endpoints: dict[str, str], **extra: object) -> Service:
    service = _ContainerService(name, endpoints, Path("/dev/null"), extra=dict(extra))
    service.container = container
    return service


def starter(part: str, root: Path) -> Callable[[], Service]:
    """A function that starts ``part`` in a container and returns it as a :class:`Service`."""

    def kafka() -> Service:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft().start()
        return _wrap("kafka", container, {"bootstrap": container.get_bootstrap_server()})

    def opa() -> Service:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer(f"openpolicyagent/opa:{OPA_VERSION.lstrip('v')}")
            .with_volume_mapping(str(root / "policies"), "/policies", "ro")
            .with_command(
                "run --server --addr=0.0.0.0:8181 --ignore=*_test.rego "
                "--set=decision_logs.console=true "
                "/policies/telerad /policies/data"
            )
            .with_exposed_ports(8181)
            .start()
        )
        wait_for_logs(container, "Initializing server", timeout=60)
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8181)}"
        return _wrap("opa", container, {"url": url})

    def keycloak() -> Service:
        from testcontainers.keycloak import KeycloakContainer

        container = KeycloakContainer(f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}")
        for realm in sorted((root / "broker" / "stack" / "resources" / "keycloak").glob("*.json")):
            container = container.with_realm_import_file(str(realm))
        container.start()
        url = container.get_url().rstrip("/")
        return _wrap(
            "keycloak",
            container,
            {"url": url, **{r: f"{url}/realms/{r}" for r in ("hospital-a", "hospital-b")}},
        )

    def orthanc() -> Service:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer("orthancteam/orthanc:24.12.1")
            .with_env("DICOM_WEB_PLUGIN_ENABLED", "true")
            .with_env("ORTHANC__AUTHENTICATION_ENABLED", "true")
            .with_env(
                "ORTHANC__REGISTERED_USERS",
                f'{{"{services.ORTHANC_USER}": "{services.ORTHANC_PASSWORD}"}}',
            )
            .with_exposed_ports(8042)
            .start()
        )
        wait_for_logs(container, "Orthanc has started", timeout=120)
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8042)}"
        return _wrap(
            "orthanc",
            container,
            {"url": url, "dicomweb": f"{url}/dicom-web"},
            user=services.ORTHANC_USER,
            password=services.ORTHANC_PASSWORD,
        )

    starters: dict[str, Callable[[], Service]] = {
        "kafka": kafka,
        "opa": opa,
        "keycloak": keycloak,
        "orthanc": orthanc,
    }
    return starters[part]
