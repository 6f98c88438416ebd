"""Browser sessions in an encrypted cookie (AES-256-GCM), with idle and absolute lifetimes.

The cookie is sealed under the session key ring (:mod:`broker.crypto`), so the browser can read
nothing in it; it carries our session id, its start and last-seen times, and the session data
(the authenticated principal, and authlib's login state while a login is under way). It is
``HttpOnly``, ``SameSite=Lax`` (the IdP's redirect back is a top-level GET) and ``Secure``.
A session is revoked by id (logout) or by its IdP session (back-channel logout).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.crypto import KeyRing, SealError
from broker.revocation import RevocationKind, Revocations

__all__ = ["SESSION_META", "EncryptedSessionMiddleware", "session_fits"]

SESSION_META = "_telerad"  # scope key holding {"sid", "created", "seen"}
_FITS = "_telerad_session_fits"  # scope key: can this session data be sealed into the cookie?
log = logging.getLogger("telerad.sessions")


def session_fits(scope: Scope) -> bool:
    """Whether the request's session data, as it is now, fits in the session cookie."""
    check = scope.get(_FITS)
    return bool(check(scope["session"])) if check is not None else True


_MAX_COOKIE = 3800  # bytes; browsers keep 4096 per cookie, headers included
_TOUCH_EVERY = 60  # seconds between cookie refreshes that only move "seen"


class EncryptedSessionMiddleware:
    """Gives ``request.session`` (a dict) backed by a sealed cookie; drops dead sessions."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: KeyRing,
        revocations: Revocations,
        cookie_name: str,
        secure: bool,
        idle_seconds: int,
        absolute_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self._ring = keyring
        self._revocations = revocations
        self._cookie = cookie_name
        self._secure = secure
        self._idle = idle_seconds
        self._absolute = absolute_seconds
        self._clock = clock

    def _load(self, raw: str | None, now: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if not raw:
            return {}, None
        try:
            stored = json.loads(self._ring.open(raw, purpose="session"))
        except (SealError, ValueError):
            return {}, None
        meta, data = stored.get("m"), stored.get("d")
        if not isinstance(meta, dict) or not isinstance(data, dict):
            return {}, None
        created, seen, sid = meta.get("created"), meta.get("seen"), meta.get("sid")
        if not isinstance(created, int | float) or not isinstance(seen, int | float):
            return {}, None
        if now - created > self._absolute or now - seen > self._idle:
            return {}, None
        if self._revocations.is_revoked(RevocationKind.SESSION, sid):
            return {}, None
        idp_sid = (
            data.get("principal", {}).get("idp_session_id")
            if isinstance(data.get("principal"), dict)
            else None
        )
        if self._revocations.is_revoked(RevocationKind.IDP_SESSION, idp_sid):
            return {}, None
        return data, meta

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        now = self._clock()
        connection = HTTPConnection(scope)
        had_cookie = self._cookie in connection.cookies
        data, meta = self._load(connection.cookies.get(self._cookie), now)
        before = json.dumps(data, sort_keys=True)
        scope["session"] = data
        scope[SESSION_META] = meta
        scope[_FITS] = self._fits

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._set_cookie(message, scope, before, had_cookie, now)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _set_cookie(
        self, message: Message, scope: Scope, before: str, had_cookie: bool, now: float
    ) -> None:
        data: dict[str, Any] = scope["session"]
        meta: dict[str, Any] | None = scope.get(SESSION_META)
        headers = MutableHeaders(scope=message)
        if not data:
            if had_cookie:
                headers.append("Set-Cookie", self._cookie_header("", max_age=0))
            return
        changed = json.dumps(data, sort_keys=True) != before
        if meta is None or meta.get("rotate"):
            meta = {"sid": secrets.token_urlsafe(16), "created": int(now), "seen": int(now)}
            scope[SESSION_META] = meta
        elif not changed and now - meta["seen"] < _TOUCH_EVERY:
            return
        meta = {k: meta[k] for k in ("sid", "created")} | {"seen": int(now)}
        sealed = self._seal(meta, data)
        if len(sealed) > _MAX_COOKIE:
            # the routes that fill a session check first (session_fits); never a broken answer
            log.error("session data too large for a cookie: the session is not kept")
            if had_cookie:
                headers.append("Set-Cookie", self._cookie_header("", max_age=0))
            return
        remaining = int(meta["created"] + self._absolute - now)
        headers.append("Set-Cookie", self._cookie_header(sealed, max_age=max(remaining, 0)))

    def _seal(self, meta: dict[str, Any], data: dict[str, Any]) -> str:
        return self._ring.seal(json.dumps({"m": meta, "d": data}).encode(), purpose="session")

    def _fits(self, data: dict[str, Any]) -> bool:
        probe = {"sid": "x" * 22, "created": int(self._clock()), "seen": int(self._clock())}
        return len(self._seal(probe, data)) <= _MAX_COOKIE

    def _cookie_header(self, value: str, *, max_age: int) -> str:
        parts = [
            f"{self._cookie}={value}",
            "Path=/",
            f"Max-Age={max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if self._secure:
            parts.append("Secure")
        return "; ".join(parts)
