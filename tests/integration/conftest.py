"""The broker, in-process, against the real stack; a client that reaches both it and the IdP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from unittest import mock

import httpx
import pytest
from fastapi import FastAPI

from broker.app import create_app
from broker.audit import MemorySink
from broker.config import Settings
from broker.stack._procs import free_port
from broker.stack.stack import Stack


@dataclass
class Broker:
    """The broker under test: its app, its URL, what it audited, and a client for it and the IdP."""

    app: FastAPI
    url: str
    audit: MemorySink
    client: httpx.AsyncClient
    settings: Settings


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
        async with httpx.AsyncClient(mounts={url: transport}, timeout=30) as client:

            async def plain_http_cookies(_: httpx.Response) -> None:
                # Keycloak marks its login cookies Secure even over http; a browser on loopback
                # sends them back, Python's cookie jar would not.
                for cookie in client.cookies.jar:
                    cookie.secure = False

            client.event_hooks["response"] = [plain_http_cookies]
            yield Broker(app, url, audit, client, settings)
