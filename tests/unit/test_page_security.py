"""The cookie-riding change check of SecurityHeadersMiddleware, as browsers actually send it."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from broker.pages.security import SecurityHeadersMiddleware

ORIGIN = "https://broker.example"


def _client(cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
    async def change(_: object) -> PlainTextResponse:
        return PlainTextResponse("changed")

    app = Starlette(routes=[Route("/change", change, methods=["POST"])])
    wrapped = SecurityHeadersMiddleware(app, public_url=ORIGIN, session_cookie="sid")
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url=ORIGIN, cookies=cookies
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # Chromium posting our own form under Referrer-Policy: no-referrer
        ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}, 200),
        # a sibling app on the same site, or any other site
        ({"Origin": "https://pacs.example", "Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, 403),
        # Fetch Metadata wins over an Origin that claims to be ours
        ({"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "none"}, 403),
        # clients without Fetch Metadata: Origin must be ours exactly; null is opaque
        ({"Origin": ORIGIN}, 200),
        ({"Origin": "null"}, 403),
        ({"Origin": "https://evil.example"}, 403),
        ({}, 200),
    ],
)
async def test_cookie_changes_must_come_from_our_origin(
    headers: dict[str, str], status: int
) -> None:
    async with _client({"sid": "s"}) as client:
        answer = await client.post("/change", headers=headers)
    assert answer.status_code == status, answer.text


async def test_bearer_and_cookieless_callers_are_not_browser_sessions() -> None:
    async with _client() as client:
        bearer = await client.post(
            "/change", headers={"Authorization": "Bearer t", "Origin": "https://evil.example"}
        )
        plain = await client.post("/change", headers={"Sec-Fetch-Site": "cross-site"})
    assert (bearer.status_code, plain.status_code) == (200, 200)
