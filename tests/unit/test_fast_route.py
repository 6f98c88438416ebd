"""The link redemption route that serves requests is the plain ASGI one, with FastAPI's route
behind it for the OpenAPI document; answers and errors are the same shape either way."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from broker.links.endpoints import REDEEM_PATH
from broker.links.fast_route import FastRedeemRoute
from tests.unit.fake_broker import fake_broker


def test_the_fast_route_comes_first() -> None:
    broker = fake_broker()
    first = broker.app.router.routes[0]
    assert isinstance(first, FastRedeemRoute)
    assert first.path == REDEEM_PATH
    assert REDEEM_PATH in broker.app.openapi()["paths"] or any(
        p.startswith("/links/{token}/dicom-web/") for p in broker.app.openapi()["paths"]
    )


async def test_an_unknown_link_is_the_usual_404_from_the_fast_route() -> None:
    broker = fake_broker()
    route = broker.app.router.routes[0]
    assert isinstance(route, FastRedeemRoute)
    served: list[str] = []
    inner = route.app

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        served.append(scope["path_params"]["token"])
        await inner(scope, receive, send)

    route.app = counting
    async with broker.client() as client:
        r = await client.get("/links/not-a-token/dicom-web/studies")
    assert served == ["not-a-token"]
    assert r.status_code == 404, r.text
    assert set(r.json()) >= {"error", "detail"}, r.text
    assert r.headers["content-type"].startswith("application/json")


async def test_other_methods_are_answered_by_fastapi_with_405() -> None:
    async with fake_broker().client() as client:
        r = await client.post("/links/not-a-token/dicom-web/studies")
    assert r.status_code == 405, r.text
