"""The relay's aiohttp client to the PACS keeps what the httpx transports guarantee.

The same real socket server as ``test_upstream`` (it answers the first request of each
connection and hangs up on the second), and a loopback TLS 1.3 server that wants a client
certificate, as a PACS with mutual TLS does.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.responses import StreamingResponse

from broker.config import PacsSettings
from broker.dicomweb.proxy import DicomwebProxy, parse_path
from broker.dicomweb.relay import AiohttpPacsClient, RelayError
from broker.errors import UpstreamError
from devstack.pki import DevCa
from tests.unit.loopback import LoopbackServer
from tests.unit.test_upstream import _ClosingServer

STUDY = "1.2.3"


@pytest.fixture
def server() -> Iterator[_ClosingServer]:
    s = _ClosingServer()
    yield s
    s.close()


def _pacs(port: int, **extra: object) -> PacsSettings:
    return PacsSettings.model_validate({"url": f"http://127.0.0.1:{port}/dicom-web", **extra})


class TestStaleConnection:
    async def test_a_get_is_resent_once_on_a_fresh_connection(self, server: _ClosingServer) -> None:
        async with AiohttpPacsClient(_pacs(server.port)) as client:
            for _ in range(3):
                answer = await client.send("GET", f"http://127.0.0.1:{server.port}/a", {})
                assert answer.status == 200
                assert await answer.read() == b"ok"
                await answer.close()
        assert server.requests == 5  # 3 answered, 2 written onto a connection that hung up
        assert server.connections == 3

    async def test_a_post_is_never_resent(self, server: _ClosingServer) -> None:
        url = f"http://127.0.0.1:{server.port}/a"
        async with AiohttpPacsClient(_pacs(server.port)) as client:
            answer = await client.send("GET", url, {})
            assert await answer.read() == b"ok"
            await answer.close()
            with pytest.raises(RelayError):
                await client.send("POST", url, {}, content=b"{}")
        assert server.connections == 1
        assert server.requests == 2

    async def test_a_server_that_is_really_gone_is_a_relay_error(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with AiohttpPacsClient(_pacs(port)) as client:
            with pytest.raises(RelayError):
                await client.send("GET", f"http://127.0.0.1:{port}/a", {})

    async def test_pacs_down_is_a_502_from_the_proxy(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pacs = _pacs(port)
        async with AiohttpPacsClient(pacs) as client:
            proxy = DicomwebProxy(pacs, client)
            with pytest.raises(UpstreamError):
                await proxy.forward(parse_path(f"studies/{STUDY}", STUDY), [], {}, "http://b/l")


class TestHeaders:
    async def test_only_the_callers_headers_and_the_configured_auth(
        self, server: _ClosingServer
    ) -> None:
        pacs = _pacs(server.port, username="orthanc", password="secret")
        async with AiohttpPacsClient(pacs) as client:
            answer = await client.send(
                "GET", f"http://127.0.0.1:{server.port}/a", {"accept-encoding": "identity"}
            )
            await answer.read()
            await answer.close()
        async with AiohttpPacsClient(pacs) as client:
            query = "PatientName=Synth*^A&x=a\\b,c&q=%26"
            answer = await client.send("GET", f"http://127.0.0.1:{server.port}/s?{query}", {})
            await answer.read()
            await answer.close()
        assert server.heads[1].startswith(f"GET /s?{query} HTTP/1.1".encode())  # as built
        head = server.heads[0].lower()
        assert b"\r\naccept-encoding: identity" in head
        assert b"gzip" not in head  # aiohttp's default Accept-Encoding is not added
        assert b"\r\nauthorization: basic b3j0agfuyzpzzwnyzxq=" in head  # orthanc:secret


class _TlsPacs(LoopbackServer):
    """A loopback HTTPS server that requires a client certificate from ``ca`` (TLS 1.3: a
    client without one learns it only from an alert after the handshake)."""

    def __init__(self, tmp: Path, ca: DevCa) -> None:
        cert, key = ca.issue("pacs", server=True).write(tmp / "s.crt", tmp / "s.key")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(cert, key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cadata=ca.cert_pem().decode())
        super().__init__()

    def _connection(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return  # no client certificate: the handshake's end sends the alert
        finally:
            raw.close()


class TestMutualTls:
    @pytest.fixture
    def pacs(self, tmp_path: Path) -> Iterator[tuple[_TlsPacs, DevCa, Path]]:
        ca = DevCa("test PACS CA")
        server = _TlsPacs(tmp_path, ca)
        yield server, ca, ca.write(tmp_path / "ca.pem")
        server.close()

    async def test_with_the_client_certificate_it_answers(
        self, pacs: tuple[_TlsPacs, DevCa, Path], tmp_path: Path
    ) -> None:
        server, ca, bundle = pacs
        cert, key = ca.issue("broker", server=False).write(tmp_path / "c.crt", tmp_path / "c.key")
        settings = PacsSettings.model_validate(
            {
                "url": f"https://127.0.0.1:{server.port}/dicom-web",
                "tls": {"ca_file": bundle, "cert_file": cert, "key_file": key},
            }
        )
        async with AiohttpPacsClient(settings) as client:
            answer = await client.send("GET", f"https://127.0.0.1:{server.port}/a", {})
            assert answer.status == 200
            assert await answer.read() == b"ok"
            await answer.close()

    async def test_a_refused_client_certificate_is_a_relay_error(
        self, pacs: tuple[_TlsPacs, DevCa, Path]
    ) -> None:
        server, _ca, bundle = pacs
        settings = PacsSettings.model_validate(
            {"url": f"https://127.0.0.1:{server.port}/dicom-web", "tls": {"ca_file": bundle}}
        )
        async with AiohttpPacsClient(settings) as client:
            with pytest.raises(RelayError):
                answer = await client.send("GET", f"https://127.0.0.1:{server.port}/a", {})
                await answer.read()

    async def test_an_unknown_server_certificate_is_a_relay_error(
        self, pacs: tuple[_TlsPacs, DevCa, Path], tmp_path: Path
    ) -> None:
        server, _ca, _bundle = pacs
        other = DevCa("another CA").write(tmp_path / "other.pem")
        settings = PacsSettings.model_validate(
            {"url": f"https://127.0.0.1:{server.port}/dicom-web", "tls": {"ca_file": other}}
        )
        async with AiohttpPacsClient(settings) as client:
            with pytest.raises(RelayError):
                await client.send("GET", f"https://127.0.0.1:{server.port}/a", {})


class _FixedServer(LoopbackServer):
    """Answers every request of every keep-alive connection with ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                conn.sendall(self.answer)


