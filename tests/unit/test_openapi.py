"""The OpenAPI document declares each route's errors, all of them, and only those.

``ERRORS`` is the table, read from the code (the routes, the error handlers in
broker/errors.py, the cross-site check in broker/pages/security.py): for every operation in the
document, the error statuses it can answer. :class:`TestDocument` checks the document against
the table; :class:`TestEveryDeclaredErrorHappens` makes the app answer each of them (fakes for
the IdP, OPA, the PACS and the audit), so the table is not a wish list either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import TypeAdapter

from broker.config import RateLimitSettings
from broker.errors import ErrorBody
from broker.health import Readiness
from broker.ratelimits import RateLimits
from tests.unit.fake_broker import (
    BROKEN,
    DENIED,
    NOT_ACCEPTABLE,
    READABLE,
    FakeBroker,
    fake_broker,
)

REDEEM = "/links/{token}/dicom-web/{path}"
REVOKE = "/api/links/{link_id}/revoke"
ERRORS: dict[tuple[str, str], set[int]] = {
    ("GET", "/auth/login"): {400, 429, 503},
    ("GET", "/auth/callback"): {400, 429, 503},
    ("GET", "/auth/logout"): set(),
    ("POST", "/auth/logout"): {400, 403, 503},
    ("POST", "/auth/backchannel-logout"): {400, 503},
    ("GET", "/api/me"): {401},
    ("POST", "/api/decisions"): {400, 401, 403, 404, 502, 503},
    ("POST", "/api/links"): {400, 401, 403, 404, 429, 502, 503},
    ("POST", REVOKE): {401, 403, 404, 503},
    ("GET", REDEEM): {401, 403, 404, 406, 410, 429, 502, 503},
    ("GET", "/healthz"): set(),
    ("GET", "/readyz"): {503},
}
# Errors whose body is not the error body: the login's failure page, the PACS's 406 (passed on,
# empty), and the readiness report.
OTHER_BODIES = {
    ("GET", "/auth/callback", 400): "text/html",
    ("GET", "/auth/login", 429): "text/html",
    ("GET", "/auth/callback", 429): "text/html",
    ("GET", REDEEM, 406): "empty",
    ("GET", "/readyz", 503): "readiness",
}
BCL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
EVIL = {"Origin": "https://evil.test"}
CSRF = "c" * 43


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return fake_broker().app.openapi()


def declared(document: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    return {
        (method.upper(), path): {int(s) for s in operation["responses"] if int(s) >= 400}
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


class TestDocument:
    def test_each_operation_declares_exactly_its_errors(self, document: dict[str, Any]) -> None:
        assert declared(document) == ERRORS

    def test_no_validation_422_invalid_input_is_a_400(self, document: dict[str, Any]) -> None:
        statuses = {
            s for ops in document["paths"].values() for o in ops.values() for s in o["responses"]
        }
        assert "422" not in statuses
        assert "HTTPValidationError" not in document["components"]["schemas"]

    def test_errors_carry_the_error_body(self, document: dict[str, Any]) -> None:
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for (method, path), statuses in ERRORS.items():
            responses = document["paths"][path][method.lower()]["responses"]
            for status in statuses - {s for m, p, s in OTHER_BODIES if (m, p) == (method, path)}:
                content = responses[str(status)]["content"]
                assert content == {"application/json": {"schema": ref}}, (method, path, status)
        body = document["components"]["schemas"]["ErrorBody"]
        assert body["required"] == ["error", "detail"]
        assert body["additionalProperties"] is False

    def test_401_declares_its_bearer_challenge(self, document: dict[str, Any]) -> None:
        for (method, path), statuses in ERRORS.items():
            if 401 in statuses:
                headers = document["paths"][path][method.lower()]["responses"]["401"]["headers"]
                assert headers["WWW-Authenticate"]["required"] is True

    def test_429_declares_its_retry_after(self, document: dict[str, Any]) -> None:
        limited = [op for op, statuses in ERRORS.items() if 429 in statuses]
        assert len(limited) == 4
        for method, path in limited:
            headers = document["paths"][path][method.lower()]["responses"]["429"]["headers"]
            assert headers["Retry-After"]["required"] is True, (method, path)

    def test_what_can_answer_401_says_how_to_authenticate(self, document: dict[str, Any]) -> None:
        secured = {
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if operation.get("security") == [{"bearer": []}, {"session": []}]
        }
        assert secured == {op for op, statuses in ERRORS.items() if 401 in statuses}
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        assert schemes["session"] == {"type": "apiKey", "in": "cookie", "name": "telerad_session"}

    def test_pages_and_metrics_are_not_api(self, document: dict[str, Any]) -> None:
        paths = set(document["paths"])
        assert not {"/", "/studies/{study_uid}", "/read/{token}/{route}", "/metrics"} & paths
        assert not {"/app-config.js", "/studies/lookup", "/studies/{study_uid}/open"} & paths


Provoke = Callable[[FakeBroker, httpx.AsyncClient], Awaitable[httpx.Response]]


async def _link(b: FakeBroker, c: httpx.AsyncClient) -> str:
    """A link to the readable study, issued to the token's radiologist; its metadata path."""
    r = await c.post("/api/links", headers=b.bearer(), json={"study_uid": READABLE})
    assert r.status_code == 200, r.text
    return urlsplit(r.json()["url"]).path + "/metadata"


