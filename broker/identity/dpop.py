"""DPoP proofs (RFC 9449) for binding study links to an API client's key.

A client that sends a ``DPoP`` proof when it asks for a link gets a link bound to its key
(``{"jkt": <RFC 7638 thumbprint>}``); every redemption of that link must carry a fresh proof
signed by the same key, so a leaked link and token are useless without the private key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from broker.crypto import SealError, b64u_decode
from broker.identity.bearer import TokenRejected, strict_json

__all__ = ["DpopVerifier"]

# RFC 9449 §4.2: asymmetric algorithms only; §11.6 recommends against RSA1_5 etc.
_ALGORITHMS: dict[str, type[ECKey] | type[OKPKey] | type[RSAKey]] = {
    "ES256": ECKey,
    "EdDSA": OKPKey,
    "RS256": RSAKey,
    "PS256": RSAKey,
}


class DpopVerifier:
    """Checks DPoP proofs: signature by the embedded public key, htm, htu, iat, jti reuse."""

    def __init__(
        self,
        *,
        max_age_seconds: int = 60,
        clock: Callable[[], float] = time.time,
        remember: int = 100_000,
    ) -> None:
        self._max_age = max_age_seconds
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember = remember

    def verify(self, proof: str, *, method: str, url: str) -> str:
        """The thumbprint (``jkt``) of the key that signed a valid proof for this request.

        RFC 9449 §4.3: ``typ`` is ``dpop+jwt``; ``alg`` asymmetric; ``jwk`` a public key; the
        signature verifies with it; ``htm`` and ``htu`` match the request; ``iat`` is recent;
        ``jti`` has not been seen within the window.
        """
        if len(proof) > 4096 or proof.count(".") != 2:
            raise TokenRejected("dpop_malformed")
        head, body, _ = proof.split(".")
        try:
            header = strict_json(b64u_decode(head))
            claims = strict_json(b64u_decode(body))
        except SealError as exc:
            raise TokenRejected("dpop_malformed") from exc
        alg, jwk = header.get("alg"), header.get("jwk")
        if header.get("typ") != "dpop+jwt" or alg not in _ALGORITHMS or not isinstance(jwk, dict):
            raise TokenRejected("dpop_header")
        key = self._public_key(jwk, str(alg))
        try:
            jws.deserialize_compact(proof, key, algorithms=[str(alg)])
        except (JoseError, ValueError) as exc:
            raise TokenRejected("dpop_signature") from exc
        now = self._clock()
        iat, jti = claims.get("iat"), claims.get("jti")
        if claims.get("htm") != method or _normalise(claims.get("htu")) != _normalise(url):
            raise TokenRejected("dpop_wrong_request")
        if not isinstance(iat, int | float) or abs(now - iat) > self._max_age:
            raise TokenRejected("dpop_stale")
        if not isinstance(jti, str) or not jti or len(jti) > 128:
            raise TokenRejected("dpop_jti")
        self._expire(now)
        if jti in self._seen:
            raise TokenRejected("dpop_replayed")
        self._seen[jti] = now
        return key.thumbprint()

    @staticmethod
    def _public_key(jwk: dict[str, Any], alg: str) -> Key:
        if any(private in jwk for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise TokenRejected("dpop_private_key")
        try:
            key: Key = _ALGORITHMS[alg].import_key(jwk)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise TokenRejected("dpop_key") from exc
        return key

    def _expire(self, now: float) -> None:
        while self._seen and (
            len(self._seen) > self._remember
            or next(iter(self._seen.values())) < now - self._max_age
        ):
            self._seen.popitem(last=False)


def _normalise(url: object) -> str | None:
    """RFC 9449 §4.3: compare htu without query and fragment."""
    if not isinstance(url, str):
        return None
    return url.split("?", 1)[0].split("#", 1)[0]
