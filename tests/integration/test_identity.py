"""Identity against the real IdP (Keycloak): browser login, bearer tokens, attacks."""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.stack import Stack
from tests.integration.conftest import Broker, LiveBroker
from tests.integration.helpers import (
    EVE_TOTP_BASE32,
    browser_login,
    keycloak_admin,
    password_token,
)

pytestmark = pytest.mark.integration


def realm(stack: Stack, name: str) -> str:
    return stack.services["keycloak"].endpoints[name]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, body, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(header))), json.loads(
        base64.urlsafe_b64decode(pad(body))
    )


class TestBrowserLogin:
    async def test_login_session_logout(self, broker: Broker, stack: Stack) -> None:
        landed = await browser_login(broker.client, broker.url, idp="hospital-a", username="ada")
        assert landed.status_code == 303, landed.text
        assert landed.headers["location"] == "/api/me"
        cookie = landed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        me = await broker.client.get(f"{broker.url}/api/me")
        assert me.status_code == 200, me.text
        assert me.json()["id"] == "npi:1000000001"
        assert me.json()["via"] == "session"
        assert me.json()["roles"] == ["radiologist"]
        assert "login" in broker.audit.kinds()
        saved = broker.client.cookies.get("telerad_session")
        # a GET changes nothing: it leads to the sign-out page, whose form posts the CSRF token
        asked = await broker.client.get(f"{broker.url}/auth/logout")
        assert asked.status_code == 303 and asked.headers["location"] == "/signout"
        page = await broker.client.get(f"{broker.url}/signout")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token, page.text
        assert "logout" not in broker.audit.kinds()
        out = await broker.client.post(f"{broker.url}/auth/logout", data={"csrf": token[1]})
        assert out.status_code == 302, out.text
        assert out.headers["location"].startswith(realm(stack, "hospital-a"))
        assert (await broker.client.get(f"{broker.url}/api/me")).status_code == 401
        # the old cookie, replayed after logout, is dead in this process
        assert saved
        broker.client.cookies.set("telerad_session", saved)
        replay = await broker.client.get(f"{broker.url}/api/me")
        assert replay.status_code == 401, replay.text
        assert "logout" in broker.audit.kinds()

    async def test_mfa_login_carries_acr(self, broker: Broker) -> None:
        landed = await browser_login(
            broker.client,
            broker.url,
            idp="hospital-a",
            username="eve",
            otp_secret=EVE_TOTP_BASE32,
            acr_values="2",
        )
        assert landed.status_code == 303, landed.text
        me = (await broker.client.get(f"{broker.url}/api/me")).json()
        assert me["acr"] == "2", me

    async def test_callback_without_login_is_a_clear_error(self, broker: Broker) -> None:
        response = await broker.client.get(f"{broker.url}/auth/callback?code=x&state=y")
        assert response.status_code == 400
        assert "Sign-in failed" in response.text
        assert "login.failed" in broker.audit.kinds()

    async def test_forged_state_is_refused(self, broker: Broker) -> None:
        start = await broker.client.get(f"{broker.url}/auth/login", params={"idp": "hospital-a"})
        assert start.status_code == 302
        response = await broker.client.get(f"{broker.url}/auth/callback?code=x&state=forged")
        assert response.status_code == 400
        assert (await broker.client.get(f"{broker.url}/api/me")).status_code == 401

    async def test_open_redirect_is_not_followed(self, broker: Broker) -> None:
        landed = await browser_login(
            broker.client, broker.url, idp="hospital-a", username="ada", next_path="//evil.test/x"
        )
        assert landed.headers["location"] == "/"


