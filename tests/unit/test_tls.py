"""TLS to the PACS: the settings, the one ``ssl.SSLContext`` builder, and a real handshake
against a loopback TLS server with certificates from the dev stack's CA code."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.app import create_app
from broker.config import ClientTlsSettings, PacsSettings, Settings
from broker.tls import client_ssl_context, pacs_mount, pacs_verify
from devstack.pki import DevCa

KEY = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


@pytest.fixture
def ca(tmp_path: Path) -> tuple[DevCa, Path]:
    authority = DevCa("test PACS CA")
    return authority, authority.write(tmp_path / "ca.pem")


def _handshake(
    tmp: Path, server_ca: DevCa, client: ssl.SSLContext, *, require_client_cert: bool = False
) -> str | None:
    """Connect ``client`` to a loopback TLS server whose certificate ``server_ca`` signed; the
    client certificate's CN the server saw (None when none was asked for)."""
    cert, key = server_ca.issue("pacs", server=True).write(tmp / "s.crt", tmp / "s.key")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    if require_client_cert:
        server_context.verify_mode = ssl.CERT_REQUIRED
        server_context.load_verify_locations(cadata=server_ca.cert_pem().decode())
    seen: list[str | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve() -> None:
            raw, _ = listener.accept()
            try:
                with server_context.wrap_socket(raw, server_side=True) as conn:
                    peer = conn.getpeercert()
                    seen.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else None)
                    conn.recv(1)
            except OSError:
                pass  # the client refused us: what the failing tests expect
            finally:
                raw.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(b"x")
        thread.join(5)
    return seen[0] if seen else None


class TestClientTlsSettings:
    def test_cert_and_key_go_together(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="cert_file and key_file go together"):
            ClientTlsSettings(cert_file=tmp_path / "c.pem")

    def test_key_password_needs_a_key(self) -> None:
        with pytest.raises(ValidationError, match="key_password without key_file"):
            ClientTlsSettings(key_password="x")

    def test_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("TELERAD_PACS__URL", "https://pacs.hospital.example/dicom-web")
        monkeypatch.setenv("TELERAD_PACS__TLS__CA_FILE", str(tmp_path / "ca.pem"))
        monkeypatch.setenv("TELERAD_PACS__TLS__CERT_FILE", str(tmp_path / "c.pem"))
        monkeypatch.setenv("TELERAD_PACS__TLS__KEY_FILE", str(tmp_path / "k.pem"))
        monkeypatch.setenv("TELERAD_PACS__TLS__KEY_PASSWORD", "s3cret-key")
        tls = Settings().pacs.tls
        assert tls.ca_file == tmp_path / "ca.pem"
        assert (tls.cert_file, tls.key_file) == (tmp_path / "c.pem", tmp_path / "k.pem")
        assert "s3cret-key" not in repr(Settings())

    def test_tls_files_with_a_plain_http_pacs_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="not https"):
            PacsSettings(url="http://pacs:8042/dicom-web", tls={"ca_file": tmp_path / "ca.pem"})

    def test_default_is_https(self) -> None:
        assert not PacsSettings().plaintext