async def _login_state(c: httpx.AsyncClient) -> str:
    r = await c.get("/auth/login")
    assert r.status_code == 302, r.text
    return parse_qs(urlsplit(r.headers["location"]).query)["state"][0]


async def _callback_idp_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    state = await _login_state(c)
    b.idp.down = True  # the token endpoint is out of reach
    return await c.get("/auth/callback", params={"code": "c", "state": state})


async def _logout_audit_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.audit.fail = True
    c.cookies.update(b.session(csrf=CSRF))
    return await c.post("/auth/logout", data={"csrf": CSRF})


async def _backchannel_audit_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.audit.fail = True
    token = b.idp.token(events={BCL_EVENT: {}}, sid="idp-session-1")
    return await c.post("/auth/backchannel-logout", data={"logout_token": token})


async def _decision_audit_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.audit.fail = True
    return await c.post("/api/decisions", headers=b.bearer(), json={"study_uid": READABLE})


async def _links_opa_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.opa.down = True
    return await c.post("/api/links", headers=b.bearer(), json={"study_uid": READABLE})


async def _revoke_audit_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.audit.fail = True
    return await c.post("/api/links/l-1/revoke", headers=b.bearer())


async def _redeem_anonymous(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    return await c.get(await _link(b, c))


async def _redeem_someone_else(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    return await c.get(await _link(b, c), headers=b.bearer(sub="u-2", npi="1000000002"))


async def _redeem_revoked(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    r = await c.post("/api/links", headers=b.bearer(), json={"study_uid": READABLE})
    revoked = await c.post(f"/api/links/{r.json()['link_id']}/revoke", headers=b.bearer())
    assert revoked.status_code == 204, revoked.text
    return await c.get(urlsplit(r.json()["url"]).path + "/metadata", headers=b.bearer())


async def _redeem_not_acceptable(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    return await c.get(await _link(b, c), headers=b.bearer() | {"Accept": NOT_ACCEPTABLE})


async def _redeem_pacs_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    path = await _link(b, c)
    b.pacs.down = True
    return await c.get(path, headers=b.bearer())


async def _redeem_opa_down(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    path = await _link(b, c)
    b.opa.down = True
    return await c.get(path, headers=b.bearer())


def _limited(request: Provoke, **limits: int) -> Provoke:
    """``request`` sent once more than ``limits`` allow (a burst each, no refill to speak of)."""

    async def provoke(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
        settings = RateLimitSettings(**limits)
        b.state.limits = RateLimits(settings, clock=lambda: 0.0)
        await request(b, c)
        return await request(b, c)

    return provoke


async def _issue(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/api/links", headers=b.bearer(), json={"study_uid": READABLE})


async def _redeem_past_the_limit(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    path = await _link(b, c)
    b.state.limits = RateLimits(RateLimitSettings(redeem_burst=1), clock=lambda: 0.0)
    first = await c.get(path, headers=b.bearer())
    assert first.status_code == 200, first.text
    return await c.get(path, headers=b.bearer())


async def _unready(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
    b.readiness.ready = False
    return await c.get("/readyz")


def _down(attribute: str, request: Provoke) -> Provoke:
    async def provoke(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
        getattr(b, attribute).down = True
        return await request(b, c)

    return provoke


def _post(path: str, **kwargs: Any) -> Provoke:
    async def provoke(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
        headers = kwargs.pop("headers", None)
        if kwargs.pop("session", False):
            c.cookies.update(b.session())
        if headers == "bearer":
            headers = b.bearer()
        return await c.post(path, headers=headers, **kwargs)

    return provoke


def _get(path: str) -> Provoke:
    async def provoke(b: FakeBroker, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get(path)

    return provoke


PROVOKE: dict[tuple[str, str, int], Provoke] = {
    ("GET", "/auth/login", 400): _get("/auth/login?idp=nowhere"),
    ("GET", "/auth/login", 503): _down("idp", _get("/auth/login")),
    ("GET", "/auth/login", 429): _limited(_get("/auth/login"), login_burst=1),
    ("GET", "/auth/callback", 429): _limited(_get("/auth/callback"), login_burst=1),
    ("GET", "/auth/callback", 400): _get("/auth/callback"),
    ("GET", "/auth/callback", 503): _callback_idp_down,
    ("POST", "/auth/logout", 400): _post("/auth/logout", session=True, data={"csrf": "stale"}),
    ("POST", "/auth/logout", 403): _post("/auth/logout", session=True, headers=EVIL, data={}),
    ("POST", "/auth/logout", 503): _logout_audit_down,
    ("POST", "/auth/backchannel-logout", 400): _post("/auth/backchannel-logout", data={}),
    ("POST", "/auth/backchannel-logout", 503): _backchannel_audit_down,
    ("GET", "/api/me", 401): _get("/api/me"),
    ("POST", "/api/decisions", 400): _post("/api/decisions", headers="bearer", json={}),
    ("POST", "/api/decisions", 401): _post("/api/decisions", json={"study_uid": READABLE}),
    ("POST", "/api/decisions", 403): _post(
        "/api/decisions", session=True, headers=EVIL, json={"study_uid": READABLE}
    ),
    ("POST", "/api/decisions", 404): _post(
        "/api/decisions", headers="bearer", json={"study_uid": "1.2"}
    ),
    ("POST", "/api/decisions", 502): _post(
        "/api/decisions", headers="bearer", json={"study_uid": BROKEN}
    ),
    ("POST", "/api/decisions", 503): _decision_audit_down,
    ("POST", "/api/links", 400): _post("/api/links", headers="bearer", json={"operations": []}),
    ("POST", "/api/links", 401): _post("/api/links", json={"study_uid": READABLE}),
    ("POST", "/api/links", 403): _post("/api/links", headers="bearer", json={"study_uid": DENIED}),
    ("POST", "/api/links", 404): _post("/api/links", headers="bearer", json={"study_uid": "1.2"}),
    ("POST", "/api/links", 502): _post("/api/links", headers="bearer", json={"study_uid": BROKEN}),
    ("POST", "/api/links", 503): _links_opa_down,
    ("POST", "/api/links", 429): _limited(_issue, issue_burst=1),
    ("POST", REVOKE, 401): _post("/api/links/l-1/revoke"),
    ("POST", REVOKE, 403): _post("/api/links/l-1/revoke", session=True, headers=EVIL),
    ("POST", REVOKE, 404): _post(f"/api/links/{'x' * 65}/revoke", headers="bearer"),
    ("POST", REVOKE, 503): _revoke_audit_down,
    ("GET", REDEEM, 401): _redeem_anonymous,
    ("GET", REDEEM, 403): _redeem_someone_else,
    ("GET", REDEEM, 404): _get(f"/links/not-a-link/dicom-web/studies/{READABLE}"),
    ("GET", REDEEM, 406): _redeem_not_acceptable,
    ("GET", REDEEM, 410): _redeem_revoked,
    ("GET", REDEEM, 502): _redeem_pacs_down,
    ("GET", REDEEM, 503): _redeem_opa_down,
    ("GET", REDEEM, 429): _redeem_past_the_limit,
    ("GET", "/readyz", 503): _unready,
}


class TestEveryDeclaredErrorHappens:
    @pytest.mark.parametrize(
        ("method", "path", "status"),
        sorted((m, p, s) for (m, p), statuses in ERRORS.items() for s in statuses),
    )
    async def test_declared_error_is_answered(self, method: str, path: str, status: int) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            response = await PROVOKE[(method, path, status)](broker, client)
        assert response.status_code == status, response.text
        kind = OTHER_BODIES.get((method, path, status), "error")
        if kind == "text/html":
            assert response.headers["content-type"].startswith("text/html")
        elif kind == "empty":
            assert response.content == b""
        elif kind == "readiness":
            TypeAdapter(Readiness).validate_json(response.content)
        else:
            assert response.headers["content-type"] == "application/json", response.text
            ErrorBody.model_validate_json(response.content)
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer error=")
        if status == 429:
            assert int(response.headers["retry-after"]) >= 1, response.headers

    def test_every_declared_error_has_a_way_to_happen(self) -> None:
        wanted = {(m, p, s) for (m, p), statuses in ERRORS.items() for s in statuses}
        assert wanted == set(PROVOKE)
