"""The encrypted session cookie: opaque, tamper-evident, idle/absolute lifetimes, revocable."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from broker.crypto import KeyRing
from broker.identity.sessions import SESSION_META, EncryptedSessionMiddleware, session_fits
from broker.revocation import RevocationKind, Revocations


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _app(clock: Clock, revocations: Revocations, ring: KeyRing) -> FastAPI:
    app = FastAPI()

    @app.get("/set")
    async def set_(request: Request) -> dict[str, Any]:
        request.session["principal"] = {"id": "npi:1", "idp_session_id": "idp-sid-1"}
        return {}

    @app.get("/get")
    async def get(request: Request) -> dict[str, Any]:
        meta = request.scope.get(SESSION_META) or {}
        return {"session": dict(request.session), "sid": meta.get("sid")}

    @app.get("/big")
    async def big(request: Request, roles: int) -> dict[str, Any]:
        request.session["principal"] = {"id": "npi:1", "roles": [f"role-{i}" for i in range(roles)]}
        return {"fits": session_fits(request.scope)}

    @app.get("/clear")
    async def clear(request: Request) -> dict[str, Any]:
        request.session.clear()
        return {}

    app.add_middleware(
        EncryptedSessionMiddleware,
        keyring=ring,
        revocations=revocations,
        cookie_name="s",
        secure=True,
        idle_seconds=900,
        absolute_seconds=3600,
        clock=clock,
    )
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations(clock: Clock) -> Revocations:
    return Revocations(clock)


@pytest.fixture
def client(clock: Clock, revocations: Revocations) -> TestClient:
    return TestClient(_app(clock, revocations, KeyRing.ephemeral()), base_url="https://broker.test")


class TestSessionCookie:
    def test_cookie_is_opaque_and_flagged(self, client: TestClient) -> None:
        response = client.get("/set")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
        assert "npi" not in cookie and "idp-sid" not in cookie
        assert client.get("/get").json()["session"]["principal"]["id"] == "npi:1"

    def test_tampered_cookie_is_no_session(self, client: TestClient) -> None:
        client.get("/set")
        value = client.cookies["s"]
        client.cookies.set("s", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
        assert client.get("/get").json()["session"] == {}

    def test_idle_timeout(self, client: TestClient, clock: Clock) -> None:
        client.get("/set")
        clock.now += 901
        assert client.get("/get").json()["session"] == {}

    def test_activity_extends_idle_but_not_absolute(self, client: TestClient, clock: Clock) -> None:
        client.get("/set")
        for _ in range(4):
            clock.now += 800
            assert client.get("/get").json()["session"] != {}
        clock.now += 500  # 3700 s after login: past the absolute lifetime
        assert client.get("/get").json()["session"] == {}

    def test_revoked_session_dies_at_once(
        self, client: TestClient, revocations: Revocations, clock: Clock
    ) -> None:
        client.get("/set")
        sid = client.get("/get").json()["sid"]
        revocations.revoke(RevocationKind.SESSION, sid, until=clock.now + 3600)
        assert client.get("/get").json()["session"] == {}

    def test_idp_session_revocation(
        self, client: TestClient, revocations: Revocations, clock: Clock
    ) -> None:
        client.get("/set")
        revocations.revoke(RevocationKind.IDP_SESSION, "idp-sid-1", until=clock.now + 60)
        assert client.get("/get").json()["session"] == {}

    def test_cookie_from_another_key_ring_is_ignored(
        self, clock: Clock, revocations: Revocations, client: TestClient
    ) -> None:
        client.get("/set")
        other = TestClient(
            _app(clock, revocations, KeyRing.ephemeral()), base_url="https://broker.test"
        )
        other.cookies.set("s", client.cookies["s"])
        assert other.get("/get").json()["session"] == {}

    def test_clearing_deletes_the_cookie(self, client: TestClient) -> None:
        client.get("/set")
        response = client.get("/clear")
        assert "Max-Age=0" in response.headers["set-cookie"]


def test_a_session_too_large_for_a_cookie_is_not_kept_and_the_answer_is_whole(
    client: TestClient,
) -> None:
    small = client.get("/big", params={"roles": 5})
    assert small.status_code == 200 and small.json() == {"fits": True}
    assert "s" in client.cookies
    large = client.get("/big", params={"roles": 400})
    assert large.status_code == 200 and large.json() == {"fits": False}
    assert "s" not in client.cookies  # the old cookie is cleared, no half-written answer