class TestClientSslContext:
    def test_always_verifies_chain_and_host_name(self) -> None:
        context = client_ssl_context(ClientTlsSettings())
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2

    def test_the_ca_bundle_replaces_the_system_store(self, ca: tuple[DevCa, Path]) -> None:
        _, ca_file = ca
        context = client_ssl_context(ClientTlsSettings(ca_file=ca_file))
        subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
        assert subjects == [{"commonName": "test PACS CA"}]

    def test_missing_ca_bundle_names_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"cannot load the CA bundle .*nowhere\.pem"):
            client_ssl_context(ClientTlsSettings(ca_file=tmp_path / "nowhere.pem"))

    def test_unreadable_client_key_names_the_files(
        self, tmp_path: Path, ca: tuple[DevCa, Path]
    ) -> None:
        authority, ca_file = ca
        cert, key = authority.issue("b", server=False).write(tmp_path / "c.pem", tmp_path / "k.pem")
        key.write_text("not a key")
        with pytest.raises(ValueError, match="cannot load the client certificate"):
            client_ssl_context(ClientTlsSettings(ca_file=ca_file, cert_file=cert, key_file=key))

    def test_encrypted_key_with_its_password(self, tmp_path: Path, ca: tuple[DevCa, Path]) -> None:
        from cryptography.hazmat.primitives import serialization

        authority, ca_file = ca
        leaf = authority.issue("telerad-broker", server=False)
        cert = tmp_path / "c.pem"
        cert.write_bytes(leaf.cert_pem())
        key = tmp_path / "k.pem"
        key.write_bytes(
            leaf.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
        settings = {"ca_file": ca_file, "cert_file": cert, "key_file": key}
        context = client_ssl_context(ClientTlsSettings(**settings, key_password="pw"))
        assert _handshake(tmp_path, authority, context, require_client_cert=True) == (
            "telerad-broker"
        )
        with pytest.raises(ValueError, match="cannot load the client certificate"):
            client_ssl_context(ClientTlsSettings(**settings, key_password="wrong"))


class TestHandshake:
    def test_server_signed_by_the_ca_is_accepted(
        self, tmp_path: Path, ca: tuple[DevCa, Path]
    ) -> None:
        authority, ca_file = ca
        context = client_ssl_context(ClientTlsSettings(ca_file=ca_file))
        assert _handshake(tmp_path, authority, context) is None  # no client cert asked

    def test_server_signed_by_another_ca_is_refused(
        self, tmp_path: Path, ca: tuple[DevCa, Path]
    ) -> None:
        _, ca_file = ca
        context = client_ssl_context(ClientTlsSettings(ca_file=ca_file))
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            _handshake(tmp_path, DevCa("an impostor"), context)

    def test_client_certificate_is_presented(self, tmp_path: Path, ca: tuple[DevCa, Path]) -> None:
        authority, ca_file = ca
        cert, key = authority.issue("telerad-broker", server=False).write(
            tmp_path / "c.pem", tmp_path / "k.pem"
        )
        context = client_ssl_context(
            ClientTlsSettings(ca_file=ca_file, cert_file=cert, key_file=key)
        )
        assert _handshake(tmp_path, authority, context, require_client_cert=True) == (
            "telerad-broker"
        )


class TestPacsTransport:
    @pytest.mark.parametrize(
        ("url", "mount"),
        [
            ("https://pacs.example/dicom-web", "https://pacs.example"),
            ("https://pacs.example:8443/dicom-web", "https://pacs.example:8443"),
            ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042"),
        ],
    )
    def test_mount_is_the_origin(self, url: str, mount: str) -> None:
        assert pacs_mount(PacsSettings(url=url)) == mount

    def test_plain_http_has_no_context(self) -> None:
        assert pacs_verify(PacsSettings(url="http://127.0.0.1:8042/dicom-web")) is None

    def test_plain_http_pacs_is_refused_in_production(self) -> None:
        settings = Settings(
            environment="production",
            pseudonym_key=KEY,
            links={"keys": {"k1": KEY}},
            identity={"session_keys": {"s1": KEY}},
            pacs={"url": "http://pacs:8042/dicom-web"},
        )
        with pytest.raises(ValueError, match="PACS__URL is http:// and not allowed in production"):
            create_app(settings)

    def test_unreadable_ca_bundle_stops_the_start(self, tmp_path: Path) -> None:
        settings = Settings(
            environment="development",
            audit_sink="log",
            pacs={"url": "https://pacs/dicom-web", "tls": {"ca_file": tmp_path / "none.pem"}},
        )
        with pytest.raises(ValueError, match="cannot load the CA bundle"):
            create_app(settings)
