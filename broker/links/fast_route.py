"""The link redemption route as a plain ASGI route, ahead of FastAPI's own.

``GET /links/{token}/dicom-web/{path}`` is what a viewer sends for every frame. FastAPI's route
(``broker.links.endpoints.redeem``) stays registered, for the OpenAPI document and its tests;
this route, placed first, matches the same requests and calls the same handler, without
FastAPI's per-request dependency solving, parameter validation and response wrapping (the
handler takes only the two path strings and the request, and returns a finished response).
Every check lives in the handler, so it is the same on both routes: token, expiry, revocation
set, path, the caller's credentials, binding, operation, rate limit, decision window. Errors are
raised as before and answered by the app's exception handlers in the project's error shape.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from broker.links.endpoints import REDEEM_PATH, redeem

__all__ = ["FastRedeemRoute"]


async def _redeem(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    params = scope["path_params"]
    response = await redeem(params["token"], params["path"], request)
    await response(scope, receive, send)


class FastRedeemRoute(Route):
    """``GET`` link redemption as a plain ASGI app (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(REDEEM_PATH, endpoint=_redeem, methods=["GET"], include_in_schema=False)
        self.app = _redeem  # not request_response(): the handler returns a whole response

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self  # span names use the template (broker.tracing)
        elif match is Match.PARTIAL:
            return Match.NONE, {}  # other methods: FastAPI's route answers them (405)
        return match, child
