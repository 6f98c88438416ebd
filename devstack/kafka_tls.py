"""Certificates for the dev stack's Kafka, made at start with ``cryptography`` (never committed).

One throw-away CA per stack run signs one certificate for the Kafka nodes (server and client
use: the nodes present it to each other and to the controller listener, which require client
certificates) and, for mutual-TLS clients, one per client principal. The node's key store is
PKCS#12 (Kafka's PEM key stores insist on an encrypted PKCS#8 key, and Java 17 cannot read the
PBES2 encryption ``cryptography`` writes there), with a random password that only the run
directory holds; the CA is a PEM trust store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["NODE_CN", "KafkaPki", "make_pki"]

NODE_CN = "telerad-kafka-node"  # Kafka's principal for it: User:CN=telerad-kafka-node


@dataclass(frozen=True)
class KafkaPki:
    """Where the run's CA and certificates are (all PEM)."""

    ca_file: Path
    node_keystore: Path  # PKCS#12: key + certificate chain, for Kafka
    node_key_password: str
    client_certs: dict[str, tuple[Path, Path]]  # CN -> (certificate, unencrypted key)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    *,
    server: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] * server)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:  # clients verify the host name: the loopback address and its name
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, client_cns: tuple[str, ...] = ()) -> KafkaPki:
    """A fresh CA, the node certificate and one client certificate per CN, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = _name("telerad dev-stack Kafka CA (throw-away)")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(_pem(ca))

    node_key = _key()
    node = _issue(NODE_CN, node_key, ca_key, ca_name, server=True)
    password = secrets.token_urlsafe(18)
    keystore = directory / "node-keystore.p12"
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(10000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(b"node", node_key, node, [ca], encryption)
    )
    keystore.chmod(0o600)

    clients: dict[str, tuple[Path, Path]] = {}
    for cn in client_cns:
        key = _key()
        cert_file, key_file = directory / f"{cn}.crt.pem", directory / f"{cn}.key.pem"
        cert_file.write_bytes(_pem(_issue(cn, key, ca_key, ca_name, server=False)))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        clients[cn] = (cert_file, key_file)
    return KafkaPki(ca_file, keystore, password, clients)
