"""The whole broker app in-process, with fakes for everything it talks to (no network).

``create_app`` builds the real app (routes, error handlers, middleware); its lifespan, which
would open OPA, Kafka and the PACS, is not run. Its state is built here instead, from the real
services over fakes: the IdP and the PACS behind ``httpx.MockTransport``, OPA as a small policy
that decides by study, audit to a :class:`MemorySink`. Each fake can be told to fail.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.types import Receive, Scope, Send

from broker.app import create_app, link_keyring, session_keyring
from broker.audit import MemorySink
from broker.config import IssuerSettings, Settings
from broker.crypto import b64u_encode
from broker.dicomweb.facts import FactsCatalog, StudyFactsSource
from broker.dicomweb.proxy import DicomwebProxy
from broker.fhir.records import ConsentStore
from broker.health import CheckResult
from broker.identity._authlib import OAuth
from broker.identity.bearer import BearerValidator
from broker.identity.dpop import DpopVerifier
from broker.links.token import LinkCodec
from broker.links.transfers import TransferLog
from broker.links.window import DecisionWindows
from broker.metrics import Metrics
from broker.opa import Decision, Reason
from broker.policy import PolicyEnforcer
from broker.ratelimits import RateLimits
from broker.revocation import Revocations
from broker.state import AppState

ISS = "https://idp.test/realms/a"
PACS = "https://pacs.test/dicom-web"
PUBLIC = "https://broker.test"
# The policy reads READABLE (the OpenAPI document's example study), refuses DENIED, wants a
# step-up for STEP_UP; the PACS fails on BROKEN and has nothing else.
READABLE = "1.2.826.0.1.3680043.10.1119.1"
DENIED = "1.2.826.0.1.3680043.10.1119.2"
STEP_UP = "1.2.826.0.1.3680043.10.1119.3"
BROKEN = "1.2.826.0.1.3680043.10.1119.9"
KNOWN = (READABLE, DENIED, STEP_UP)
NOT_ACCEPTABLE = "application/x-nothing"  # an Accept the PACS answers 406
SESSION_KEY = b64u_encode(b"s" * 32)


class FakeIdp:
    """Discovery, JWKS, and token minting for one issuer."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.down = False
        self.login_claims: dict[str, Any] = {}  # what the token endpoint's access token carries

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("idp down", request=request)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "issuer": ISS,
                    "jwks_uri": f"{ISS}/certs",
                    "authorization_endpoint": f"{ISS}/auth",
                    "token_endpoint": f"{ISS}/token",
                    "end_session_endpoint": f"{ISS}/logout",
                },
            )
        if request.url.path.endswith("/certs"):
            return httpx.Response(200, json=KeySet([self.key]).as_dict(private=False))
        if request.url.path.endswith("/token") and request.method == "POST":
            token = self.token(**self.login_claims)
            return httpx.Response(200, json={"access_token": token, "token_type": "Bearer"})
        return httpx.Response(404)

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISS,
            "sub": "u-1",
            "aud": "telerad-broker",
            "exp": now + 600,
            "iat": now,
            "npi": "1000000001",
            "roles": ["radiologist"],
            "acr": "1",
        } | overrides
        header = {"alg": "RS256", "kid": "k1", "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=["RS256"])


class FakePacs:
    """The known studies (one answer for every path); 500 for :data:`BROKEN`, 406 if asked."""

    def __init__(self) -> None:
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("pacs down", request=request)
        below = request.url.path.split("/")[3:4]  # /dicom-web/studies/<uid>/...
        uid = request.url.params.get("StudyInstanceUID") or (below[0] if below else "")
        if uid == BROKEN:
            return httpx.Response(500)
        if request.headers.get("accept") == NOT_ACCEPTABLE:
            return httpx.Response(406)
        if uid not in KNOWN:
            return httpx.Response(204)
        study = {
            "0020000D": {"vr": "UI", "Value": [uid]},
            "00080080": {"vr": "LO", "Value": ["Hospital A"]},
            "00080061": {"vr": "CS", "Value": ["CT"]},
            "00100020": {"vr": "LO", "Value": ["P-1"]},
        }
        return httpx.Response(200, json=[study], headers={"content-type": "application/dicom+json"})


class FakeOpa:
    """The policy, by study: allow :data:`READABLE`, refuse :data:`DENIED`, step up the other."""

    def __init__(self) -> None:
        self.down = False

    async def decide(self, input_data: dict[str, Any]) -> Decision:
        if self.down:
            return Decision.deny("policy_unavailable", "The policy service could not be reached.")
        study = (input_data.get("resource") or {}).get("study_uid")
        if study == READABLE:
            obligations = {"link_ttl_seconds": 300, "operations": input_data["operations"]}
            return Decision(allow=True, obligations=obligations, decision_id="d-allow")
        if study == STEP_UP:
            return Decision(
                reasons=[Reason(code="step_up_required")],
                obligations={"step_up": {"acr": "2", "max_age": 300}},
                decision_id="d-step-up",
            )
        return Decision(reasons=[Reason(code="not_assigned")], decision_id="d-deny")

    async def check_ready(self) -> None:
        if self.down:
            raise ConnectionError("opa down")


@dataclass
class FakeReadiness:
    """Every check passes unless told otherwise."""

    ready: bool = True

    async def run(self) -> list[CheckResult]:
        return [CheckResult("opa", self.ready, "fake", 0.1)]


@dataclass
class FakeBroker:
    """The app and its fakes."""

    app: FastAPI
    state: AppState
    idp: FakeIdp
    pacs: FakePacs
    opa: FakeOpa
    audit: MemorySink
    readiness: FakeReadiness = field(default_factory=FakeReadiness)

    def bearer(self, **claims: Any) -> dict[str, str]:
        """An Authorization header with a valid token (claims overridable)."""
        return {"Authorization": f"Bearer {self.idp.token(**claims)}"}

    def session(self, sid: str = "sid-1", csrf: str | None = None) -> dict[str, str]:
        """A browser session cookie, signed in as the token's radiologist (with ``csrf`` as
        its pages' CSRF token, if given)."""
        now = int(time.time())
        principal = {"id": "npi:1000000001", "issuer": ISS, "subject": "u-1"}
        principal |= {"roles": ["radiologist"], "acr": "1", "auth_time": now}
        data: dict[str, object] = {"principal": principal}
        if csrf is not None:
            data["csrf"] = csrf
        stored = {"m": {"sid": sid, "created": now, "seen": now}, "d": data}
        ring = session_keyring(self.state.settings)
        sealed = ring.seal(json.dumps(stored).encode(), purpose="session")
        return {self.state.settings.identity.session_cookie: sealed}

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without its lifespan (the state is already built, from fakes)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await self.app(scope, receive, send)

    def client(self) -> httpx.AsyncClient:
        """A client for the app (no lifespan run: the state is already there)."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.asgi, client=("10.1.2.3", 50000)),
            base_url=PUBLIC,
        )


def fake_broker() -> FakeBroker:
    """The broker with every dependency faked; see the module docstring."""
    settings = Settings(
        environment="development",
        audit_sink="log",
        public_url=PUBLIC,
        identity={"session_keys": {"s1": SESSION_KEY}},
        pacs={"url": PACS},
        issuers=[
            IssuerSettings(
                name="hospital-a",
                issuer=ISS,
                algorithms=["RS256"],
                client_id="telerad-broker",
                client_secret="dev-secret",
            )
        ],
    )
    idp, pacs, opa, audit = FakeIdp(), FakePacs(), FakeOpa(), MemorySink()

    def route(request: httpx.Request) -> httpx.Response:
        return (pacs if request.url.host == "pacs.test" else idp).handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    oauth = OAuth()
    oauth.register(
        name="hospital-a",
        client_id="telerad-broker",
        client_secret="dev-secret",
        server_metadata_url=f"{ISS}/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid",
            "code_challenge_method": "S256",
            "transport": httpx.MockTransport(idp.handler),
        },
    )
    metrics = Metrics()
    bearer = BearerValidator(settings.identity, settings.issuers, http)
    readiness = FakeReadiness()
    state = AppState(
        settings=settings,
        http=http,
        opa=opa,
        readiness=readiness,
        bearer=bearer,
        oauth=oauth,
        audit=audit,
        revocations=Revocations(),
        facts=StudyFactsSource(
            settings.pacs,
            http,
            FactsCatalog(institutions={"Hospital A": "fac-a"}),
            pseudonym_key=b"k" * 32,
            ttl_seconds=0,
        ),
        enforcer=PolicyEnforcer(opa, audit, metrics),
        links=LinkCodec(link_keyring(settings)),
        proxy=DicomwebProxy(settings.pacs, http),
        metrics=metrics,
        dpop=DpopVerifier(),
        consents=ConsentStore(),
        windows=DecisionWindows(),
        transfers=TransferLog(audit),
        limits=RateLimits(settings.rate_limits),
    )
    app = create_app(settings, audit=audit)
    app.state.telerad = state
    return FakeBroker(app, state, idp, pacs, opa, audit, readiness)
