"""HTTP transports for the services the broker calls (the PACS, the IdPs, OPA's health).

A pooled keep-alive connection can be closed by the server while it sits idle: Orthanc closes
idle connections after one second by default, and a request written onto such a connection at
that moment fails with "Server disconnected without sending a response" although the server is
fine. Browsers and urllib3 resend an idempotent request once on a fresh connection in that case;
these transports do the same, and only then: a request that may change state is never resent,
and a failure on the fresh connection is the caller's error as before.

A TLS alert that arrives after the handshake (TLS 1.3: a server that requires a client
certificate says so only then) reaches httpx as a bare ``ssl.SSLError`` that httpcore does not
map; these transports raise it as ``httpx.ReadError``, so every caller's ``httpx.HTTPError``
handling applies (a refused client certificate is a 502, not a 500).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

__all__ = [
    "RetryStaleAsyncTransport",
    "RetryStaleTransport",
    "error_text",
    "is_stale_connection",
]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def error_text(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of ``exc``, or of the first cause that says something: httpcore's
    ``ReadError`` from a TLS alert is empty and the alert is two causes down."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).splitlines()[0] if str(seen) else ""
        if text:
            return f"{type(exc).__name__}: {text[:limit]}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: "


def is_stale_connection(request: httpx.Request, exc: Exception) -> bool:
    """Whether ``exc`` on ``request`` is a server gone before any byte of its answer.

    Only idempotent requests qualify; the transport raised before it returned a response, so
    nothing of an answer reached the caller.
    """
    if request.method not in _IDEMPOTENT:
        return False
    return isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


def _tls_read_error(request: httpx.Request, exc: ssl.SSLError) -> httpx.ReadError:
    error = httpx.ReadError(f"TLS: {exc}", request=request)
    error.__cause__ = exc
    return error


class _AsyncTlsMapped(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner, self._request = inner, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except ssl.SSLError as exc:
            raise _tls_read_error(self._request, exc) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TlsMapped(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request) -> None:
        self._inner, self._request = inner, request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except ssl.SSLError as exc:
            raise _tls_read_error(self._request, exc) from exc

    def close(self) -> None:
        self._inner.close()


class RetryStaleAsyncTransport(httpx.AsyncBaseTransport):
    """An async transport that resends an idempotent request once after a stale connection."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(**options)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except ssl.SSLError as exc:
            raise _tls_read_error(request, exc) from exc
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _AsyncTlsMapped(response.stream, request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._send(request)
        except httpx.TransportError as exc:
            if not is_stale_connection(request, exc):
                raise
        return await self._send(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class RetryStaleTransport(httpx.BaseTransport):
    """The same for synchronous clients (the audit consumers' PACS feed)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, **options: Any) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport(**options)

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._inner.handle_request(request)
        except ssl.SSLError as exc:
            raise _tls_read_error(request, exc) from exc
        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _TlsMapped(response.stream, request)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._send(request)
        except httpx.TransportError as exc:
            if not is_stale_connection(request, exc):
                raise
        return self._send(request)

    def close(self) -> None:
        self._inner.close()
