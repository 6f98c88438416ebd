"""Sealed tokens: AES-256-GCM under a key ring, with the key id in a short header.

A sealed token is ``v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``. The header (version and
kid) and a purpose string (``"session"``, ``"link"``) are authenticated as associated data, so a
session cookie never opens as a link or the other way round, and a changed ``kid`` fails to open.
One key is active (seals); the others only open, so keys rotate without breaking what is unexpired.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KeyRing", "SealError", "b64u_decode", "b64u_encode"]

_VERSION = "v1"
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE = 12
_MAX_SEALED = 4096  # characters; anything longer is refused before any work


class SealError(ValueError):
    """The token is malformed, sealed under an unknown key, or has been altered."""


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict base64url without padding: any other character or a non-canonical tail fails."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise SealError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SealError("not base64url") from exc
    if b64u_encode(raw) != text:
        raise SealError("non-canonical base64url")
    return raw


class KeyRing:
    """AES-256-GCM keys by id: ``active`` seals, every key opens."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError("the active key is not in the key ring")
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise ValueError(f"bad key id {kid!r}: use 1-32 of [A-Za-z0-9_-]")
            if len(key) != 32:
                raise ValueError(f"key {kid!r} must be 32 bytes (AES-256)")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = active

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """One random key, for development and tests; nothing sealed survives a restart."""
        return cls({"ephemeral": AESGCM.generate_key(bit_length=256)}, "ephemeral")

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._aead)

    def seal(self, plaintext: bytes, *, purpose: str) -> str:
        """Encrypt and authenticate ``plaintext`` for ``purpose`` under the active key."""
        header = f"{_VERSION}.{self.active}"
        nonce = os.urandom(_NONCE)
        sealed = self._aead[self.active].encrypt(nonce, plaintext, f"{header}|{purpose}".encode())
        return f"{header}.{b64u_encode(nonce + sealed)}"

    def open(self, token: str, *, purpose: str) -> bytes:
        """Decrypt a token sealed for ``purpose``; raise :class:`SealError` on any defect."""
        if len(token) > _MAX_SEALED:
            raise SealError("too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise SealError("malformed")
        kid = parts[1]
        aead = self._aead.get(kid)
        if aead is None:
            raise SealError("unknown key")
        raw = b64u_decode(parts[2])
        if len(raw) < _NONCE + 16:
            raise SealError("truncated")
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], f"{_VERSION}.{kid}|{purpose}".encode())
        except InvalidTag as exc:
            raise SealError("altered or sealed under another key") from exc
