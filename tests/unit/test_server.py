"""Which peers' forwarding headers the served broker believes (real uvicorn on loopback)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from broker.config import Settings
from broker.server import server_config
from devstack._procs import free_port


async def _echo_client(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering with the client address and scheme uvicorn put in the scope."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def served(trusted: list[str]) -> Iterator[str]:
    settings = Settings(port=free_port(), trusted_proxies=trusted)  # type: ignore[arg-type]
    server = uvicorn.Server(server_config(_echo_client, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(10)


FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    "trusted", [["127.0.0.1"], ["127.0.0.0/8"], ["10.0.0.0/8", "127.0.0.1/32"]]
)
def test_a_trusted_proxys_forwarding_headers_name_the_client(trusted: list[str]) -> None:
    with served(trusted) as url:
        assert httpx.get(url, headers=FORWARDED).text == "203.0.113.7 https"


@pytest.mark.parametrize("trusted", [["10.0.0.0/8"], ["::1/128"], []])
def test_anyone_elses_forwarding_headers_are_ignored(trusted: list[str]) -> None:
    with served(trusted) as url:
        assert httpx.get(url, headers=FORWARDED).text == "127.0.0.1 http"


def test_by_default_only_loopback_is_trusted() -> None:
    assert [str(n) for n in Settings().trusted_proxies] == ["127.0.0.1/32"]


def test_a_malformed_proxy_address_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies=["ingress-nginx"])  # type: ignore[list-item]
