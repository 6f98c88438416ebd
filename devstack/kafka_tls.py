"""Certificates for the dev stack's Kafka, made at start with ``cryptography`` (never committed).

One throw-away CA per stack run signs one certificate for the Kafka nodes (server and client
use: the nodes present it to each other and to the controller listener, which require client
certificates) and, for mutual-TLS clients, one per client principal. The node's key store is
PKCS#12 (Kafka's PEM key stores insist on an encrypted PKCS#8 key, and Java 17 cannot read the
PBES2 encryption ``cryptography`` writes there), with a random password that only the run
directory holds; the CA (:class:`devstack.pki.DevCa`, shared with the stack's Orthanc) is a
PEM trust store.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from devstack.pki import DevCa

__all__ = ["NODE_CN", "KafkaPki", "make_pki"]

NODE_CN = "telerad-kafka-node"  # Kafka's principal for it: User:CN=telerad-kafka-node


@dataclass(frozen=True)
class KafkaPki:
    """Where the run's CA and certificates are (all PEM)."""

    ca_file: Path
    node_keystore: Path  # PKCS#12: key + certificate chain, for Kafka
    node_key_password: str
    client_certs: dict[str, tuple[Path, Path]]  # CN -> (certificate, unencrypted key)


def make_pki(directory: Path, client_cns: tuple[str, ...] = ()) -> KafkaPki:
    """A fresh CA, the node certificate and one client certificate per CN, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = DevCa("telerad dev-stack Kafka CA (throw-away)")
    ca_file = ca.write(directory / "ca.pem")

    node = ca.issue(NODE_CN, server=True)
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
        pkcs12.serialize_key_and_certificates(
            b"node", node.key, node.certificate, [ca.certificate], encryption
        )
    )
    keystore.chmod(0o600)

    clients = {
        cn: ca.issue(cn, server=False).write(
            directory / f"{cn}.crt.pem", directory / f"{cn}.key.pem"
        )
        for cn in client_cns
    }
    return KafkaPki(ca_file, keystore, password, clients)
