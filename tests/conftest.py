"""Session fixtures: the real dev/test stack (Kafka, OPA, Keycloak, Orthanc), started once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.stack.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every part of the stack, from the cache or provisioned on the spot; stopped at the end."""
    running = Stack.start(run_dir=tmp_path_factory.mktemp("stack"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def repo() -> Path:
    return Path(__file__).resolve().parents[1]