def _answer(content_type: str, body: bytes, *, chunked: bool = False) -> bytes:
    if chunked:
        half = len(body) // 2
        parts = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
        framing, payload = b"Transfer-Encoding: chunked", parts + b"0\r\n\r\n"
    else:
        framing, payload = b"Content-Length: %d" % len(body), body
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\n"
        b'ETag: "x"\r\n' + framing + b"\r\n\r\n" + payload
    )


class TestProxyOverAiohttp:
    """The proxy's answers through the aiohttp client (headers come with their own case)."""

    async def test_dicom_json_is_rewritten_with_its_own_length(self) -> None:
        server = _FixedServer(b"")
        root = f"http://127.0.0.1:{server.port}/dicom-web"
        url = f"{root}/studies/{STUDY}"
        body = json.dumps([{"00081190": {"vr": "UR", "Value": [url]}}]).encode()
        server.answer = _answer("application/dicom+json", body)
        pacs = _pacs(server.port)
        try:
            async with AiohttpPacsClient(pacs) as client:
                proxy = DicomwebProxy(pacs, client)
                parsed = parse_path(f"studies/{STUDY}/metadata", STUDY)
                for _ in range(2):  # the second on the pooled connection
                    response = await proxy.forward(parsed, [], {}, "https://broker.test/l/T")
                    assert response.status_code == 200
                    assert b"https://broker.test/l/T/studies/1.2.3" in response.body
                    assert response.headers["content-length"] == str(len(response.body))
                    assert response.headers["cache-control"] == "no-store"
        finally:
            server.close()

    async def test_a_frame_is_relayed_as_the_pacs_sent_it(self) -> None:
        frame = bytes(range(256)) * 512
        server = _FixedServer(_answer("application/octet-stream", frame))
        pacs = _pacs(server.port)
        seen: list[tuple[int, bool]] = []
        try:
            async with AiohttpPacsClient(pacs) as client:
                proxy = DicomwebProxy(pacs, client)
                parsed = parse_path(f"studies/{STUDY}/series/1.2/instances/1.3/frames/1", STUDY)
                response = await proxy.forward(
                    parsed, [], {}, "https://b/l", on_done=lambda n, ok: seen.append((n, ok))
                )
            assert response.body == frame
            assert response.headers["content-length"] == str(len(frame))
            assert response.headers["etag"] == '"x"'
            assert seen == [(len(frame), True)]
        finally:
            server.close()

    async def test_an_answer_without_a_length_is_streamed(self) -> None:
        frame = b"0123456789" * 10_000
        server = _FixedServer(_answer("application/octet-stream", frame, chunked=True))
        pacs = _pacs(server.port)
        seen: list[tuple[int, bool]] = []
        try:
            async with AiohttpPacsClient(pacs) as client:
                proxy = DicomwebProxy(pacs, client)
                parsed = parse_path(f"studies/{STUDY}/series/1.2/instances/1.3/frames/1", STUDY)
                response = await proxy.forward(
                    parsed, [], {}, "https://b/l", on_done=lambda n, ok: seen.append((n, ok))
                )
                assert isinstance(response, StreamingResponse)
                received = b"".join([bytes(c) async for c in response.body_iterator])
                assert response.background is not None
                await response.background()
            assert received == frame
            assert "content-length" not in response.headers
            assert seen == [(len(frame), True)]
        finally:
            server.close()
