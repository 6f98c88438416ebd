"""The browser login's routes when the IdP is out of reach: a 503 with the error body, not a 500.

authlib fetches the IdP's discovery document on the first login or logout, and calls its token
endpoint on the way back; each of those failed with an unhandled ``httpx`` error before.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from broker.revocation import RevocationKind
from tests.unit.fake_broker import fake_broker


class TestLogin:
    async def test_idp_unreachable_503s(self) -> None:
        broker = fake_broker()
        broker.idp.down = True
        async with broker.client() as client:
            r = await client.get("/auth/login")
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "dependency_unavailable"

    async def test_redirects_to_the_idp(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            r = await client.get("/auth/login")
        assert r.status_code == 302, r.text
        assert r.headers["location"].startswith("https://idp.test/realms/a/auth?")


class TestCallback:
    async def test_token_endpoint_unreachable_503s(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            r = await client.get("/auth/login")
            state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
            broker.idp.down = True
            r = await client.get("/auth/callback", params={"code": "c", "state": state})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "dependency_unavailable"

    async def test_a_login_too_large_for_a_session_is_a_400_page(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            r = await client.get("/auth/login")
            state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
            broker.idp.login_claims = {"roles": ["radiologist"] + [f"r{i:04}" for i in range(600)]}
            r = await client.get("/auth/callback", params={"code": "c", "state": state})
        assert r.status_code == 400, r.text
        assert "more than a browser session can hold" in r.text
        assert "set-cookie" not in r.headers or "Max-Age=0" in r.headers["set-cookie"]

    async def test_a_normal_login_lands_where_it_started(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            r = await client.get("/auth/login")
            state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
            r = await client.get("/auth/callback", params={"code": "c", "state": state})
        assert r.status_code == 303, r.text


class TestLogout:
    CSRF = "t" * 43

    async def test_idp_unreachable_503s_once_signed_out_here(self) -> None:
        broker = fake_broker()
        broker.idp.down = True
        async with broker.client() as client:
            client.cookies.update(broker.session(sid="sid-7", csrf=self.CSRF))
            r = await client.post("/auth/logout", data={"csrf": self.CSRF})
        assert r.status_code == 503, r.text
        assert "Signed out here" in r.json()["detail"]
        assert broker.state.revocations.is_revoked(RevocationKind.SESSION, "sid-7")

    async def test_goes_on_to_the_idps_end_session_endpoint(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            client.cookies.update(broker.session(csrf=self.CSRF))
            r = await client.post("/auth/logout", data={"csrf": self.CSRF})
        assert r.status_code == 302, r.text
        assert r.headers["location"].startswith("https://idp.test/realms/a/logout?")

    async def test_a_get_signs_nobody_out(self) -> None:
        """A link or an image on another page must not end a reader's session."""
        broker = fake_broker()
        async with broker.client() as client:
            client.cookies.update(broker.session(sid="sid-8", csrf=self.CSRF))
            r = await client.get("/auth/logout")
            assert r.status_code == 303 and r.headers["location"] == "/signout"
            page = await client.get("/signout")
            assert page.status_code == 200
            assert 'action="/auth/logout"' in page.text and self.CSRF in page.text
            assert (await client.get("/api/me")).status_code == 200
        assert not broker.state.revocations.is_revoked(RevocationKind.SESSION, "sid-8")
        assert "logout" not in [e.kind for e in broker.audit.events]

    @pytest.mark.parametrize("submitted", [None, "", "t" * 42, "u" * 43])
    async def test_a_post_without_the_sessions_token_is_refused(
        self, submitted: str | None
    ) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            client.cookies.update(broker.session(sid="sid-9", csrf=self.CSRF))
            data = {} if submitted is None else {"csrf": submitted}
            r = await client.post("/auth/logout", data=data)
            assert r.status_code == 400, r.text
            assert (await client.get("/api/me")).status_code == 200
        assert not broker.state.revocations.is_revoked(RevocationKind.SESSION, "sid-9")

    async def test_signed_out_already_goes_home(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            assert (await client.get("/auth/logout")).headers["location"] == "/"
            r = await client.post("/auth/logout", data={})
        assert r.status_code == 303 and r.headers["location"] == "/"
