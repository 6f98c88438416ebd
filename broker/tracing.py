"""OpenTelemetry traces of the request path, exported over OTLP (off by default).

One trace per request: the server span (:class:`TracingMiddleware`), the policy decision
(``broker/opa.py``), the audit write to Kafka (``broker/audit/kafka.py``) and every upstream HTTP
call, the PACS's and the IdPs' (:class:`TracingTransport`, which also sends ``traceparent``
on). Each audit event carries the W3C ``traceparent`` of the span it was recorded in
(:func:`current_traceparent`), on Kafka as the CloudEvents distributed-tracing extension's
``ce_traceparent`` header, so an auditor can go from a ledger entry to its trace.

Spans name routes by their template and hosts by name, never a path: paths hold link tokens
(capabilities) and study UIDs, which do not belong in a tracing backend. An incoming
``traceparent`` is honoured (W3C Trace Context), so a hospital's gateway can join the trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from broker.config import TracingSettings

__all__ = [
    "NO_FASTAPI_TELEMETRY",
    "TracingMiddleware",
    "TracingTransport",
    "configure_tracing",
    "current_traceparent",
    "tracer",
]

log = logging.getLogger("telerad.tracing")

TRACER_NAME = "telerad.broker"
# FastAPI (>= 0.16x) traces by itself once a tracer provider is installed, with the raw path
# and query as attributes: off, every part of it (``FastAPI(telemetry=...)``).
NO_FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def tracer() -> Tracer:
    """The broker's tracer (a no-op one until :func:`configure_tracing` has run)."""
    return trace.get_tracer(TRACER_NAME)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def configure_tracing(settings: TracingSettings, exporter: SpanExporter | None = None) -> bool:
    """Install the SDK's tracer provider with an OTLP/HTTP exporter (or ``exporter``, e.g. an
    in-memory one in tests); nothing when tracing is off. Returns whether tracing is on.

    The provider is process-wide (OpenTelemetry's global): a second app in the same process
    adds its exporter to the one already installed.
    """
    if not settings.enabled:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(
            endpoint=str(settings.otlp_endpoint), timeout=settings.export_timeout_seconds
        )
        provider.add_span_processor(BatchSpanProcessor(otlp))
    log.info("tracing on: spans to %s", "a test exporter" if exporter else settings.otlp_endpoint)
    return True


class TracingMiddleware:
    """A server span per HTTP request, named ``METHOD /route/{template}``."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        with tracer().start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:

            async def send_traced(message: _Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


class TracingTransport(httpx.AsyncBaseTransport):
    """A client span per upstream request (PACS, IdPs), ``traceparent`` sent along."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        with tracer().start_as_current_span(
            f"{request.method} {host}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "server.address": host,
                "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
            },
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            request.headers.update(carrier)
            response = await self._inner.handle_async_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
