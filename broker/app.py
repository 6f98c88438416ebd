"""The app factory: settings in, a FastAPI app out, clients opened and closed by its lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import SecretStr

from broker import __version__
from broker.api import router as api_router
from broker.audit import AuditEvent, AuditSink, AuditUnavailable, EventKind, LogSink, Outcome
from broker.audit.kafka import KafkaAuditSink, TopicFollower, security_config
from broker.config import Settings, get_settings
from broker.crypto import KeyRing, b64u_decode
from broker.dicomweb.facts import FactsCatalog, StudyFactsSource
from broker.dicomweb.proxy import DicomwebProxy
from broker.dicomweb.relay import AiohttpPacsClient
from broker.errors import install_error_handlers
from broker.fhir.consent import router as fhir_router
from broker.fhir.records import ConsentStore
from broker.fingerprints import FingerprintIndex, ServedUnchecked
from broker.health import CheckReport, Readiness, ReadinessChecker
from broker.identity.bearer import BearerValidator
from broker.identity.dpop import DpopVerifier
from broker.identity.login import build_oauth
from broker.identity.login import router as auth_router
from broker.identity.sessions import EncryptedSessionMiddleware
from broker.links.endpoints import api_router as links_api_router
from broker.links.endpoints import redeem_router
from broker.links.fast_route import FastRedeemRoute
from broker.links.token import LinkCodec
from broker.links.transfers import TransferLog
from broker.links.window import DecisionWindows
from broker.logs import configure_logging
from broker.metrics import Metrics, metrics_server
from broker.opa import OpaGateway
from broker.openapi import BrokerAPI
from broker.ops_server import OpsServer
from broker.pages.routes import router as pages_router
from broker.pages.security import SecurityHeadersMiddleware
from broker.pages.viewer import OhifFiles
from broker.pages.viewer import router as viewer_router
from broker.policy import PolicyEnforcer
from broker.ratelimits import RateLimits
from broker.revocation import Revocations, apply_event
from broker.state import AppState, state_of
from broker.tls import pacs_async_transport, pacs_mount, pacs_verify
from broker.tracing import (
    NO_FASTAPI_TELEMETRY,
    TracingMiddleware,
    TracingTransport,
    configure_tracing,
)
from broker.upstream import RetryStaleAsyncTransport
from broker.worklist import WorklistState
from broker.worklist import from_record as worklist_record

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["create_app", "link_keyring", "session_keyring"]

log = logging.getLogger("telerad.app")


def _keyring(
    settings: Settings, keys: dict[str, SecretStr], active: str | None, variable: str
) -> KeyRing:
    """A key ring from settings; an ephemeral key only outside production."""
    if keys:
        raw = {kid: b64u_decode(value.get_secret_value()) for kid, value in keys.items()}
        return KeyRing(raw, active or sorted(raw)[-1])
    if settings.environment == "production":
        raise ValueError(f"{variable} is required in production")
    log.warning("no keys in %s: using an ephemeral key (gone at restart)", variable)
    return KeyRing.ephemeral()


def session_keyring(settings: Settings) -> KeyRing:
    """The session key ring."""
    identity = settings.identity
    return _keyring(
        settings,
        identity.session_keys,
        identity.session_active_key,
        "TELERAD_IDENTITY__SESSION_KEYS",
    )


def link_keyring(settings: Settings) -> KeyRing:
    """The study-link key ring."""
    return _keyring(settings, settings.links.keys, settings.links.active_key, "TELERAD_LINKS__KEYS")


# Events every replica must apply (they also go to the control topic).
_CONTROL = frozenset(
    {
        EventKind.REVOKED,
        EventKind.CONSENT_CHANGED,
        EventKind.ASSIGNMENT_CHANGED,
        EventKind.POLICY_REVISED,
    }
)


def _audit_sink(settings: Settings) -> AuditSink:
    if settings.audit_sink == "kafka":
        kafka = settings.kafka
        if kafka.security_protocol == "PLAINTEXT" and settings.environment == "production":
            raise ValueError(
                "TELERAD_KAFKA__SECURITY_PROTOCOL=PLAINTEXT is not allowed in production: "
                "anyone on the network could read the audit trail or forge control events"
            )
        return KafkaAuditSink(
            kafka.bootstrap_servers,
            kafka.audit_topic,
            source=f"/telerad-broker/{settings.instance_id}",
            ack_timeout_seconds=kafka.ack_timeout_seconds,
            extra_topics=lambda e: [kafka.revocation_topic] if e.kind in _CONTROL else [],
            client_config=security_config(kafka),
        )
    if settings.environment == "production":
        raise ValueError("TELERAD_AUDIT_SINK=log is not durable and not allowed in production")
    log.warning("audit events go to the log only (TELERAD_AUDIT_SINK=log): nothing is durable")
    return LogSink()


def _check_pacs_transport(settings: Settings) -> None:
    """Refuse plain HTTP to the PACS in production, and unreadable TLS files anywhere."""
    if settings.pacs.plaintext and settings.environment == "production":
        raise ValueError(
            "TELERAD_PACS__URL is http:// and not allowed in production: images and patient "
            "data would cross the network unencrypted and the PACS would be unauthenticated"
        )
    pacs_verify(settings.pacs)  # loads the CA bundle and client certificate now, not mid-request


def _state(app: FastAPI) -> AppState:
    state: AppState = app.state.telerad
    return state


def _pseudonym_key(settings: Settings) -> bytes:
    if settings.pseudonym_key is not None:
        return b64u_decode(settings.pseudonym_key.get_secret_value())
    if settings.environment == "production":
        raise ValueError("TELERAD_PSEUDONYM_KEY is required in production")
    return os.urandom(32)


async def _watch_policy_revision(state: AppState) -> None:
    """Ask the sidecar for its policy revision now and then; a new one ends every window here
    and is announced on the control topic so that every replica ends its windows too."""
    while True:
        await asyncio.sleep(state.settings.opa.revision_poll_seconds)
        revision = await state.opa.revision()
        previous = state.enforcer.policy_revision
        if revision is None or revision == previous:
            continue
        state.enforcer.policy_revision = revision
        if previous is None:
            continue  # the first revision seen: nothing was decided under another one here
        log.info("policy revision %s → %s: decision windows end", previous, revision)
        state.revocations.changed("policy", revision)
        try:
            await state.audit.emit(
                AuditEvent(
                    kind=EventKind.POLICY_REVISED,
                    outcome=Outcome.SUCCESS,
                    policy_revision=revision,
                    detail={"previous": previous},
                )
            )
        except AuditUnavailable:
            log.warning("policy.revised not published; other replicas learn it themselves")


def create_app(
    settings: Settings | None = None,
    *,
    audit: AuditSink | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the broker application (``span_exporter``: where spans go instead of OTLP, when
    ``settings.tracing.enabled``; tests pass an in-memory one)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    tracing = configure_tracing(settings.tracing, span_exporter)
    revocations = Revocations()
    consents = ConsentStore()
    pseudonym_key = _pseudonym_key(settings)
    links = LinkCodec(link_keyring(settings))
    metrics = Metrics()
    _check_pacs_transport(settings)
    audit_sink: AuditSink = audit or _audit_sink(settings)
    windows = DecisionWindows()
    revocations.add_listener(windows.on_change)
    worklist = WorklistState()
    # a study's assignment changed: its decision windows end here (a listener of revocations)
    worklist.add_listener(lambda study_uid: revocations.changed("assignment", study_uid))

    def apply_control(event: AuditEvent) -> bool:
        # The study facts (and recorded Consents) first: a window that ends on a consent change
        # must not be reopened by a decision still made on the old consent.
        applied = _state(app).facts.apply_event(event)
        if consents.apply_event(event):
            # a patient's Consent: which studies are the patient's is not kept with the
            # windows, so every window ends (the next request decides again)
            revocations.changed("consent_patient", str(event.detail.get("patient")))
            applied = True
        return apply_event(revocations, event) or applied

    listener = (
        TopicFollower(
            settings.kafka.bootstrap_servers,
            settings.kafka.revocation_topic,
            apply_control,
            instance=settings.instance_id,
            client_config=security_config(settings.kafka),
        )
        if isinstance(audit_sink, KafkaAuditSink)
        else None
    )
    # The RIS's worklist comes from Kafka whenever the broker is configured for Kafka (also with
    # an audit sink handed in, as the tests do); only the RIS's principal may write the topic.
    worklist_listener = (
        TopicFollower(
            settings.kafka.bootstrap_servers,
            settings.kafka.worklist_topic,
            worklist.apply,
            instance=settings.instance_id,
            client_config=security_config(settings.kafka),
            decode=worklist_record,
            label="worklist topic",
        )
        if settings.audit_sink == "kafka" and settings.kafka.worklist_topic
        else None
    )
    # Every replica reads the fingerprint topic whole into memory (broker.fingerprints) and is
    # ready only once it has: no read is checked against a partial index.
    fingerprints = (
        FingerprintIndex(settings.integrity.index_mib * 1024 * 1024)
        if listener is not None and settings.integrity.check_reads
        else None
    )
    fingerprint_listener = (
        TopicFollower(
            settings.kafka.bootstrap_servers,
            settings.kafka.fingerprint_topic,
            fingerprints.apply,
            instance=settings.instance_id,
            client_config=security_config(settings.kafka),
            name="fingerprints",
            label="fingerprints topic",
        )
        if fingerprints is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        transport: httpx.AsyncBaseTransport = RetryStaleAsyncTransport()
        # requests to the PACS's origin go through its TLS (CA bundle, client certificate)
        pacs_transport: httpx.AsyncBaseTransport = pacs_async_transport(settings.pacs)
        if tracing:  # PACS and IdP calls: spans, traceparent
            transport = TracingTransport(transport)
            pacs_transport = TracingTransport(pacs_transport)
        async with (
            httpx.AsyncClient(
                timeout=settings.readiness_timeout_seconds,
                transport=transport,
                mounts={pacs_mount(settings.pacs): pacs_transport},
            ) as http,
            AiohttpPacsClient(settings.pacs, traced=tracing) as relay,
        ):
            # the relay's own client to the PACS (aiohttp: C parser, its own keep-alive pool);
            # the facts, the IdPs and the health checks stay on ``http``
            opa = OpaGateway(settings.opa)
            await opa.open()
            if isinstance(audit_sink, KafkaAuditSink):
                await audit_sink.start()
            watcher: asyncio.Task[None] | None = None
            exposition: OpsServer | None = None
            transfers = TransferLog(audit_sink, flush_seconds=settings.links.transfer_flush_seconds)
            try:
                exposition = metrics_server(settings, metrics)
                app.state.metrics_server = exposition  # its port, for tests that scrape it
                bearer = BearerValidator(settings.identity, settings.issuers, http)
                app.state.telerad = AppState(
                    settings=settings,
                    http=http,
                    opa=opa,
                    readiness=ReadinessChecker(
                        settings,
                        http,
                        opa,
                        bearer,
                        listener,
                        fingerprint_listener,
                        worklist=worklist_listener,
                    ),
                    bearer=bearer,
                    oauth=build_oauth(settings.issuers, settings.identity.scopes),
                    audit=audit_sink,
                    revocations=revocations,
                    facts=StudyFactsSource(
                        settings.pacs,
                        http,
                        FactsCatalog.load(settings.facts_file),
                        pseudonym_key=pseudonym_key,
                        ttl_seconds=settings.facts_ttl_seconds,
                        patient_consent=consents.effect_for,
                    ),
                    enforcer=PolicyEnforcer(opa, audit_sink, metrics, worklist),
                    links=links,
                    proxy=DicomwebProxy(settings.pacs, relay),
                    metrics=metrics,
                    dpop=DpopVerifier(),
                    consents=consents,
                    windows=windows,
                    transfers=transfers,
                    worklist=worklist,
                    worklist_listener=worklist_listener,
                    limits=RateLimits(settings.rate_limits),
                    fingerprints=fingerprints,
                    served_unchecked=ServedUnchecked() if fingerprints is not None else None,
                )
                transfers.start()
                if listener is not None:
                    listener.start()  # after the state it applies events to exists
                if worklist_listener is not None:
                    worklist_listener.start()
                if fingerprint_listener is not None:
                    fingerprint_listener.start()
                watcher = asyncio.create_task(_watch_policy_revision(_state(app)))
                yield
            finally:
                if watcher is not None:
                    watcher.cancel()
                await transfers.close()  # the last second of transfer records, before the sink
                if listener is not None:
                    await asyncio.to_thread(listener.stop)
                if worklist_listener is not None:
                    await asyncio.to_thread(worklist_listener.stop)
                if fingerprint_listener is not None:
                    await asyncio.to_thread(fingerprint_listener.stop)
                await opa.close()
                await audit_sink.close()
                if exposition is not None:
                    exposition.stop()

    app = BrokerAPI(
        title="telerad-broker",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        session_cookie=settings.identity.session_cookie,
        # FastAPI's own OpenTelemetry spans are off: they record the raw path (link tokens,
        # study UIDs) and the query, and log validation failures with their input values.
        # broker/tracing.py names spans by route template only.
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(
        EncryptedSessionMiddleware,
        keyring=session_keyring(settings),
        revocations=revocations,
        cookie_name=settings.identity.session_cookie,
        secure=settings.identity.session_cookie_secure,
        idle_seconds=settings.identity.session_idle_seconds,
        absolute_seconds=settings.identity.session_absolute_seconds,
    )
    app.add_middleware(
        SecurityHeadersMiddleware,
        public_url=str(settings.public_url),
        session_cookie=settings.identity.session_cookie,
        hsts=str(settings.public_url).startswith("https://"),
    )
    if tracing:
        app.add_middleware(TracingMiddleware)  # outermost: the server span covers the rest
    app.include_router(pages_router)
    app.mount(
        "/_broker/static",
        StaticFiles(directory=Path(__file__).parent / "pages" / "static"),
        name="broker-static",
    )
    app.include_router(viewer_router)
    app.include_router(auth_router)
    app.include_router(api_router)
    app.include_router(links_api_router)
    app.include_router(redeem_router)
    # First of all routes: the same redemption handler as a plain ASGI route (every frame of a
    # viewer comes this way); FastAPI's route above stays for the OpenAPI document.
    app.router.routes.insert(0, FastRedeemRoute())
    app.include_router(fhir_router)

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Every dependency is reachable",
        responses={
            200: {"model": Readiness, "description": "Every dependency is reachable."},
            503: {"model": Readiness, "description": "At least one dependency is not."},
        },
    )
    async def readyz(request: Request) -> JSONResponse:
        results = await state_of(request).readiness.run()
        ready = all(r.ready for r in results)
        body = Readiness(
            status="ready" if ready else "unready",
            checks={
                r.name: CheckReport(ready=r.ready, detail=r.detail, latency_ms=r.latency_ms)
                for r in results
            },
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    if settings.viewer_dir is not None:
        app.mount("/", OhifFiles(settings.viewer_dir), name="viewer")  # last: only unmatched paths
    return app
