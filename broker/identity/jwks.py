"""Signing keys of one trusted issuer: discovery, JWKS cache, refresh on an unknown ``kid``.

Keys come only from the ``jwks_uri`` of the issuer's own discovery document (never from a
token's ``jku``/``x5u``/``jwk`` header). An unknown ``kid`` triggers a refresh, at most once per
``min_refresh_seconds``; when the IdP is unreachable the keys already held keep working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

__all__ = ["IssuerKeys", "KeyFetchError"]

log = logging.getLogger("telerad.identity")

_KEY_TYPES: dict[str, tuple[type[Key], ...]] = {
    "RS256": (RSAKey,),
    "RS384": (RSAKey,),
    "RS512": (RSAKey,),
    "PS256": (RSAKey,),
    "PS384": (RSAKey,),
    "PS512": (RSAKey,),
    "ES256": (ECKey,),
    "ES384": (ECKey,),
    "EdDSA": (OKPKey,),
}
_CURVES = {"ES256": "P-256", "ES384": "P-384"}


class KeyFetchError(RuntimeError):
    """The issuer's discovery document or key set could not be fetched or made sense of."""


class IssuerKeys:
    """The verification keys of one issuer, cached by ``kid``."""

    def __init__(
        self,
        issuer: str,
        http: httpx.AsyncClient,
        *,
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 3600.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._http = http
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._keys: dict[str, Key] = {}
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.metadata: dict[str, Any] = {}

    async def key_for(self, kid: str, alg: str) -> Key | None:
        """The key with ``kid``, usable for ``alg``; refresh first when unknown or stale."""
        stale = time.monotonic() - self._fetched_at > self._max_age
        if kid not in self._keys or stale:
            await self.refresh(force=False)
        key = self._keys.get(kid)
        if key is None or not _fits(key, alg):
            return None
        return key

    async def refresh(self, *, force: bool) -> None:
        """Fetch discovery and JWKS again, rate-limited; on failure keep the keys held."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = now
            try:
                self._keys = await self._fetch()
                self._fetched_at = time.monotonic()
            except (httpx.HTTPError, KeyFetchError, ValueError) as exc:
                log.warning(
                    "key refresh failed; keeping %d cached key(s)",
                    len(self._keys),
                    extra={"issuer": self.issuer, "error": type(exc).__name__},
                )

    async def discovery(self) -> dict[str, Any]:
        """The issuer's OpenID Provider metadata, checked to name this very issuer."""
        response = await self._http.get(f"{self.issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        metadata = response.json()
        if not isinstance(metadata, dict) or metadata.get("issuer") != self.issuer:
            raise KeyFetchError("discovery document names another issuer")
        self.metadata = metadata
        return metadata

    async def _fetch(self) -> dict[str, Key]:
        metadata = await self.discovery()
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise KeyFetchError("discovery document has no usable jwks_uri")
        response = await self._http.get(jwks_uri)
        response.raise_for_status()
        document = response.json()
        keys: dict[str, Key] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") not in ("RSA", "EC", "OKP") or not isinstance(
                entry.get("kid"), str
            ):
                continue  # symmetric keys are never verification keys for us
            try:
                key = KeySet.import_key_set({"keys": [entry]}).keys[0]
            except (ValueError, TypeError, KeyError):
                continue
            if key.is_private:
                continue  # a JWKS serving private keys is not trusted for anything
            keys[entry["kid"]] = key
        if not keys:
            raise KeyFetchError("the issuer's JWKS holds no usable signing key")
        return keys


def _fits(key: Key, alg: str) -> bool:
    """Whether ``key`` may verify ``alg``: right key type, right curve, and the key's own alg."""
    types = _KEY_TYPES.get(alg)
    if types is None or not isinstance(key, types):
        return False
    declared = key.get("alg")
    if declared is not None and declared != alg:
        return False
    curve = _CURVES.get(alg)
    return curve is None or key.get("crv") == curve
