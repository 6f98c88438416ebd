"""The ledger consumer: every audit event appended to a Merkle tree, signed tree heads published.

Events are appended in consumption order, idempotently by event id (a re-delivered event is not
appended twice). A tree head (size, root, time) is signed with Ed25519 every
``head_every_leaves`` leaves or ``head_every_seconds``, stored with the ledger and published to
the heads topic, so an auditor holding only the public key can later check that the ledger still
has exactly the events it had when each head was signed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.events import AuditEvent
from streams.ledger_store import LedgerStore, SignedTreeHead
from streams.segments import Segment

if TYPE_CHECKING:
    from streams.runner import Origin

__all__ = ["LedgerConsumer", "event_bytes", "key_id", "load_private_key", "load_public_key"]


def event_bytes(event: AuditEvent) -> bytes:
    """The canonical bytes of an event as a leaf (sorted-key compact JSON of its data)."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), sort_keys=True).encode()


def load_private_key(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """The ledger's signing key (PKCS#8 PEM); created with its ``.pub`` beside it if allowed."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    if not create:
        raise FileNotFoundError(f"no ledger signing key at {path}")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    path.with_suffix(".pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key (SubjectPublicKeyInfo PEM), or the public half of a private key file."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_private_key(path, create=False).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short id of the signing key (first 8 bytes of SHA-256 of its raw bytes, hex)."""
    import hashlib

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class LedgerConsumer:
    """The handler the consumer runner calls with each batch of events."""

    def __init__(
        self,
        store: LedgerStore,
        signing_key: Ed25519PrivateKey,
        *,
        head_every_seconds: float = 10.0,
        head_every_leaves: int = 1000,
        publish_head: Callable[[SignedTreeHead], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        publish_segment: Callable[[Segment], None] | None = None,
    ) -> None:
        self.store = store
        self._key = signing_key
        self._key_id = key_id(signing_key.public_key())
        self._every_seconds = head_every_seconds
        self._every_leaves = head_every_leaves
        self._publish = publish_head
        self._publish_segment = publish_segment
        self._clock = clock
        self._last_head_at = clock()
        latest = store.latest_head()
        self._last_head_size = latest.size if latest else 0
        self.appended = 0
        self.duplicates = 0

    def handle(self, events: list[AuditEvent], origin: Origin | None = None) -> None:
        """Append a batch in one transaction, then sign a head if one is due.

        With ``origin`` (the runner's ``with_origin``) and a segment publisher, the batch's
        :class:`~streams.recovery.Segment` is published, and acknowledged, first: what a
        rebuild replays to arrive at the same leaves in the same order.
        """
        self.store.check_file()
        if origin is not None and self._publish_segment is not None:
            self._publish_segment(
                Segment(
                    origin.topic,
                    origin.partition,
                    origin.first_offset,
                    origin.last_offset,
                    self.store.size(),
                )
            )
        if not events:
            return
        results = self.store.append_many([(e.id, event_bytes(e)) for e in events])
        added = sum(1 for r in results if r is not None)
        self.appended += added
        self.duplicates += len(results) - added
        self.maybe_sign()

    def maybe_sign(self, *, force: bool = False) -> SignedTreeHead | None:
        """Sign (and publish) a head when due, or when forced and the tree grew."""
        size = self.store.size()
        if size == self._last_head_size:
            return None
        due = (
            force
            or size - self._last_head_size >= self._every_leaves
            or self._clock() - self._last_head_at >= self._every_seconds
        )
        if not due:
            return None
        head = self.store.sign_head(self._key, self._key_id)
        self._last_head_size, self._last_head_at = head.size, self._clock()
        if self._publish is not None:
            self._publish(head)
        return head
