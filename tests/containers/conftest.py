"""A Docker engine for the container tests, and the broker's image built on it.

The engine is the stack's own when the stack runs on the testcontainers backend, else the one
``DOCKER_HOST`` (or the default socket) reaches, else a private ``dockerd`` started for this
session (:mod:`devstack.engine`). The tests skip, saying why, only where none can start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack._procs import progress
from devstack.engine import DockerEngine, EngineUnavailable
from devstack.images import Images, build
from devstack.stack import Stack
from tests.conftest import no_engine


@pytest.fixture(scope="session")
def engine(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    if stack.containers is not None:
        yield stack.containers.engine
        return
    try:
        own = DockerEngine.ensure(tmp_path_factory.mktemp("engine"))
    except EngineUnavailable as exc:
        no_engine(f"no Docker engine for the container tests: {exc}")
    try:
        yield own
    finally:
        own.stop()


@dataclass
class BuiltImage:
    """The broker's image, the base it was built from, a client, and how long the build took."""

    tag: str
    base: str
    client: Any
    build_seconds: float

    def run(self, *command: str, entrypoint: str | None = None, **kwargs: Any) -> str:
        """Run the image to completion as the chart runs it; its output (stdout and stderr)."""
        out: bytes = self.client.containers.run(
            self.tag,
            list(command),
            entrypoint=entrypoint,
            remove=True,
            stderr=True,
            **(restricted() | kwargs),
        )
        return out.decode()


def restricted() -> dict[str, Any]:
    """What the chart's pod security context gives the container, for ``containers.run``."""
    return {
        "user": "10001:10001",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "tmpfs": {"/tmp": "size=64m"},
        "network_mode": "host",
    }


@pytest.fixture(scope="session")
def broker_image(engine: DockerEngine, repo: Path) -> Iterator[BuiltImage]:
    images = Images(engine.host)
    try:
        started = time.monotonic()
        base = images.base()
        tag = "telerad-broker:test"
        progress(f"docker build --build-arg BASE={base} -t {tag} {repo}")
        build(images.client, repo, tag, {"BASE": base})
        seconds = time.monotonic() - started
        progress(f"the broker's image built in {seconds:.0f} s")
        yield BuiltImage(tag, base, images.client, seconds)
    finally:
        images.close()