class TestBearer:
    async def test_two_issuers_with_their_mappings(self, broker: Broker, stack: Stack) -> None:
        a = password_token(realm(stack, "hospital-a"), "ada")
        b = password_token(realm(stack, "hospital-b"), "fay", realm="hospital-b")
        me_a = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {a}"}
        )
        me_b = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {b}"}
        )
        assert me_a.status_code == 200, me_a.text
        assert me_b.status_code == 200, me_b.text
        assert (me_a.json()["id"], me_a.json()["issuer"]) == (
            "npi:1000000001",
            realm(stack, "hospital-a"),
        )
        assert (me_b.json()["id"], me_b.json()["issuer"]) == (
            "npi:2000000001",
            realm(stack, "hospital-b"),
        )

    async def test_unlisted_issuer_is_refused(self, broker: Broker, stack: Stack) -> None:
        url = stack.services["keycloak"].endpoints["url"] + "/realms/northstar-reading"
        response = httpx.post(
            f"{url}/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "telerad-api",
                "client_secret": "dev-api-secret-northstar",
            },
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        got = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert got.status_code == 401
        assert got.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    async def test_cached_keys_validate_while_idp_is_down(
        self, broker: Broker, stack: Stack
    ) -> None:
        token = password_token(realm(stack, "hospital-a"), "ada")
        other = password_token(realm(stack, "hospital-a"), "ben")
        ok = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 200
        state = broker.app.state.telerad
        original = state.http
        state.bearer._keys[realm(stack, "hospital-a")]._http = httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda r: (_ for _ in ()).throw(httpx.ConnectError("down"))
            )
        )
        try:
            again = await broker.client.get(
                f"{broker.url}/api/me", headers={"Authorization": f"Bearer {other}"}
            )
        finally:
            state.bearer._keys[realm(stack, "hospital-a")]._http = original
        assert again.status_code == 200, again.text


class TestAttacks:
    """Each forged token is a 401 with a Bearer challenge, and nothing of it is echoed."""

    def _rsa_public_pem(self, stack: Stack) -> bytes:
        jwks = httpx.get(f"{realm(stack, 'hospital-a')}/protocol/openid-connect/certs").json()
        rsa = next(k for k in jwks["keys"] if k["kty"] == "RSA" and k.get("use") == "sig")
        return RSAKey.import_key(rsa).as_pem(private=False)

    def _forgeries(self, stack: Stack) -> dict[str, str]:
        import hashlib
        import hmac

        real = password_token(realm(stack, "hospital-a"), "ada")
        header, claims = _parts(real)
        head, body, sig = real.split(".")
        now = int(time.time())
        attacker = RSAKey.generate_key(2048, parameters={"kid": str(header["kid"])})
        hs_header = b64(json.dumps({"alg": "HS256", "kid": header["kid"], "typ": "JWT"}).encode())
        hs_mac = hmac.new(
            self._rsa_public_pem(stack), f"{hs_header}.{body}".encode(), hashlib.sha256
        ).digest()

        def resign(**changes: object) -> str:
            return jwt.encode(
                {"alg": "RS256", "kid": str(header["kid"])}, claims | changes, attacker
            )

        return {
            "alg_none": b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + f".{body}.",
            "hs256_with_public_key": f"{hs_header}.{body}.{b64(hs_mac)}",
            "kid_other_key": jwt.encode({"alg": "RS256", "kid": "not-a-key"}, claims, attacker),
            "kid_path": jwt.encode({"alg": "RS256", "kid": "../../../dev/null"}, claims, attacker),
            "jku_header": jwt.encode(
                {"alg": "RS256", "kid": str(header["kid"]), "jku": "http://127.0.0.1:1/jwks"},
                claims,
                attacker,
            ),
            "x5u_header": jwt.encode(
                {"alg": "RS256", "kid": str(header["kid"]), "x5u": "http://127.0.0.1:1/x5u"},
                claims,
                attacker,
            ),
            "jwk_header": jwt.encode(
                {"alg": "RS256", "kid": str(header["kid"]), "jwk": attacker.as_dict(private=False)},
                claims,
                attacker,
            ),
            "expired": resign(exp=now - 3600),
            "not_yet_valid": resign(nbf=now + 3600),
            "wrong_audience": resign(aud="someone-else"),
            "wrong_issuer": resign(iss="http://127.0.0.1:1/realms/evil"),
            "signature_stripped": f"{head}.{body}.",
            "signature_truncated": f"{head}.{body}.{sig[:-10]}",
            "payload_changed": f"{head}.{b64(json.dumps(claims | {'npi': '9'}).encode())}.{sig}",
            "es256_zero_signature": b64(
                json.dumps({"alg": "ES256", "kid": str(header["kid"])}).encode()
            )
            + f".{body}."
            + b64(b"\0" * 64),
            "oversized": f"{head}.{body}{'A' * 9000}.{sig}",
            "garbage": "definitely-not-a-jwt",
            "duplicated_claims": f"{head}." + b64(b'{"iss":"x","iss":"y"}') + f".{sig}",
        }

    async def test_every_forgery_is_refused(self, broker: Broker, stack: Stack) -> None:
        results = {}
        for name, token in self._forgeries(stack).items():
            response = await broker.client.get(
                f"{broker.url}/api/me", headers={"Authorization": f"Bearer {token}"}
            )
            results[name] = (response.status_code, response.headers.get("www-authenticate"))
            assert token[:40] not in response.text
        assert results == {name: (401, 'Bearer error="invalid_token"') for name in results}, results
        rejected = [e for e in broker.audit.events if e.kind.value == "token.rejected"]
        assert len(rejected) == len(results)

    async def test_wrong_scheme(self, broker: Broker) -> None:
        response = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": "Basic eDp5"}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_request"'


