"""The upstream transports resend an idempotent request once after a stale keep-alive connection.

The server here is a real socket server that behaves like a PACS closing an idle keep-alive
connection just as the next request arrives: it answers the first request of each connection
and closes the connection, without a word, on the second.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest

from broker.upstream import RetryStaleAsyncTransport, RetryStaleTransport
from tests.unit.loopback import LoopbackServer

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _ClosingServer(LoopbackServer):
    def __init__(self) -> None:
        self.requests = 0
        self.heads: list[bytes] = []  # each request's head, as written
        super().__init__()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return False
            data += chunk
        if data.startswith(b"POST"):
            length = int(data.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = data.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(4096)
        self.requests += 1
        self.heads.append(data.split(b"\r\n\r\n", 1)[0])
        return True

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            if self._read_request(conn):
                conn.sendall(_ANSWER)  # keep-alive: no "Connection: close"
            self._read_request(conn)  # the second request on this connection: hang up


@pytest.fixture
def server() -> Iterator[_ClosingServer]:
    s = _ClosingServer()
    yield s
    s.close()


def test_plain_transport_fails_on_the_stale_connection(server: _ClosingServer) -> None:
    """The failure the transports exist for: without them the second GET fails."""
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        assert http.get("/a").text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/b")


def test_sync_transport_resends_a_get_once_on_a_fresh_connection(server: _ClosingServer) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}", transport=RetryStaleTransport()
    ) as http:
        for _ in range(3):
            assert http.get("/a").text == "ok"
    assert server.requests == 5  # 3 answered, 2 written onto a connection that hung up
    assert server.connections == 3


def test_sync_transport_never_resends_a_post(server: _ClosingServer) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}", transport=RetryStaleTransport()
    ) as http:
        assert http.get("/a").text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/b", content=b"{}")
    assert server.connections == 1


async def test_async_transport_resends_a_get_once(server: _ClosingServer) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}", transport=RetryStaleAsyncTransport()
    ) as http:
        assert (await http.get("/a")).text == "ok"
        assert (await http.get("/b")).text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/c", content=b"{}")
    assert server.connections == 2


def test_a_server_that_is_really_gone_still_fails() -> None:
    """Resending is for a stale connection: a dead server is an error after one retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=RetryStaleTransport()) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get("/a")


class _TlsAlert(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Raises what httpcore lets through when a TLS 1.3 server refuses the client afterwards."""

    def __init__(self, *, in_body: bool = False) -> None:
        self.in_body = in_body
        self.calls = 0

    def _alert(self) -> ssl.SSLError:
        self.calls += 1
        return ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.in_body:
            raise self._alert()
        alert = self._alert()

        def body() -> Iterator[bytes]:
            yield b"part"
            raise alert

        return httpx.Response(200, stream=_Gen(body()))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise self._alert()


class _Gen(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def test_a_tls_alert_is_an_httpx_read_error_and_resent_once() -> None:
    inner = _TlsAlert()
    with (
        httpx.Client(transport=RetryStaleTransport(inner)) as client,
        pytest.raises(httpx.ReadError, match="CERTIFICATE_REQUIRED"),
    ):
        client.get("https://pacs.test/system")
    assert inner.calls == 2


def test_a_tls_alert_in_the_body_is_an_httpx_read_error() -> None:
    with (
        httpx.Client(transport=RetryStaleTransport(_TlsAlert(in_body=True))) as client,
        pytest.raises(httpx.ReadError, match="CERTIFICATE_REQUIRED"),
    ):
        client.get("https://pacs.test/system").read()


async def test_async_tls_alert_is_an_httpx_read_error() -> None:
    async with httpx.AsyncClient(transport=RetryStaleAsyncTransport(_TlsAlert())) as client:
        with pytest.raises(httpx.ReadError, match="CERTIFICATE_REQUIRED"):
            await client.get("https://pacs.test/system")
