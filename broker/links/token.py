"""The link token: claims sealed with AES-256-GCM under the link key ring (see broker.crypto).

Opaque to whoever holds it: the study UID, the subject and everything else are inside the
ciphertext. A token is ``v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``, about 300 characters.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.crypto import KeyRing, SealError

__all__ = ["LinkClaims", "LinkCodec", "LinkInvalid"]

_PURPOSE = "link"


class LinkInvalid(ValueError):
    """Malformed, altered, or sealed under a key the ring does not hold."""


class LinkClaims(BaseModel):
    """What a link carries (short field names keep the token compact)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    subject: str = Field(alias="s")  # policy subject id
    issuer: str = Field(alias="i")  # the subject's IdP
    study_uid: str = Field(alias="u")
    operations: tuple[Literal["view", "download"], ...] = Field(alias="o")
    expires_at: int = Field(alias="e")
    issued_at: int = Field(alias="t")
    link_id: str = Field(alias="j", default_factory=lambda: secrets.token_urlsafe(12))
    decision_id: str | None = Field(alias="d", default=None)
    # Who may redeem: {"sid": <session id>} for a browser session, {"sub": <subject>} for a
    # bearer caller, {"jkt": <JWK thumbprint>} for a DPoP-bound client.
    binding: Annotated[dict[str, str], Field(alias="b", max_length=1)]
    bearer_only: bool = Field(alias="bo", default=False)


class LinkCodec:
    """Seals and opens link tokens with a key ring (active key seals, all keys open)."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring

    def seal(self, claims: LinkClaims) -> str:
        payload = json.dumps(claims.model_dump(by_alias=True), separators=(",", ":")).encode()
        return self._ring.seal(payload, purpose=_PURPOSE)

    def open(self, token: str) -> LinkClaims:
        try:
            payload = self._ring.open(token, purpose=_PURPOSE)
            return LinkClaims.model_validate_json(payload)
        except (SealError, ValidationError, ValueError) as exc:
            raise LinkInvalid("invalid link") from exc