class TestKeyRotation:
    @pytest.fixture
    def broker_env(self, broker_env: dict[str, str]) -> dict[str, str]:
        import os

        os.environ["TELERAD_IDENTITY__JWKS_MIN_REFRESH_SECONDS"] = "1"
        return broker_env

    async def test_new_signing_key_at_the_idp_is_picked_up(
        self, broker: Broker, stack: Stack
    ) -> None:
        import asyncio

        base = stack.services["keycloak"].endpoints["url"]
        before = password_token(realm(stack, "hospital-a"), "ada")
        ok = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {before}"}
        )
        assert ok.status_code == 200, ok.text
        auth = keycloak_admin(base)
        realm_id = httpx.get(f"{base}/admin/realms/hospital-a", headers=auth).json()["id"]
        created = httpx.post(
            f"{base}/admin/realms/hospital-a/components",
            headers=auth,
            json={
                "name": f"rotated-{int(time.time())}",
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm_id,
                "config": {
                    "priority": ["500"],
                    "keySize": ["2048"],
                    "active": ["true"],
                    "enabled": ["true"],
                    "algorithm": ["RS256"],
                },
            },
        )
        assert created.status_code == 201, created.text
        after = password_token(realm(stack, "hospital-a"), "ada")
        assert _parts(after)[0]["kid"] != _parts(before)[0]["kid"]
        await asyncio.sleep(1.2)  # past the refresh rate limit set above
        rotated = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {after}"}
        )
        assert rotated.status_code == 200, rotated.text
        # the old key is still published, so unexpired tokens signed with it keep working
        old = await broker.client.get(
            f"{broker.url}/api/me", headers={"Authorization": f"Bearer {before}"}
        )
        assert old.status_code == 200


