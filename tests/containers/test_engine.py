"""The private Docker engine: started where none answers, its files under the run dir, stopped."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from devstack.engine import (
    DockerEngine,
    EngineUnavailable,
    engine_answers,
    remove_stale_engines,
)
from tests.conftest import no_engine


class TestPrivateEngine:
    def test_starts_answers_and_stops_without_the_default_socket(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        default_socket = Path("/var/run/docker.sock")
        had_default = default_socket.exists()
        with mock.patch.dict(os.environ, env, clear=True):
            try:
                engine = DockerEngine.ensure(tmp_path)
            except EngineUnavailable as exc:
                no_engine(f"no Docker engine can start here: {exc}")
        if not engine.started_here:
            pytest.skip(f"an engine already answers at {engine.host}; none was started")
        try:
            assert engine.root is not None
            assert engine.host == f"unix://{engine.root / 'docker.sock'}"
            assert (tmp_path / "docker-engine").resolve() == engine.root
            assert engine_answers(engine.host)
            assert (tmp_path / "logs" / "dockerd.log").exists()
            assert default_socket.exists() == had_default, "the default socket was touched"
            assert engine.env()["DOCKER_HOST"] == engine.host
        finally:
            engine.stop()
        assert not engine_answers(engine.host)
        assert not engine.root.exists(), "the private data root is left behind"

    def test_a_configured_host_that_does_not_answer_is_an_error(self, tmp_path: Path) -> None:
        host = f"unix://{tmp_path / 'nothing.sock'}"
        with (
            mock.patch.dict(os.environ, {"DOCKER_HOST": host}),
            pytest.raises(EngineUnavailable, match="does not answer"),
        ):
            DockerEngine.ensure(tmp_path)


class TestStaleEngines:
    def test_directories_of_engines_gone_are_removed(self, tmp_path: Path) -> None:
        dead = tmp_path / "telerad-engine-dead"
        (dead / "data" / "vfs").mkdir(parents=True)
        (dead / "dockerd.pid").write_text("999999999")  # above pid_max: no such process
        starting = tmp_path / "telerad-engine-starting"  # no pid file yet
        starting.mkdir()
        reused = tmp_path / "telerad-engine-reused"
        reused.mkdir()
        (reused / "dockerd.pid").write_text(str(os.getpid()))  # a live pid, but not a dockerd
        assert remove_stale_engines(tmp_path) == [dead, reused]
        assert not dead.exists() and not reused.exists()
        assert starting.exists()
