"""Bearer access tokens (JWT) from the trusted issuers, validated with joserfc.

The rules, with the texts they come from:

* RFC 8725 §3.1 "Libraries MUST enable the caller to specify a supported set of algorithms and
  MUST NOT use any other algorithms": each issuer has its own allow-list; ``none`` and HMAC are
  never on it, so a public key can never be used as an HMAC secret.
* RFC 8725 §3.8 "issuer ... MUST validate that the cryptographic keys used ... belong to the
  issuer": the key is looked up in that issuer's own JWKS only; ``jku``, ``x5u``, ``jwk`` and
  ``x5c`` headers are ignored and never fetched.
* RFC 8725 §3.9 / RFC 9068 §4 "MUST validate that the aud claim contains" our audience.
* RFC 7519 §4.1.4/4.1.5: ``exp`` and ``nbf`` with a small leeway; ``iat`` may not lie in the future.
* RFC 7515 §4.1.11: a ``crit`` header we do not understand makes the JWS invalid.
* RFC 9068 §2.1: a ``typ`` header, when present, must be ``at+jwt`` or ``JWT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from broker.config import IdentitySettings, IssuerSettings
from broker.crypto import SealError, b64u_decode
from broker.identity.jwks import IssuerKeys
from broker.identity.principal import Principal

__all__ = ["BearerValidator", "TokenRejected", "claims_to_principal", "strict_json", "string_list"]

log = logging.getLogger("telerad.identity")

_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})


class TokenRejected(ValueError):
    """The token is not acceptable; ``reason`` is a stable code for logs and audit (never sent)."""

    def __init__(self, reason: str, issuer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.issuer = issuer


def strict_json(raw: bytes) -> dict[str, Any]:
    """A JSON object with no duplicated member names (RFC 7519 §4: reject or use the last)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        if len(names) != len(set(names)):
            raise TokenRejected("duplicate_claim")
        return dict(pairs)

    try:
        value = json.loads(raw, object_pairs_hook=no_duplicates)
    except TokenRejected:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenRejected("malformed") from exc
    if not isinstance(value, dict):
        raise TokenRejected("malformed")
    return value


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def claims_to_principal(
    claims: dict[str, Any], issuer: IssuerSettings, *, via: str = "bearer"
) -> Principal:
    """Map one issuer's claims onto a :class:`Principal` with that issuer's claim mapping."""
    mapping = issuer.claims
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenRejected("missing_sub")
    identifier = _claim(claims, mapping.subject_id)
    subject_id = (
        f"{mapping.subject_id_prefix}{identifier}"
        if isinstance(identifier, str) and identifier
        else f"sub:{subject}"
    )
    group = _claim(claims, mapping.group)
    # RFC 9068 §2.2.1: auth_time is optional. Without it (e.g. a password grant) the user
    # authenticated when the token was issued, so `iat` stands in; never a later moment.
    auth_time = claims.get("auth_time", claims.get("iat"))
    acr = claims.get("acr")
    return Principal(
        id=subject_id,
        issuer=str(issuer.issuer).rstrip("/"),
        subject=subject,
        roles=string_list(_claim(claims, mapping.roles)),
        licenses=string_list(_claim(claims, mapping.licenses)),
        privileges=string_list(_claim(claims, mapping.privileges)),
        group=group if isinstance(group, str) else None,
        acr=str(acr) if isinstance(acr, str | int) else None,
        amr=string_list(claims.get("amr")),
        auth_time=auth_time if isinstance(auth_time, int) else None,
        expires_at=int(claims.get("exp", 0)),
        via="session" if via == "session" else "bearer",
        idp_session_id=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
        client_id=claims.get("azp") if isinstance(claims.get("azp"), str) else None,
        name=claims.get("preferred_username")
        if isinstance(claims.get("preferred_username"), str)
        else None,
    )