class TestIntrospection:
    """RFC 7662 for an issuer configured to be asked about every token (as for opaque tokens)."""

    @pytest.fixture
    def broker_env(self, broker_env: dict[str, str]) -> dict[str, str]:
        import os

        issuers = json.loads(broker_env["TELERAD_ISSUERS"])
        for issuer in issuers:
            if issuer["issuer"].endswith("/hospital-b"):
                issuer["validation"] = "introspection"
        os.environ["TELERAD_ISSUERS"] = json.dumps(issuers)
        os.environ["TELERAD_IDENTITY__INTROSPECTION_CACHE_SECONDS"] = "0"
        return broker_env

    async def test_active_then_revoked_at_the_idp(self, broker: Broker, stack: Stack) -> None:
        fay = password_token(realm(stack, "hospital-b"), "fay", realm="hospital-b")
        headers = {"Authorization": f"Bearer {fay}"}
        me = await broker.client.get(f"{broker.url}/api/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == "npi:2000000001"
        base = stack.services["keycloak"].endpoints["url"]
        auth = keycloak_admin(base)
        (user,) = httpx.get(
            f"{base}/admin/realms/hospital-b/users",
            params={"username": "fay", "exact": "true"},
            headers=auth,
        ).json()
        out = httpx.post(f"{base}/admin/realms/hospital-b/users/{user['id']}/logout", headers=auth)
        assert out.status_code == 204, out.text
        after = await broker.client.get(f"{broker.url}/api/me", headers=headers)
        assert after.status_code == 401, after.text
        assert broker.audit.events[-1].reasons == ["inactive"]


class TestStepUp:
    async def test_browser_steps_up_with_acr_values(self, broker: Broker, stack: Stack) -> None:
        from devstack.samples import sample_studies
        from tests.integration.helpers import form_action, totp

        vip = next(s for s in sample_studies() if s.key == "stolaf-mr-vip").study_uid
        landed = await browser_login(
            broker.client, broker.url, idp="hospital-a", username="eve", otp_secret=None
        )
        assert landed.status_code == 303, landed.text
        assert (await broker.client.get(f"{broker.url}/api/me")).json()["acr"] == "1"
        refused = await broker.client.post(f"{broker.url}/api/links", json={"study_uid": vip})
        assert refused.status_code == 401, refused.text
        assert 'error="insufficient_user_authentication"' in refused.headers["www-authenticate"]
        login_url = refused.json()["login_url"]
        assert "acr_values=2" in login_url and "idp=hospital-a" in login_url
        start = await broker.client.get(broker.url + login_url)
        assert start.status_code == 302
        otp_page = await broker.client.get(start.headers["location"])  # same SSO session: OTP only
        assert otp_page.status_code == 200, otp_page.text[:500]
        answer = await broker.client.post(
            form_action(otp_page.text), data={"otp": totp(EVE_TOTP_BASE32)}
        )
        assert answer.status_code == 302, answer.text[:1000]
        back = await broker.client.get(answer.headers["location"])
        assert back.status_code == 303
        assert (await broker.client.get(f"{broker.url}/api/me")).json()["acr"] == "2"
        granted = await broker.client.post(f"{broker.url}/api/links", json={"study_uid": vip})
        assert granted.status_code == 200, granted.text


class TestBackChannelLogout:
    async def test_idp_logout_kills_the_broker_session(
        self, live_broker: LiveBroker, stack: Stack
    ) -> None:
        import asyncio

        base = stack.services["keycloak"].endpoints["url"]
        auth = keycloak_admin(base)
        (client,) = httpx.get(
            f"{base}/admin/realms/hospital-a/clients",
            params={"clientId": "telerad-broker"},
            headers=auth,
        ).json()
        client["attributes"]["backchannel.logout.url"] = (
            f"{live_broker.url}/auth/backchannel-logout"
        )
        client["attributes"]["backchannel.logout.session.required"] = "true"
        updated = httpx.put(
            f"{base}/admin/realms/hospital-a/clients/{client['id']}", json=client, headers=auth
        )
        assert updated.status_code == 204, updated.text
        try:
            async with httpx.AsyncClient(timeout=30) as browser:

                async def plain_http_cookies(_: httpx.Response) -> None:
                    for cookie in browser.cookies.jar:
                        cookie.secure = False

                browser.event_hooks["response"] = [plain_http_cookies]
                landed = await browser_login(
                    browser, live_broker.url, idp="hospital-a", username="ben"
                )
                assert landed.status_code == 303, landed.text
                assert (await browser.get(f"{live_broker.url}/api/me")).status_code == 200
                (user,) = httpx.get(
                    f"{base}/admin/realms/hospital-a/users",
                    params={"username": "ben", "exact": "true"},
                    headers=auth,
                ).json()
                out = httpx.post(
                    f"{base}/admin/realms/hospital-a/users/{user['id']}/logout", headers=auth
                )
                assert out.status_code == 204, out.text
                for _ in range(50):
                    if (await browser.get(f"{live_broker.url}/api/me")).status_code == 401:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(
                        "the broker session survived the IdP's back-channel logout"
                    )
            revoked = [e for e in live_broker.audit.events if e.kind.value == "revoked"]
            assert revoked and revoked[-1].detail["by"] == "backchannel_logout"
        finally:
            client["attributes"]["backchannel.logout.url"] = ""
            httpx.put(
                f"{base}/admin/realms/hospital-a/clients/{client['id']}", json=client, headers=auth
            )

    @pytest.mark.parametrize(
        "body",
        [{}, {"logout_token": ""}, {"logout_token": "garbage"}, {"logout_token": "a.b.c"}],
    )
    async def test_bad_logout_tokens_are_400(self, broker: Broker, body: dict[str, str]) -> None:
        response = await broker.client.post(f"{broker.url}/auth/backchannel-logout", data=body)
        assert response.status_code == 400, response.text
