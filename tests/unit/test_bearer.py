"""Bearer-token validation against a local key set (unit level; the IdP-backed suite is in
tests/integration/test_identity.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from broker.config import IdentitySettings, IssuerSettings
from broker.identity.bearer import BearerValidator, TokenRejected

ISS = "https://idp.test/realms/a"
OTHER = "https://idp.test/realms/other"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeIdp:
    """Discovery + JWKS over httpx.MockTransport; counts JWKS fetches; can go down."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})
        self.ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"})
        self.published = [self.rsa, self.ec]
        self.jwks_fetches = 0
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("idp down")
        if request.url.path.endswith("/.well-known/openid-configuration"):
            issuer = str(request.url).removesuffix("/.well-known/openid-configuration")
            return httpx.Response(200, json={"issuer": issuer, "jwks_uri": f"{issuer}/certs"})
        if request.url.path.endswith("/certs"):
            self.jwks_fetches += 1
            return httpx.Response(200, json=KeySet(self.published).as_dict(private=False))
        return httpx.Response(404)

    def token(self, key: Any = None, alg: str = "RS256", **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISS,
            "sub": "u-1",
            "aud": "telerad-broker",
            "exp": now + 300,
            "iat": now,
            "npi": "1000000001",
            "roles": ["radiologist"],
            "licenses": ["US-CA"],
            "acr": "1",
        } | overrides
        key = key or (self.ec if alg == "ES256" else self.rsa)
        header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
        return jwt.encode(
            header, {k: v for k, v in claims.items() if v is not None}, key, algorithms=[alg]
        )


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


@pytest.fixture
def make_validator(idp: FakeIdp) -> Callable[..., BearerValidator]:
    def make(**identity: Any) -> BearerValidator:
        http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
        settings = IdentitySettings(**({"jwks_min_refresh_seconds": 0} | identity))
        issuers = [IssuerSettings(issuer=ISS, algorithms=["RS256", "ES256"])]
        return BearerValidator(settings, issuers, http)

    return make


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


