"""The DICOMweb proxy's HTTP client to the PACS: one request, its answer read whole or in chunks.

Two implementations of one small interface (:class:`PacsClient`, :class:`PacsAnswer`):

- :class:`AiohttpPacsClient` is what the broker runs: aiohttp's C HTTP parser and its keep-alive
  pool cost less CPU per frame than httpx + h11 + anyio (bench/README.md, issue 12). It is built
  in the app's lifespan and closed at shutdown, never per request.
- :class:`HttpxPacsClient` wraps an ``httpx.AsyncClient`` (the unit tests' ``MockTransport``
  fakes, and any caller that already has a client).

Both keep the properties the relay relies on (``broker.upstream`` explains the first two):

- an idempotent request whose pooled keep-alive connection the PACS closed while it sat idle is
  sent again, once, on a fresh connection; any other request is never resent;
- every transport failure — refused or reset connection, timeout, a TLS alert after the
  handshake (a refused client certificate) — is a :class:`RelayError`, which the proxy answers
  with 502, never a 500;
- the caller's headers are sent as given (the proxy asks for ``identity``: no gzip round trip),
  and the body arrives as the PACS sent it, in large reads.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Protocol, Self

import aiohttp
import httpx
import yarl
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from broker.config import PacsSettings
from broker.tls import pacs_verify
from broker.tracing import tracer

__all__ = [
    "AiohttpPacsClient",
    "HttpxPacsClient",
    "PacsAnswer",
    "PacsClient",
    "RelayError",
]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_TIMEOUT = 60.0  # seconds between two reads of an answer (a large study is slow to start)
_CHUNK = 1024 * 1024  # bytes per read of a streamed answer
# Keep-alive connections kept open to the PACS: a viewer sends six requests at a time, a few
# viewers share a broker. Orthanc closes idle ones after 1 s; ours are dropped a little sooner.
_POOL = 64
_KEEPALIVE_SECONDS = 0.9
# what a transport failure may surface as (a TLS alert after the handshake: a bare SSLError)
_FAILURES = (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError)


class RelayError(Exception):
    """The PACS could not be reached, or broke off before or while answering."""


class PacsAnswer(Protocol):
    """An answer of the PACS whose body has not been read yet."""

    @property
    def status(self) -> int:
        """The HTTP status code."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers (case-insensitive keys)."""
        ...

    async def read(self) -> bytes:
        """The whole body; :class:`RelayError` if the PACS breaks off."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body in large pieces as they arrive; :class:`RelayError` if the PACS breaks off."""
        ...

    async def close(self) -> None:
        """Give the connection back to the pool (or close it when the body was not read)."""
        ...


class PacsClient(Protocol):
    """Sends one request to the PACS and returns its answer before the body is read."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        content: bytes | None = None,
    ) -> PacsAnswer:
        """Send ``method url``; :class:`RelayError` on any transport failure."""
        ...

    async def aclose(self) -> None:
        """Close the pool."""
        ...


class _AiohttpAnswer:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _FAILURES as exc:
            raise RelayError(_text(exc)) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except _FAILURES as exc:
            raise RelayError(_text(exc)) from exc

    async def close(self) -> None:
        # back to the pool once the body was read to its end; closed otherwise
        self._response.release()


class AiohttpPacsClient:
    """The PACS client on aiohttp, with the PACS's TLS settings (``broker.tls``).

    Use as an async context manager, or call :meth:`aclose`. ``traced``: a client span per
    request and ``traceparent`` sent along, as ``broker.tracing.TracingTransport`` does for
    httpx.
    """

    def __init__(self, pacs: PacsSettings, *, traced: bool = False) -> None:
        self._pacs = pacs
        self._traced = traced
        self._verify = pacs_verify(pacs)  # loads the CA bundle and client certificate now
        # Basic auth as one precomputed header (aiohttp's BasicAuth is deprecated)
        self._authorization = (
            "Basic "
            + base64.b64encode(
                f"{pacs.username}:{pacs.password.get_secret_value()}".encode()
            ).decode()
            if pacs.username and pacs.password
            else None
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=pacs.timeout_seconds,  # includes waiting for a pooled connection
            sock_connect=pacs.timeout_seconds,
            sock_read=_READ_TIMEOUT,
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=_POOL,
                keepalive_timeout=_KEEPALIVE_SECONDS,
                ssl=self._verify if self._verify is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                # the caller's headers only: no default Accept-Encoding or User-Agent added
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
        return self._session

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool's connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        content: bytes | None = None,
    ) -> PacsAnswer:
        """Send ``method url``; an idempotent request is resent once after a stale connection."""
        if self._traced:
            return await self._traced_send(method, url, headers, content)
        return await self._send(method, url, headers, content)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None
    ) -> PacsAnswer:
        try:
            return await self._attempt(method, url, headers, content)
        except RelayError as exc:
            if method not in _IDEMPOTENT or not _stale(exc):
                raise
        return await self._attempt(method, url, headers, content)

    async def _attempt(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None
    ) -> PacsAnswer:
        session = self._open()
        sent = dict(headers)
        if self._authorization is not None:
            sent["Authorization"] = self._authorization
        try:
            # encoded=True: the URL goes out as the proxy built it (``broker.dicomweb.proxy.
            # query_string``); yarl would escape ``^`` and ``\\``, which Orthanc reads literally
            response = await session.request(
                method,
                yarl.URL(url, encoded=True),
                headers=sent,
                data=content,
                allow_redirects=False,
            )
        except _FAILURES as exc:
            raise RelayError(_text(exc)) from exc
        return _AiohttpAnswer(response)

    async def _traced_send(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None
    ) -> PacsAnswer:
        target = httpx.URL(url)
        port = target.port or (443 if target.scheme == "https" else 80)
        with tracer().start_as_current_span(
            f"{method} {target.host}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": target.host,
                "server.port": port,
            },
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            answer = await self._send(method, url, {**headers, **carrier}, content)
            span.set_attribute("http.response.status_code", answer.status)
            if answer.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return answer


def _stale(exc: RelayError) -> bool:
    """A keep-alive connection the server had closed: nothing of an answer arrived."""
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class _HttpxAnswer:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise RelayError(_text(exc)) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise RelayError(_text(exc)) from exc

    async def close(self) -> None:
        await self._response.aclose()


class HttpxPacsClient:
    """The PACS client over an ``httpx.AsyncClient`` (its transport does the retry and TLS)."""

    def __init__(self, http: httpx.AsyncClient, pacs: PacsSettings) -> None:
        self._http = http
        self._timeout = httpx.Timeout(pacs.timeout_seconds, read=_READ_TIMEOUT)
        self._auth: tuple[str, str] | None = (
            (pacs.username, pacs.password.get_secret_value())
            if pacs.username and pacs.password
            else None
        )

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        content: bytes | None = None,
    ) -> PacsAnswer:
        """Send ``method url`` through the wrapped client."""
        request = self._http.build_request(
            method, url, headers=dict(headers), content=content, timeout=self._timeout
        )
        try:
            response = await self._http.send(
                request, auth=self._auth if self._auth else httpx.USE_CLIENT_DEFAULT, stream=True
            )
        except httpx.HTTPError as exc:
            raise RelayError(_text(exc)) from exc
        return _HttpxAnswer(response)

    async def aclose(self) -> None:
        """Nothing: the wrapped client belongs to its creator."""
        return None
