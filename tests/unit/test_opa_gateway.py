"""The policy gateway fails closed: no usable answer from OPA is ever an allow."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from broker.config import OpaSettings
from broker.opa import OpaGateway

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port


def _answering(body: object, status: int = 200) -> Handler:
    """A tiny HTTP/1.1 peer that answers every request with ``body`` as JSON."""
    payload = json.dumps(body).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(payload), payload)
        )
        await writer.drain()
        writer.close()

    return handle


_released = asyncio.Event()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads, never answers (until the test is over)."""
    await _released.wait()
    writer.close()
    await writer.wait_closed()


@pytest.fixture
async def gateway_for() -> AsyncIterator[Callable[[Handler], Awaitable[OpaGateway]]]:
    servers: list[asyncio.Server] = []
    gateways: list[OpaGateway] = []

    async def make(handler: Handler) -> OpaGateway:
        server, port = await _serve(handler)
        servers.append(server)
        gateway = OpaGateway(OpaSettings(url=f"http://127.0.0.1:{port}", timeout_seconds=0.3))
        await gateway.open()
        gateways.append(gateway)
        return gateway

    _released.clear()
    yield make
    _released.set()
    for gateway in gateways:
        await gateway.close()
    for server in servers:
        server.close()
        await server.wait_closed()


class TestDecide:
    async def test_allow_only_when_opa_says_true(
        self, gateway_for: Callable[[Handler], Awaitable[OpaGateway]]
    ) -> None:
        gateway = await gateway_for(
            _answering(
                {
                    "decision_id": "d-1",
                    "result": {
                        "allow": True,
                        "reasons": [],
                        "obligations": {"link_ttl_seconds": 300},
                    },
                }
            )
        )
        decision = await gateway.decide({"action": "issue_link"})
        assert decision.allow is True
        assert decision.decision_id == "d-1"
        assert decision.obligations == {"link_ttl_seconds": 300}

    @pytest.mark.parametrize(
        ("answer", "code"),
        [
            ({}, "policy_undefined"),
            ({"result": None}, "policy_undefined"),
            ({"result": True}, "policy_undefined"),
            ({"result": {"allow": "true"}}, "policy_malformed"),
            ({"result": {"allow": 1}}, "policy_malformed"),
            ({"result": {"reasons": []}}, "policy_malformed"),
            ({"result": {"allow": True, "reasons": "nope"}}, "policy_malformed"),
        ],
    )
    async def test_unusable_answers_deny(
        self, gateway_for: Callable[[Handler], Awaitable[OpaGateway]], answer: object, code: str
    ) -> None:
        gateway = await gateway_for(_answering(answer))
        decision = await gateway.decide({"action": "issue_link"})
        assert decision.allow is False
        assert [r.code for r in decision.reasons] == [code]

    async def test_server_error_denies(
        self, gateway_for: Callable[[Handler], Awaitable[OpaGateway]]
    ) -> None:
        gateway = await gateway_for(_answering({"code": "internal_error"}, status=500))
        decision = await gateway.decide({})
        assert (decision.allow, [r.code for r in decision.reasons]) == (
            False,
            ["policy_unavailable"],
        )

    async def test_timeout_denies(
        self, gateway_for: Callable[[Handler], Awaitable[OpaGateway]]
    ) -> None:
        gateway = await gateway_for(_silent)
        decision = await gateway.decide({})
        assert (decision.allow, [r.code for r in decision.reasons]) == (False, ["policy_timeout"])

    async def test_unreachable_denies(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: connections are refused
            gateway = OpaGateway(OpaSettings(url=f"http://127.0.0.1:{port}", timeout_seconds=0.3))
            await gateway.open()
            try:
                decision = await gateway.decide({})
            finally:
                await gateway.close()
        assert (decision.allow, [r.code for r in decision.reasons]) == (
            False,
            ["policy_unavailable"],
        )
