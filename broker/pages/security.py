"""Browser-facing protections: security headers on every answer, CSRF checks on every change.

Headers. Every response carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` (a link token in a viewer's URL never leaves in a Referer), ``frame-ancestors
'none'`` (and ``X-Frame-Options: DENY`` for old browsers), cross-origin isolation of windows and
resources, and a Content-Security-Policy. Pages set their own policy (:func:`page_csp`); anything
else (JSON, DICOM, images) gets one that allows nothing at all.

CSRF. SameSite=Lax cookies are not enough: a same-site sibling (another app on the hospital's
domain) can still post. So every state-changing request that a browser session authenticates
must prove it comes from our own origin: its Fetch Metadata (``Sec-Fetch-Site: same-origin``)
or, from a client that sends none, its ``Origin`` must name this origin; and the page forms
(open, break-glass, revoke, sign-out) also carry a per-session token (:func:`csrf_token`,
:func:`check_csrf`). Bearer callers are not browsers riding a cookie and are not checked.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_FIELD",
    "SecurityHeadersMiddleware",
    "check_csrf",
    "csrf_token",
    "origin_of",
    "page_csp",
]

CSRF_FIELD = "csrf"
_SESSION_KEY = "csrf"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Called by the IdP's back channel (no browser, no session), not by pages.
_EXEMPT = ("/auth/backchannel-logout",)
_NOTHING = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased, as browsers send it in ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def page_csp(
    *,
    form_targets: Iterable[str] = (),
    script_extra: Iterable[str] = (),
    style_extra: Iterable[str] = (),
) -> str:
    """A strict policy for our pages: only this origin, nothing inline unless named here.

    ``form_targets`` are the IdP origins a form's redirect chain may reach (sign-in, step-up
    and sign-out go through the IdP; Chromium applies ``form-action`` to redirects too).
    """
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", *script_extra],
        "style-src": ["'self'", *style_extra],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-src": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'", *sorted(set(form_targets))],
        "manifest-src": ["'self'"],
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use; lives and dies with the session)."""
    token = request.session.get(_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session[_SESSION_KEY] = token
    return token


def check_csrf(request: Request, submitted: object) -> bool:
    """Whether ``submitted`` is this session's CSRF token (constant-time comparison)."""
    expected = request.session.get(_SESSION_KEY)
    return (
        isinstance(expected, str)
        and isinstance(submitted, str)
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )


class SecurityHeadersMiddleware:
    """Adds the security headers, and refuses cross-site changes made with the session cookie."""

    def __init__(
        self, app: ASGIApp, *, public_url: str, session_cookie: str, hsts: bool = False
    ) -> None:
        self.app = app
        self._origin = origin_of(public_url)
        self._cookie = session_cookie
        self._hsts = hsts

    def _cross_site(self, scope: Scope) -> bool:
        connection = HTTPConnection(scope)
        if scope["method"] not in _UNSAFE or scope["path"] in _EXEMPT:
            return False
        if "authorization" in connection.headers or self._cookie not in connection.cookies:
            return False  # not riding on the browser session
        # Fetch Metadata first: the browser sets it and no page can forge it. Origin alone is
        # not enough: under Referrer-Policy no-referrer Chromium sends `Origin: null` even on a
        # form posted by our own page. Without Fetch Metadata (old browsers, other clients),
        # Origin must name this origin exactly ("null" is opaque and refused).
        site = connection.headers.get("sec-fetch-site")
        if site is not None:
            return site != "same-origin"
        origin = connection.headers.get("origin")
        return origin is not None and origin.lower() != self._origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _NOTHING)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
                headers.setdefault(
                    "Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"
                )
                if self._hsts:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        if self._cross_site(scope):
            response = JSONResponse(
                {"error": "forbidden", "detail": "Cross-site requests are not accepted."}, 403
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
