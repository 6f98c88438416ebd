"""Syslog over TLS (RFC 5425) against a real TLS peer: a collector on a loopback socket that
parses octet-counted frames, with certificates from the dev stack's CA code."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from broker.config import ClientTlsSettings
from broker.tls import client_ssl_context
from devstack.pki import DevCa
from streams.formats import SyslogSender, to_syslog


class TlsCollector:
    """A TLS syslog collector: accepts one connection, reads frames ``LEN SP MSG`` until EOF,
    and records the handshake error if there was one. ``require_client_cert``: mutual TLS."""

    def __init__(
        self,
        tmp: Path,
        ca: DevCa,
        *,
        require_client_cert: bool = False,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ) -> None:
        leaf = ca.issue("syslog.test", server=True, names=names)
        cert, key = leaf.write(tmp / "collector.crt.pem", tmp / "collector.key.pem")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cadata=ca.cert_pem().decode())
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.port: int = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self.peer_cn: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raw, _ = self.server.accept()
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                peer = conn.getpeercert()
                if peer:
                    self.peer_cn = dict(x[0] for x in peer["subject"])["commonName"]
                buffer = b""
                while chunk := conn.recv(4096):
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        if len(rest) < int(length):
                            break
                        self.frames.append(rest[: int(length)])
                        buffer = rest[int(length) :]
                assert buffer == b"", f"trailing bytes outside a frame: {buffer!r}"
        except (OSError, AssertionError) as exc:
            self.error = exc
        finally:
            raw.close()

    def close(self) -> None:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        self.server.close()


@pytest.fixture
def ca() -> DevCa:
    return DevCa("test syslog CA")


def _client(tmp: Path, ca: DevCa, *, client_cert: bool = False) -> ssl.SSLContext:
    cert = key = None
    if client_cert:
        cert, key = ca.issue("telerad-export", server=False).write(
            tmp / "client.crt.pem", tmp / "client.key.pem"
        )
    return client_ssl_context(
        ClientTlsSettings(ca_file=ca.write(tmp / "ca.pem"), cert_file=cert, key_file=key)
    )


class TestSyslogOverTls:
    def test_frames_arrive_octet_counted_over_tls(self, tmp_path: Path, ca: DevCa) -> None:
        collector = TlsCollector(tmp_path, ca)
        first = to_syslog("<AuditMessage/>", hostname="h", timestamp="-")
        second = to_syslog("Zürich 12 34", hostname="h", timestamp="-", severity=4)
        try:
            sender = SyslogSender(
                "127.0.0.1", collector.port, protocol="tls", ssl_context=_client(tmp_path, ca)
            )
            sender.send(first)
            sender.send(second)
            sender.close()
        finally:
            collector.close()
        assert collector.error is None, collector.error
        assert collector.frames == [first, second]

    def test_client_certificate_is_shown_for_mutual_tls(self, tmp_path: Path, ca: DevCa) -> None:
        collector = TlsCollector(tmp_path, ca, require_client_cert=True)
        line = to_syslog("m", hostname="h", timestamp="-")
        try:
            with SyslogSender(
                "127.0.0.1",
                collector.port,
                protocol="tls",
                ssl_context=_client(tmp_path, ca, client_cert=True),
            ) as sender:
                sender.send(line)
        finally:
            collector.close()
        assert collector.error is None, collector.error
        assert collector.peer_cn == "telerad-export"
        assert collector.frames == [line]

    def test_collector_signed_by_another_ca_is_refused(self, tmp_path: Path, ca: DevCa) -> None:
        collector = TlsCollector(tmp_path, DevCa("someone else's CA"))
        try:
            sender = SyslogSender(
                "127.0.0.1", collector.port, protocol="tls", ssl_context=_client(tmp_path, ca)
            )
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                sender.send(to_syslog("never sent", hostname="h", timestamp="-"))
            sender.close()
        finally:
            collector.close()
        assert collector.frames == []

    def test_host_name_is_verified(self, tmp_path: Path, ca: DevCa) -> None:
        # signed by the trusted CA, but for another host than the one dialled
        collector = TlsCollector(tmp_path, ca, names=("syslog.elsewhere.test",))
        try:
            sender = SyslogSender(
                "127.0.0.1", collector.port, protocol="tls", ssl_context=_client(tmp_path, ca)
            )
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                sender.send(b"x")
        finally:
            collector.close()
        assert collector.frames == []

    def test_unverified_context_is_refused(self) -> None:
        loose = ssl.create_default_context()
        loose.check_hostname = False
        loose.verify_mode = ssl.CERT_NONE
        with pytest.raises(ValueError, match="verify the certificate and host name"):
            SyslogSender("127.0.0.1", 6514, protocol="tls", ssl_context=loose)

    def test_context_only_for_tls(self, tmp_path: Path, ca: DevCa) -> None:
        with pytest.raises(ValueError, match="'tls' only"):
            SyslogSender("127.0.0.1", 514, protocol="tcp", ssl_context=_client(tmp_path, ca))