class TestAccepts:
    async def test_valid_rs256_maps_claims(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        principal = await make_validator().validate(idp.token())
        assert principal.id == "npi:1000000001"
        assert principal.roles == ("radiologist",)
        assert principal.licenses == ("US-CA",)
        assert principal.acr == "1"
        assert principal.issuer == ISS

    async def test_valid_es256(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        assert (await make_validator().validate(idp.token(alg="ES256"))).subject == "u-1"

    async def test_at_jwt_typ_accepted(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        token = jwt.encode(
            {"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"},
            {
                "iss": ISS,
                "sub": "s",
                "aud": "telerad-broker",
                "exp": int(time.time()) + 60,
                "iat": int(time.time()),
            },
            idp.rsa,
        )
        assert (await make_validator().validate(token)).id == "sub:s"

    async def test_validated_token_is_cached(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        validator = make_validator()
        token = idp.token()
        await validator.validate(token)
        idp.down = True  # no key fetch, no verification needed for the same token
        assert (await validator.validate(token)).id == "npi:1000000001"

    async def test_rotated_key_found_by_refresh(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        validator = make_validator()
        await validator.validate(idp.token())
        new = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"})
        idp.published = [new]
        assert (await validator.validate(idp.token(key=new))).subject == "u-1"

    async def test_cached_keys_survive_idp_outage(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        validator = make_validator()
        await validator.validate(idp.token())
        idp.down = True
        assert (await validator.validate(idp.token(sub="u-2"))).subject == "u-2"

    async def test_unknown_kid_refresh_is_rate_limited(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        validator = make_validator(jwks_min_refresh_seconds=60)
        await validator.validate(idp.token())
        stranger = RSAKey.generate_key(2048, parameters={"kid": "nope"})
        for _ in range(5):
            with pytest.raises(TokenRejected):
                await validator.validate(idp.token(key=stranger))
        assert idp.jwks_fetches == 1


class TestRejects:
    @pytest.mark.parametrize(
        ("make_token", "reason"),
        [
            (
                lambda idp: _forge({"alg": "none", "kid": "rsa-1"}, {"iss": ISS}),
                "malformed",  # the classic form: empty signature
            ),
            (
                lambda idp: _forge({"alg": "none", "kid": "rsa-1"}, {"iss": ISS}, b"x"),
                "algorithm_not_allowed",
            ),
            (lambda idp: idp.token(exp=int(time.time()) - 120), "expired"),
            (lambda idp: idp.token(nbf=int(time.time()) + 600), "not_yet_valid"),
            (lambda idp: idp.token(iat=int(time.time()) + 600), "issued_in_future"),
            (lambda idp: idp.token(aud="someone-else"), "wrong_audience"),
            (lambda idp: idp.token(iss=OTHER), "untrusted_issuer"),
            (lambda idp: idp.token(exp=None), "missing_exp"),
            (lambda idp: "not-a-jwt", "malformed"),
            (lambda idp: "a.b", "malformed"),
            (lambda idp: "x" * 9000, "oversized"),
            (lambda idp: idp.token().rsplit(".", 1)[0] + ".", "malformed"),
            (lambda idp: idp.token()[:-6], "bad_signature"),
        ],
    )
    async def test_rejected(
        self,
        idp: FakeIdp,
        make_validator: Callable[..., BearerValidator],
        make_token: Callable[[FakeIdp], str],
        reason: str,
    ) -> None:
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(make_token(idp))
        assert err.value.reason == reason

    async def test_hs256_with_the_public_key(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        import hashlib
        import hmac

        public_pem = idp.rsa.as_pem(private=False)
        header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
        body = b64(
            json.dumps(
                {
                    "iss": ISS,
                    "sub": "x",
                    "aud": "telerad-broker",
                    "exp": int(time.time()) + 60,
                    "iat": int(time.time()),
                }
            ).encode()
        )
        mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(f"{header}.{body}.{b64(mac)}")
        assert err.value.reason == "algorithm_not_allowed"

    async def test_kid_of_another_key_type(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        token = idp.token(alg="ES256")
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        header["kid"] = "rsa-1"
        forged = b64(json.dumps(header).encode()) + "." + token.split(".", 1)[1]
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(forged)
        assert err.value.reason == "unknown_key"

    async def test_kid_path_traversal(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        token = jwt.encode({"alg": "RS256", "kid": "../../etc/passwd"}, {"iss": ISS}, idp.rsa)
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(token)
        assert err.value.reason == "unknown_key"

    @pytest.mark.parametrize("header", ["jku", "x5u", "jwk"])
    async def test_embedded_key_headers_are_never_used(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator], header: str
    ) -> None:
        attacker = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        value: Any = (
            attacker.as_dict(private=False) if header == "jwk" else "https://attacker.test/keys"
        )
        now = int(time.time())
        token = jwt.encode(
            {"alg": "RS256", "kid": "rsa-1", header: value},
            {"iss": ISS, "sub": "x", "aud": "telerad-broker", "exp": now + 60, "iat": now},
            attacker,
        )
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(token)
        assert err.value.reason == "bad_signature"

    async def test_psychic_signature(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        token = idp.token(alg="ES256")
        forged = token.rsplit(".", 1)[0] + "." + b64(b"\x00" * 64)
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(forged)
        assert err.value.reason == "bad_signature"

    async def test_duplicated_claims(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        header = b64(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode())
        body = b64(b'{"iss": "%s", "sub": "a", "sub": "b"}' % ISS.encode())
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(f"{header}.{body}.{b64(b'sig')}")
        assert err.value.reason == "duplicate_claim"

    async def test_crit_header(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        header = b64(json.dumps({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}).encode())
        body = b64(json.dumps({"iss": ISS}).encode())
        with pytest.raises(TokenRejected) as err:
            await make_validator().validate(f"{header}.{body}.{b64(b'sig')}")
        assert err.value.reason == "unsupported_crit"

    async def test_failed_tokens_are_not_cached(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        validator = make_validator()
        token = idp.token(aud="other")
        for _ in range(2):
            with pytest.raises(TokenRejected):
                await validator.validate(token)


class TestVerifySigned:
    """The signature path shared with logout tokens: claims are the caller's to check."""

    async def test_returns_issuer_and_claims_without_checking_them(
        self, idp: FakeIdp, make_validator: Callable[..., BearerValidator]
    ) -> None:
        issuer, claims = await make_validator().verify_signed(idp.token(aud=7, exp=None))
        assert str(issuer.issuer) == ISS
        assert claims["aud"] == 7

    @pytest.mark.parametrize(
        ("make_token", "reason"),
        [
            (lambda idp: idp.token(iss=OTHER), "untrusted_issuer"),
            (lambda idp: idp.token()[:-6], "bad_signature"),
            (
                lambda idp: _forge({"alg": "HS256", "kid": "rsa-1"}, {"iss": ISS}, b"x"),
                "algorithm_not_allowed",
            ),
        ],
    )
    async def test_signature_checks_still_apply(
        self,
        idp: FakeIdp,
        make_validator: Callable[..., BearerValidator],
        make_token: Callable[[FakeIdp], str],
        reason: str,
    ) -> None:
        with pytest.raises(TokenRejected) as err:
            await make_validator().verify_signed(make_token(idp))
        assert err.value.reason == reason
