"""The broker's one error root, and how each error becomes an HTTP answer.

TeleradError                      500 internal_error (never carries internals to the client)
├── BadRequest                    400 bad_request
├── Unauthenticated               401 invalid_token (with WWW-Authenticate)
├── Forbidden                     403 forbidden
├── NotFound                      404 not_found
├── Gone                          410 gone
├── RateLimited                   429 rate_limited (with Retry-After)
├── DependencyUnavailable         503 dependency_unavailable
└── UpstreamError                 502 bad_gateway
    └── IntegrityViolation        502 integrity_violation
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.upstream import error_text

__all__ = [
    "BadRequest",
    "DependencyUnavailable",
    "ErrorBody",
    "Forbidden",
    "Gone",
    "IntegrityViolation",
    "NotFound",
    "RateLimited",
    "StepUpRequired",
    "TeleradError",
    "Unauthenticated",
    "UpstreamError",
    "install_error_handlers",
]

log = logging.getLogger("telerad.errors")


class TeleradError(Exception):
    """Root of every error the broker raises on purpose."""

    status_code = 500
    code = "internal_error"
    message = "The broker could not complete the request."

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message or self.message)
        self.detail = message or self.message
        self.headers = headers or {}


class BadRequest(TeleradError):
    """The request is malformed."""

    status_code, code, message = 400, "bad_request", "The request is malformed."


class Unauthenticated(TeleradError):
    """No valid credentials; answered with a Bearer challenge (RFC 6750 section 3)."""

    status_code, code, message = 401, "invalid_token", "Authentication is required."

    def __init__(self, message: str | None = None, *, error: str = "invalid_token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer error="{error}"'})
        self.code = error


class StepUpRequired(Unauthenticated):
    """The policy wants a stronger or fresher authentication (RFC 9470 section 3)."""

    def __init__(self, acr: str | None, max_age: int | None, login_url: str | None = None) -> None:
        super().__init__(
            "A stronger or more recent authentication is required.",
            error="insufficient_user_authentication",
        )
        challenge = 'Bearer error="insufficient_user_authentication"'
        if acr:
            challenge += f', acr_values="{acr}"'
        if max_age is not None:
            challenge += f', max_age="{max_age}"'
        self.headers = {"WWW-Authenticate": challenge}
        self.login_url = login_url


class Forbidden(TeleradError):
    """Authenticated, but the policy does not allow it (``reasons``: the policy's codes)."""

    status_code, code, message = 403, "forbidden", "Access is not allowed."

    def __init__(self, message: str | None = None, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class NotFound(TeleradError):
    """Nothing here (also said of anything the caller must not learn exists)."""

    status_code, code, message = 404, "not_found", "Not found."


class Gone(TeleradError):
    """It existed and has expired."""

    status_code, code, message = 410, "gone", "This link has expired."


class RateLimited(TeleradError):
    """Too many requests from one person or address (``scope``: which limit); retry later."""

    status_code, code, message = 429, "rate_limited", "Too many requests; please slow down."

    def __init__(self, scope: str, retry_after: str) -> None:
        super().__init__(
            f"Too many requests ({scope}); try again in {retry_after} s.",
            headers={"Retry-After": retry_after},
        )
        self.scope = scope
        self.retry_after = retry_after


class DependencyUnavailable(TeleradError):
    """A dependency needed to decide or record the request is unavailable: fail closed."""

    status_code, code, message = 503, "dependency_unavailable", "Temporarily unavailable."


class UpstreamError(TeleradError):
    """The PACS answered badly or not at all."""

    status_code, code, message = 502, "bad_gateway", "The image archive is unavailable."


class IntegrityViolation(UpstreamError):
    """The PACS served bytes that do not match the instance's fingerprint; none were relayed."""

    status_code, code = 502, "integrity_violation"
    message = "The image archive served data that failed its integrity check."


class ErrorBody(BaseModel):
    """The one JSON body every error answers with (``login_url`` only on a session's step-up)."""

    model_config = ConfigDict(extra="forbid")
    error: Annotated[str, Field(description="A stable code.", examples=["invalid_token"])]
    detail: Annotated[str, Field(description="What happened, in a sentence for people.")]
    login_url: Annotated[
        str | None,
        Field(
            description="Where a browser session steps up (401 insufficient_user_authentication)."
        ),
    ] = None


def _body(code: str, detail: str, login_url: str | None = None) -> dict[str, str]:
    body = ErrorBody(error=code, detail=detail, login_url=login_url)
    return body.model_dump(exclude_none=True)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to one JSON shape; nothing internal reaches the client."""

    async def telerad_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TeleradError)
        if (
            isinstance(exc, StepUpRequired)
            and exc.login_url
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
        ):
            return RedirectResponse(exc.login_url, status_code=303)  # a browser: back to the IdP
        if isinstance(exc, UpstreamError) and exc.__cause__ is not None:
            # for the operator, one line, no stack trace (e.g. the PACS's certificate refused);
            # the client gets the generic answer only
            log.warning("PACS unavailable: %s", error_text(exc.__cause__, 300))
        login_url = exc.login_url if isinstance(exc, StepUpRequired) else None
        body = _body(exc.code, exc.detail, login_url or None)
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = sorted({".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()})
        return JSONResponse(_body("bad_request", f"Invalid fields: {', '.join(fields)}"), 400)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(_body(TeleradError.code, TeleradError.message), 500)

    app.add_exception_handler(TeleradError, telerad_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
