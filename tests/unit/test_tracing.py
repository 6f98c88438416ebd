"""Tracing: server spans by route, upstream spans with traceparent, events that carry it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from broker.audit.cloudevents import from_record, to_record
from broker.audit.events import AuditEvent, EventKind, Outcome
from broker.config import Settings, TracingSettings
from broker.tracing import (
    NO_FASTAPI_TELEMETRY,
    TracingMiddleware,
    TracingTransport,
    configure_tracing,
    current_traceparent,
    tracer,
)


@pytest.fixture(scope="module")
def module_exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    assert configure_tracing(TracingSettings(enabled=True), exporter)
    return exporter


@pytest.fixture
def exporter(module_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    module_exporter.clear()
    yield module_exporter
    module_exporter.clear()


def test_off_by_default() -> None:
    assert Settings(environment="development", audit_sink="log").tracing.enabled is False
    assert configure_tracing(TracingSettings()) is False


def test_no_traceparent_outside_a_span() -> None:
    assert current_traceparent() is None
    event = AuditEvent(kind=EventKind.DECISION, outcome=Outcome.ALLOW)
    assert event.traceparent is None
    _, _, headers = to_record(event, source="/t")
    assert "ce_traceparent" not in dict(headers)


def test_an_event_carries_its_span(exporter: InMemorySpanExporter) -> None:
    with tracer().start_as_current_span("work") as span:
        event = AuditEvent(kind=EventKind.DECISION, outcome=Outcome.ALLOW)
    context = span.get_span_context()
    assert event.traceparent is not None
    assert event.traceparent.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    _, value, headers = to_record(event, source="/t")
    assert dict(headers)["ce_traceparent"] == event.traceparent.encode()
    assert from_record(value, headers).traceparent == event.traceparent


def test_a_malformed_traceparent_is_refused() -> None:
    with pytest.raises(ValueError, match="traceparent"):
        AuditEvent(kind=EventKind.DECISION, outcome=Outcome.ALLOW, traceparent="00-xyz")


class TestMiddleware:
    def _app(self) -> FastAPI:
        app = FastAPI(telemetry=NO_FASTAPI_TELEMETRY)  # as create_app builds it

        @app.get("/links/{token}/studies")
        async def studies(token: str) -> dict[str, str]:
            with tracer().start_as_current_span("inner"):
                return {"ok": token[:2]}

        app.add_middleware(TracingMiddleware)
        return app

    async def test_span_named_by_route_template_never_the_path(
        self, exporter: InMemorySpanExporter
    ) -> None:
        transport = httpx.ASGITransport(app=self._app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/links/SECRET-TOKEN-abc/studies")
        assert r.status_code == 200, r.text
        spans = {s.name: s for s in exporter.get_finished_spans()}
        server = spans["GET /links/{token}/studies"]
        assert server.kind is SpanKind.SERVER
        assert server.attributes is not None
        assert server.attributes["http.response.status_code"] == 200
        assert "SECRET-TOKEN" not in repr(dict(server.attributes))
        assert spans["inner"].parent is not None
        assert spans["inner"].parent.span_id == server.context.span_id

    async def test_an_incoming_traceparent_is_joined(self, exporter: InMemorySpanExporter) -> None:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        transport = httpx.ASGITransport(app=self._app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/links/x/studies", headers={"traceparent": parent})
        [server] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert server.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


class TestTransport:
    async def test_client_span_and_traceparent_sent_on(
        self, exporter: InMemorySpanExporter
    ) -> None:
        seen: list[httpx.Request] = []

        def pacs(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(503)

        transport = TracingTransport(httpx.MockTransport(pacs))
        async with httpx.AsyncClient(transport=transport) as client:
            with tracer().start_as_current_span("request") as outer:
                r = await client.get("https://pacs.test/dicom-web/studies/1.2.3/metadata")
        assert r.status_code == 503
        [client_span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        assert client_span.name == "GET pacs.test"  # the host, not the path (study UIDs)
        assert client_span.attributes is not None
        assert client_span.attributes["server.port"] == 443
        assert client_span.attributes["http.response.status_code"] == 503
        assert not client_span.status.is_ok
        sent = seen[0].headers["traceparent"]
        trace_id = outer.get_span_context().trace_id
        assert sent.startswith(f"00-{trace_id:032x}-{client_span.context.span_id:016x}-")


async def test_fastapis_own_spans_are_off_in_the_app(exporter: InMemorySpanExporter) -> None:
    """A tracer provider is installed (this module's), yet the app's routes record nothing of
    their own: FastAPI's native spans would carry the raw path, link tokens included."""
    from tests.unit.fake_broker import fake_broker

    broker = fake_broker()
    async with broker.client() as client:
        r = await client.get("/links/SECRET-TOKEN-abc/dicom-web/studies")
    assert r.status_code < 500, r.text
    spans = exporter.get_finished_spans()
    assert not [s.name for s in spans if s.name.startswith("fastapi.")]
    assert not [s for s in spans if "SECRET-TOKEN" in repr(dict(s.attributes or {}))]