class BearerValidator:
    """Validates bearer JWTs against the issuer allow-list; caches validated ones until exp."""

    def __init__(
        self,
        settings: IdentitySettings,
        issuers: list[IssuerSettings],
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._issuers = {str(i.issuer).rstrip("/"): i for i in issuers}
        self._keys = {
            name: IssuerKeys(
                name,
                http,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
                max_age_seconds=settings.jwks_max_age_seconds,
            )
            for name in self._issuers
        }
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._http = http
        self._introspecting = [i for i in issuers if i.validation == "introspection"]

    def keys(self, issuer: str) -> IssuerKeys:
        """The key cache of one trusted issuer."""
        return self._keys[issuer.rstrip("/")]

    def issuer(self, issuer: str) -> IssuerSettings | None:
        return self._issuers.get(issuer.rstrip("/"))

    async def validate(self, token: str) -> Principal:
        """The principal a token stands for; raise :class:`TokenRejected` otherwise."""
        if len(token) > self._settings.max_token_bytes:
            raise TokenRejected("oversized")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            principal, until = cached
            if until > now:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        principal, until = await self._verify(token, now)
        self._cache[digest] = (principal, until)  # only verified tokens, keyed by their digest
        if len(self._cache) > self._settings.token_cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        """The principal, and until when the validation may be reused."""
        if token.count(".") != 2:
            if len(self._introspecting) == 1:  # an opaque token: only one issuer can own it
                return await self._introspect(token, self._introspecting[0], now)
            raise TokenRejected("malformed")
        header, claims = self._parse(token)
        issuer = self._trusted_issuer(claims)
        if issuer.validation == "introspection":
            return await self._introspect(token, issuer, now)
        await self._check_signature(token, header, issuer, typs=_ACCEPTED_TYP)
        self._check_claims(claims, issuer, now)
        return claims_to_principal(claims, issuer), float(
            claims["exp"]
        ) + self._settings.leeway_seconds

    async def verify_signed(
        self, token: str, *, typs: frozenset[str] | None = None
    ) -> tuple[IssuerSettings, dict[str, Any]]:
        """Claims of a JWT signed by a trusted issuer's key (e.g. a logout token); the claims
        themselves are the caller's to check. ``typs``: accepted ``typ`` headers, if checked."""
        if len(token) > self._settings.max_token_bytes:
            raise TokenRejected("oversized")
        header, claims = self._parse(token)
        issuer = self._trusted_issuer(claims)
        await self._check_signature(token, header, issuer, typs=typs)
        return issuer, claims

    def _trusted_issuer(self, claims: dict[str, Any]) -> IssuerSettings:
        issuer_name = claims.get("iss")
        if not isinstance(issuer_name, str):
            raise TokenRejected("missing_iss")
        issuer = self._issuers.get(issuer_name)
        if issuer is None:
            raise TokenRejected("untrusted_issuer")
        return issuer

    async def _check_signature(
        self,
        token: str,
        header: dict[str, Any],
        issuer: IssuerSettings,
        *,
        typs: frozenset[str] | None,
    ) -> None:
        """Algorithm allow-list, ``kid``, ``typ``, ``crit``, the issuer's key, the signature."""
        issuer_name = str(issuer.issuer).rstrip("/")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise TokenRejected("algorithm_not_allowed", issuer_name)
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenRejected("missing_kid", issuer_name)
        typ = header.get("typ")
        if typs is not None and typ is not None:
            if not isinstance(typ, str) or typ.lower() not in typs:
                raise TokenRejected("wrong_typ", issuer_name)
        if "crit" in header:
            raise TokenRejected("unsupported_crit", issuer_name)
        key = await self._keys[issuer_name].key_for(kid, alg)
        if key is None:
            raise TokenRejected("unknown_key", issuer_name)
        try:
            jwt.decode(token, key, algorithms=[alg], registry=JWSRegistry(algorithms=[alg]))
        except (JoseError, ValueError) as exc:
            raise TokenRejected("bad_signature", issuer_name) from exc

    async def _introspect(
        self, token: str, issuer: IssuerSettings, now: float
    ) -> tuple[Principal, float]:
        """RFC 7662: ask the issuer whether the token is active, and what it stands for."""
        name = str(issuer.issuer).rstrip("/")
        keys = self._keys[name]
        metadata = keys.metadata or await keys.discovery()
        endpoint = metadata.get("introspection_endpoint")
        if (
            not isinstance(endpoint, str)
            or issuer.client_id is None
            or issuer.client_secret is None
        ):
            raise TokenRejected("introspection_unavailable", name)
        try:
            response = await self._http.post(
                endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                auth=(issuer.client_id, issuer.client_secret.get_secret_value()),
            )
            response.raise_for_status()
            claims = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRejected("introspection_failed", name) from exc
        # RFC 7662 §2.2: "active" REQUIRED; anything but true means the token is not usable.
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise TokenRejected("inactive", name)
        if claims.get("iss", name) != name:
            raise TokenRejected("untrusted_issuer", name)
        claims.setdefault("iss", name)
        claims.setdefault("iat", int(now))
        self._check_claims(claims, issuer, now)
        until = min(float(claims["exp"]), now + self._settings.introspection_cache_seconds)
        return claims_to_principal(claims, issuer), until

    def _parse(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise TokenRejected("malformed")
        try:
            header = strict_json(b64u_decode(parts[0]))
            claims = strict_json(b64u_decode(parts[1]))
            b64u_decode(parts[2])
        except SealError as exc:
            raise TokenRejected("malformed") from exc
        return header, claims

    def _check_claims(self, claims: dict[str, Any], issuer: IssuerSettings, now: float) -> None:
        leeway = self._settings.leeway_seconds
        name = str(issuer.issuer).rstrip("/")
        for claim in ("exp", "iat"):
            if not isinstance(claims.get(claim), int | float) or isinstance(
                claims.get(claim), bool
            ):
                raise TokenRejected(f"missing_{claim}", name)
        if claims["exp"] <= now - leeway:
            raise TokenRejected("expired", name)
        if claims["iat"] > now + leeway:
            raise TokenRejected("issued_in_future", name)
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + leeway):
            raise TokenRejected("not_yet_valid", name)
        audience = claims.get("aud")
        audiences = {audience} if isinstance(audience, str) else set(string_list(audience))
        if not audiences & set(issuer.audiences):
            raise TokenRejected("wrong_audience", name)
