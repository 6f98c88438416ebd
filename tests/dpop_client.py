"""A DPoP client for tests (RFC 9449): makes proofs for requests with its own key."""

from __future__ import annotations

import time
import uuid

from joserfc import jwt
from joserfc.jwk import ECKey


class DpopClient:
    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256")

    def proof(
        self, method: str, url: str, *, iat: float | None = None, jti: str | None = None
    ) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.as_dict(private=False)}
        claims = {
            "jti": jti or uuid.uuid4().hex,
            "htm": method,
            "htu": url,
            "iat": int(iat if iat is not None else time.time()),
        }
        return jwt.encode(header, claims, self.key, algorithms=["ES256"], default_type=None)

    @property
    def thumbprint(self) -> str:
        return self.key.thumbprint()
