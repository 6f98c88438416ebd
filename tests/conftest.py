"""Session fixtures: the real dev/test stack (Kafka, OPA, Keycloak, Orthanc), started once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from devstack.engine import EngineUnavailable
from devstack.stack import Stack


def no_engine(reason: str) -> NoReturn:
    """Skip for want of a Docker engine, or fail where one is required
    (``TELERAD_STACK_REQUIRE_ENGINE=1``, as CI sets it: there a skip would hide a broken setup).
    """
    if os.environ.get("TELERAD_STACK_REQUIRE_ENGINE") == "1":
        pytest.fail(f"a Docker engine is required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every part of the stack, from the cache or provisioned on the spot; stopped at the end.

    On the testcontainers backend, the tests that need it skip (saying why) where no Docker
    engine answers and none can be started here.
    """
    try:
        running = Stack.start(run_dir=tmp_path_factory.mktemp("stack"))
    except EngineUnavailable as exc:
        no_engine(f"TELERAD_STACK_BACKEND=testcontainers, but {exc}")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def repo() -> Path:
    return Path(__file__).resolve().parents[1]
