"""What the app's lifespan opens, typed, and how handlers reach it."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from starlette.requests import HTTPConnection

from broker.audit import AuditSink
from broker.audit.kafka import TopicFollower
from broker.config import Settings
from broker.dicomweb.facts import StudyFactsSource
from broker.dicomweb.proxy import DicomwebProxy
from broker.fhir.records import ConsentStore
from broker.fingerprints import FingerprintIndex, ServedUnchecked
from broker.health import ReadinessChecker
from broker.identity._authlib import OAuth
from broker.identity.bearer import BearerValidator
from broker.identity.dpop import DpopVerifier
from broker.links.token import LinkCodec
from broker.links.transfers import TransferLog
from broker.links.window import DecisionWindows
from broker.metrics import Metrics
from broker.opa import OpaGateway
from broker.policy import PolicyEnforcer
from broker.ratelimits import RateLimits
from broker.revocation import Revocations
from broker.worklist import WorklistState

__all__ = ["AppState", "state_of"]


@dataclass
class AppState:
    """Clients and services shared by every request of one process."""

    settings: Settings
    http: httpx.AsyncClient
    opa: OpaGateway
    readiness: ReadinessChecker
    bearer: BearerValidator
    oauth: OAuth
    audit: AuditSink
    revocations: Revocations
    facts: StudyFactsSource
    enforcer: PolicyEnforcer
    links: LinkCodec
    proxy: DicomwebProxy
    metrics: Metrics
    dpop: DpopVerifier
    consents: ConsentStore
    windows: DecisionWindows
    transfers: TransferLog
    limits: RateLimits
    worklist: WorklistState = field(default_factory=WorklistState)  # the RIS's assignments
    worklist_listener: TopicFollower | None = None  # reads them from the worklist topic
    fingerprints: FingerprintIndex | None = None  # None: reads are not checked
    served_unchecked: ServedUnchecked | None = None


def state_of(connection: HTTPConnection) -> AppState:
    """The app state of the request's application."""
    state: AppState = connection.app.state.telerad
    return state
