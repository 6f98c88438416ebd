"""The broker, in-process, against the real stack; a client that reaches both it and the IdP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import httpx
import pytest
from fastapi import FastAPI

from broker.app import create_app
from broker.audit import MemorySink
from broker.config import Settings
from broker.server import server_config
from devstack._procs import free_port
from devstack.stack import Stack


@dataclass
class Broker:
    """The broker under test: its app, its URL, what it audited, and a client for it and the IdP."""

    app: FastAPI
    url: str
    audit: MemorySink
    client: httpx.AsyncClient
    settings: Settings

    @property
    def metrics_url(self) -> str:
        """``/metrics`` on the broker's own metrics listener (never on its HTTP port)."""
        return f"http://127.0.0.1:{self.app.state.metrics_server.port}/metrics"


def worklist_read(app: FastAPI, seconds: float = 20) -> None:
    """Wait until the broker has read the worklist topic to its end (as readiness does)."""
    listener = app.state.telerad.worklist_listener
    if listener is not None:
        assert listener.caught_up.wait(seconds), listener.progress()


@pytest.fixture
def broker_env(stack: Stack) -> Iterator[dict[str, str]]:
    """The broker's environment, pointed at the stack, on a loopback URL the IdP redirects to."""
    env = stack.broker_env() | {"TELERAD_PUBLIC_URL": f"http://127.0.0.1:{free_port()}"}
    with mock.patch.dict(os.environ, env):
        yield env


@pytest.fixture
async def broker(broker_env: dict[str, str]) -> AsyncIterator[Broker]:
    settings = Settings()
    audit = MemorySink()
    app = create_app(settings, audit=audit)
    url = str(settings.public_url).rstrip("/")
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50000))
    async with app.router.lifespan_context(app):
        worklist_read(app)
        async with httpx.AsyncClient(mounts={url: transport}, timeout=30) as client:

            async def plain_http_cookies(_: httpx.Response) -> None:
                # Keycloak marks its login cookies Secure even over http; a browser on loopback
                # sends them back, Python's cookie jar would not.
                for cookie in client.cookies.jar:
                    cookie.secure = False

            client.event_hooks["response"] = [plain_http_cookies]
            yield Broker(app, url, audit, client, settings)


@dataclass
class LiveBroker:
    """The broker served by uvicorn on a loopback port (for clients such as dicomweb-client)."""

    app: FastAPI
    url: str
    audit: MemorySink

    @property
    def metrics_url(self) -> str:
        """``/metrics`` on the broker's own metrics listener (never on its HTTP port)."""
        return f"http://127.0.0.1:{self.app.state.metrics_server.port}/metrics"


@contextmanager
def serve(settings: Settings, audit: MemorySink | None = None) -> Iterator[LiveBroker]:
    """Serve the broker with uvicorn on its public URL's port until the block ends."""
    import threading
    import time

    import uvicorn

    app = create_app(settings, audit=audit)
    url = str(settings.public_url).rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    served = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    server = uvicorn.Server(server_config(app, served, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.05)
    worklist_read(app)
    try:
        yield LiveBroker(app, url, audit or MemorySink())
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def live_broker(broker_env: dict[str, str]) -> Iterator[LiveBroker]:
    with serve(Settings(), MemorySink()) as live:
        yield live
