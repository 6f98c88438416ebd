"""The OpenAPI document: each route's own errors, each with the one error body.

Routes declare the errors they can answer with :func:`error_responses` (only those: a route
that cannot answer 410 does not say it might). The body is :class:`broker.errors.ErrorBody`,
the shape the error handlers emit.

FastAPI declares ``422 HTTPValidationError`` on every route that takes input; the broker answers
invalid input with ``400`` and its error body instead (``install_error_handlers``), so
:class:`BrokerAPI` drops those 422s and their schemas from the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from broker.errors import ErrorBody

__all__ = ["AUTHENTICATED", "BrokerAPI", "error_responses", "redirect_response"]

AUTHENTICATED: dict[str, Any] = {"security": [{"bearer": []}, {"session": []}]}
"""``openapi_extra`` of a route that authenticates its caller: a bearer token or the session."""

_DESCRIPTIONS = {
    400: "The request is malformed (``bad_request``: invalid fields are named).",
    401: (
        "No valid credentials (``invalid_token``, ``invalid_request``, ``invalid_dpop_proof``), "
        "or the policy wants a stronger or fresher login (``insufficient_user_authentication``, "
        "RFC 9470; ``login_url`` for a browser session). Always with a Bearer challenge."
    ),
    403: (
        "Not allowed: the policy's reason codes are in the detail, the link belongs to someone "
        "else, or a session-authenticated change came from another site."
    ),
    404: "Not found (also said of anything the caller must not learn exists).",
    410: "The link has expired or has been revoked.",
    429: (
        "Too many requests from this person (link issuance, redemption) or address (login): "
        "``rate_limited``; ``Retry-After`` says in how many seconds to try again."
    ),
    502: "The image archive answered badly or not at all.",
    503: (
        "A dependency needed to decide or record the request (policy, audit trail, identity "
        "provider) is unavailable; nothing was granted."
    ),
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "RFC 9110 section 10.2.3: seconds until the limit allows a request.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
_CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'RFC 6750 section 3: ``Bearer error="..."`` (RFC 9470: ``acr_values``, '
        "``max_age``).",
        "required": True,
        "schema": {"type": "string"},
    }
}


def error_responses(
    *statuses: int, also: Mapping[int | str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer, each with the error body;
    ``also``: the route's other answers (redirects, media types, bodies without content)."""
    responses: dict[int | str, dict[str, Any]] = dict(also or {})
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        if status == 401:
            response["headers"] = _CHALLENGE
        if status == 429:
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


def redirect_response(description: str) -> dict[str, Any]:
    """An OpenAPI response for a redirect (no body; the target in ``Location``)."""
    return {
        "description": description,
        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    }


class BrokerAPI(FastAPI):
    """FastAPI, whose document says 400 with the error body where FastAPI would say 422, and
    names the two ways to authenticate (:data:`AUTHENTICATED`)."""

    def __init__(self, *, session_cookie: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session_cookie = session_cookie

    def openapi(self) -> dict[str, Any]:
        """The document, built once (FastAPI caches it), without the validation 422s."""
        if self.openapi_schema is None:
            document = super().openapi()
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "session": {"type": "apiKey", "in": "cookie", "name": self._session_cookie},
            }
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            self.openapi_schema = document
        return self.openapi_schema
