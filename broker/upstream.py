"""HTTP transports for the services the broker calls (the PACS, the IdPs, OPA's health).

A pooled keep-alive connection can be closed by the server while it sits idle: Orthanc closes
idle connections after one second by default, and a request written onto such a connection at
that moment fails with "Server disconnected without sending a response" although the server is
fine. Browsers and urllib3 resend an idempotent request once on a fresh connection in that case;
these transports do the same, and only then: a request that may change state is never resent,
and a failure on the fresh connection is the caller's error as before.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["RetryStaleAsyncTransport", "RetryStaleTransport", "is_stale_connection"]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def is_stale_connection(request: httpx.Request, exc: Exception) -> bool:
    """Whether ``exc`` on ``request`` is a server gone before any byte of its answer.

    Only idempotent requests qualify; the transport raised before it returned a response, so
    nothing of an answer reached the caller.
    """
    if request.method not in _IDEMPOTENT:
        return False
    return isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


class RetryStaleAsyncTransport(httpx.AsyncBaseTransport):
    """An async transport that resends an idempotent request once after a stale connection."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            if not is_stale_connection(request, exc):
                raise
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class RetryStaleTransport(httpx.BaseTransport):
    """The same for synchronous clients (the audit consumers' PACS feed)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, **options: Any) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport(**options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._inner.handle_request(request)
        except httpx.TransportError as exc:
            if not is_stale_connection(request, exc):
                raise
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
