"""The broker's one ``Settings`` object, read from ``TELERAD_*`` environment variables.

Nested values use ``__`` (``TELERAD_PACS__URL``); lists and objects may be given as JSON
(``TELERAD_ISSUERS='[{"issuer": "...", "audiences": ["telerad-broker"]}]'``). Secrets are
``SecretStr`` and may also be mounted as files under ``TELERAD_SECRETS_DIR`` (Kubernetes secrets).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ClaimMapping",
    "ClientTlsSettings",
    "IdentitySettings",
    "IntegritySettings",
    "IssuerSettings",
    "KafkaSettings",
    "LinkSettings",
    "OpaSettings",
    "PacsSettings",
    "RateLimitSettings",
    "Settings",
    "StreamSettings",
    "TracingSettings",
    "check_environment",
    "get_settings",
]

# Asymmetric JWS algorithms only: never "none", never HMAC (a public key must not be an HMAC key).
_SAFE_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClaimMapping(_Section):
    """Where one issuer keeps what the policy needs (dotted paths into the token's claims)."""

    subject_id: str = "npi"  # the radiologist identifier the policy's data is keyed by
    subject_id_prefix: str = "npi:"
    roles: str = "roles"  # e.g. "realm_access.roles" for a stock Keycloak realm
    licenses: str = "licenses"
    privileges: str = "facility_privileges"
    group: str = "group"


class IssuerSettings(_Section):
    """One trusted identity provider (a hospital's or a reading group's)."""

    name: str | None = None  # short label for login links (e.g. "hospital-a")
    issuer: AnyHttpUrl
    audiences: list[str] = Field(default_factory=lambda: ["telerad-broker"], min_length=1)
    # JWS algorithms accepted from this issuer; never "none", never HMAC with a public key.
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    client_id: str | None = None  # set for issuers that browsers log in through
    client_secret: SecretStr | None = None
    claims: ClaimMapping = ClaimMapping()
    # "jwt": verify signatures locally (JWKS). "introspection": ask the IdP (RFC 7662) for every
    # new token, e.g. for opaque tokens; answers are reused for introspection_cache_seconds.
    validation: Literal["jwt", "introspection"] = "jwt"

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: list[str]) -> list[str]:
        unsafe = set(value) - _SAFE_ALGORITHMS
        if unsafe or not value:
            raise ValueError(f"algorithms must be non-empty and among {sorted(_SAFE_ALGORITHMS)}")
        return value

    @property
    def label(self) -> str:
        return self.name or str(self.issuer).rstrip("/").rsplit("/", 1)[-1]


class IdentitySettings(_Section):
    """Bearer-token validation and browser sessions."""

    leeway_seconds: Annotated[int, Field(ge=0, le=120)] = 30  # exp/nbf/iat clock skew
    max_token_bytes: Annotated[int, Field(ge=512, le=65536)] = 8192
    token_cache_size: Annotated[int, Field(ge=0)] = 10000  # validated tokens kept until exp
    introspection_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 30.0
    jwks_min_refresh_seconds: Annotated[float, Field(ge=0)] = 30.0  # unknown-kid refresh limit
    jwks_max_age_seconds: Annotated[float, Field(gt=0)] = 3600.0
    session_idle_seconds: Annotated[int, Field(gt=0)] = 900  # 15 minutes without a request
    session_absolute_seconds: Annotated[int, Field(gt=0)] = 8 * 3600  # one reading shift
    session_cookie: str = "telerad_session"
    # Secure cookies need HTTPS; only the plain-HTTP loopback dev stack turns this off.
    session_cookie_secure: bool = True
    # AES-256 keys (base64url, 32 bytes) by key id; the active one seals, all open.
    session_keys: dict[str, SecretStr] = Field(default_factory=dict)
    session_active_key: str | None = None
    scopes: str = "openid profile"


class LinkSettings(_Section):
    """Study-link sealing keys: AES-256 (base64url, 32 bytes) by key id; the active one seals."""

    keys: dict[str, SecretStr] = Field(default_factory=dict)
    active_key: str | None = None
    # Reads inside a decision window are aggregated and written at least this often (seconds);
    # a crash loses at most this much per-instance detail, never a grant.
    transfer_flush_seconds: Annotated[float, Field(gt=0, le=5)] = 1.0


class OpaSettings(_Section):
    """The OPA sidecar that decides every request."""

    url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8181")
    decision_path: str = "telerad/access/decision"
    timeout_seconds: Annotated[float, Field(gt=0, le=10)] = 0.5
    # How often each replica asks its sidecar which policy revision it serves; a new one ends
    # every decision window here and is announced on the control topic (policy.revised).
    revision_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0


class KafkaSettings(_Section):
    """The Kafka cluster that carries the audit stream, and how every client authenticates to it.

    ``SASL_SSL`` (the default) is TLS with a SCRAM user (a Strimzi ``KafkaUser`` with
    ``authentication: scram-sha-512``); ``SSL`` with ``ssl_cert_file``/``ssl_key_file`` is mutual
    TLS; ``PLAINTEXT`` is for a loopback dev cluster only and refused in production. The server's
    certificate is always verified against ``ssl_ca_file`` (or the system's trust store), host
    name included. Secrets may be given inline (``SecretStr``) or as mounted files.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    audit_topic: str = "telerad.audit.v1"
    # The control topic: revoked and consent.changed events, applied by every replica.
    revocation_topic: str = "telerad.revocations.v1"
    # The RIS's worklist (compacted, keyed by study; only the RIS's principal writes it): every
    # replica keeps the current assignments from it. Empty: no worklist, so no study is
    # explicitly assigned (the policy then allows only by group coverage or break-glass).
    worklist_topic: str = "telerad.worklist.v1"
    # Instance fingerprints (compacted, keyed by SOP Instance UID): written by
    # ``telerad integrity watch``, read by every replica to check what links relay.
    fingerprint_topic: str = "telerad.fingerprints.v1"
    ack_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0  # then the request is 503
    security_protocol: Literal["SASL_SSL", "SSL", "PLAINTEXT"] = "SASL_SSL"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # a mounted secret (Strimzi: the KafkaUser's password)
    ssl_ca_file: Path | None = None  # PEM bundle of the cluster's CA; None: the system's store
    ssl_cert_file: Path | None = None  # client certificate chain, PEM (mutual TLS)
    ssl_key_file: Path | None = None  # its private key, PEM
    ssl_key_password: SecretStr | None = None  # when the key file is encrypted
    # Topics (``telerad kafka topics``) and the floor production readiness holds the audit
    # topic to: fewer replicas than this, and acks=all promises less than it says.
    replication_factor: Annotated[int, Field(ge=1)] = 3
    min_insync_replicas: Annotated[int, Field(ge=1)] = 2
    partitions: Annotated[int, Field(ge=1)] = 6
    audit_retention_days: Annotated[int, Field(ge=-1)] = 2557  # ~7 years; -1 keeps for ever

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas cannot exceed replication_factor")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (mutual TLS)")
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("give sasl_password or sasl_password_file, not both")
        return self


class ClientTlsSettings(_Section):
    """How a TLS client verifies its server and, optionally, proves who it is (mutual TLS).

    The server's certificate is always verified, host name included: against ``ca_file`` (a PEM
    bundle, e.g. a mounted Secret) or, without it, the system's trust store. ``cert_file`` and
    ``key_file`` (PEM) go together and are presented when the server asks for a client
    certificate. Built into an ``ssl.SSLContext`` by :func:`broker.tls.client_ssl_context`.
    """

    ca_file: Path | None = None  # PEM bundle of the CA(s) the server's certificate chains to
    cert_file: Path | None = None  # client certificate chain, PEM (mutual TLS)
    key_file: Path | None = None  # its private key, PEM
    key_password: SecretStr | None = None  # when the key file is encrypted

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password without key_file")
        return self

    @property
    def configured(self) -> bool:
        """Whether anything differs from "system trust store, no client certificate"."""
        return self.ca_file is not None or self.cert_file is not None


class PacsSettings(_Section):
    """The PACS's DICOMweb service (Orthanc's plugin in dev), over HTTPS.

    ``https://`` URLs are verified with ``tls`` (CA bundle, optional client certificate).
    ``http://`` is for a loopback dev PACS only and refused in production, like PLAINTEXT Kafka.
    """

    url: AnyHttpUrl = AnyHttpUrl("https://127.0.0.1:8042/dicom-web")
    username: str | None = None
    password: SecretStr | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    tls: ClientTlsSettings = ClientTlsSettings()

    @model_validator(mode="after")
    def _tls_needs_https(self) -> PacsSettings:
        if self.url.scheme != "https" and self.tls.configured:
            raise ValueError("pacs.tls is set but pacs.url is not https:// (nothing would use it)")
        return self

    @property
    def plaintext(self) -> bool:
        """Whether the PACS is spoken to without TLS (``http://``)."""
        return self.url.scheme != "https"


class RateLimitSettings(_Section):
    """Per-subject token buckets (``broker.ratelimits``), counted per replica.

    A bucket holds ``*_burst`` requests and refills at ``*_per_minute``; with ``n`` replicas a
    person gets at most ``n`` times these. Policy obligations (``rate_limit``) may lower them.
    """

    enabled: bool = True
    # links one person may issue: a shift's worklist opened quickly, not a whole archive
    issue_burst: Annotated[int, Field(ge=1)] = 30
    issue_per_minute: Annotated[float, Field(gt=0)] = 2.0  # 120 studies an hour, sustained
    # DICOMweb requests through links by one person: a viewer asks once per frame, so the
    # burst holds a large study (a thin-slice CT: a few thousand frames) opened at once
    redeem_burst: Annotated[int, Field(ge=1)] = 5000
    redeem_per_minute: Annotated[float, Field(gt=0)] = 3000.0  # 50 requests a second, sustained
    # login attempts (GET /auth/login and /auth/callback) by one client address
    login_burst: Annotated[int, Field(ge=1)] = 30
    login_per_minute: Annotated[float, Field(gt=0)] = 10.0
    login_failure_cost: Annotated[int, Field(ge=0)] = 5  # a failed callback takes this many more
    max_keys: Annotated[int, Field(ge=100)] = 100_000  # buckets kept per scope (LRU beyond)


class StreamSettings(_Section):
    """The audit consumers (``telerad audit ...``)."""

    dead_letter_topic: str = "telerad.audit.dlq.v1"
    alerts_topic: str = "telerad.alerts.v1"
    heads_topic: str = "telerad.ledger.heads.v1"  # signed tree heads, published as they are made
    # what the ledger appended, in order (Kafka offsets), so a rebuild reproduces its roots
    segments_topic: str = "telerad.ledger.segments.v1"
    ledger_path: Path = Path("ledger/telerad-ledger.sqlite3")
    ledger_key_path: Path = Path("ledger/ledger-signing-key.pem")  # Ed25519, PKCS#8 PEM
    head_every_seconds: Annotated[float, Field(gt=0)] = 10.0
    head_every_leaves: Annotated[int, Field(gt=0)] = 1000
    export_dir: Path = Path("audit-export")
    # syslog over TLS (RFC 5425, `telerad audit export --syslog HOST:PORT --protocol tls`): the
    # collector's certificate is verified against this CA bundle, its host name against HOST
    syslog_tls: ClientTlsSettings = ClientTlsSettings()
    # alerts that act (streams.containment): rules that revoke their subject everywhere
    contain_rules: list[str] = Field(default_factory=list)  # e.g. ["bulk_access"]; opt-in
    contain_allow: list[str] = Field(default_factory=list)  # subjects never contained
    contain_seconds: Annotated[float, Field(gt=0)] = 8 * 3600.0
    contain_cooldown_seconds: Annotated[float, Field(ge=0)] = 3600.0
    alerts_bulk_studies: Annotated[int, Field(gt=1)] = 20
    alerts_bulk_window_seconds: Annotated[int, Field(gt=0)] = 300
    # telerad integrity watch: its place in the PACS's change feed (written after each ack)
    integrity_cursor_path: Path = Path("integrity/cursor.json")
    integrity_sweep_per_second: Annotated[float, Field(gt=0)] = 50.0
    # Each consumer's /healthz (the loop turns) and /readyz (Kafka answers; lag) for probes;
    # None: no health listener (the chart sets one per consumer pod).
    health_host: str = "127.0.0.1"
    health_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    health_stale_seconds: Annotated[float, Field(gt=0)] = 60.0  # no loop turn for this long: dead

    def health_options(self) -> dict[str, Any]:
        """The ``ConsumerRunner`` arguments that serve this consumer's health."""
        return {
            "health_host": self.health_host,
            "health_port": self.health_port,
            "health_stale_seconds": self.health_stale_seconds,
        }


class TracingSettings(_Section):
    """OpenTelemetry traces of the request path (``broker/tracing.py``); off by default."""

    enabled: bool = False
    # OTLP over HTTP (protobuf): a collector's traces endpoint
    otlp_endpoint: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:4318/v1/traces")
    service_name: str = "telerad-broker"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0  # of new traces; parents decide theirs
    export_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0


class IntegritySettings(_Section):
    """Checking what links relay against the instances' fingerprints (broker.fingerprints)."""

    # Hash instances and frames as they stream and cut off a mismatch. Off, nothing is
    # checked and the fingerprint topic is not read (the benchmark's comparison only).
    check_reads: bool = True
    # The in-memory fingerprint index's bound (MiB); ~250 bytes per single-frame instance.
    # Full, instances it could not take in are refused whatever the policy says.
    index_mib: Annotated[int, Field(ge=1)] = 256


class Settings(BaseSettings):
    """Everything the broker reads from its environment; frozen after start-up."""

    model_config = SettingsConfigDict(
        env_prefix="TELERAD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        secrets_dir=os.environ.get("TELERAD_SECRETS_DIR") or None,
    )

    environment: str = (
        "production"  # "development" relaxes nothing security-relevant; it labels logs
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (the ingress controller's
    # addresses or networks): the client address in audit events, the policy input and the
    # login limits is then the browser's. Anyone else's forwarding headers are ignored.
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ip_network("127.0.0.1/32")]
    )
    # Prometheus /metrics on a listener of its own (same host), never on ``port``: an Ingress
    # on the broker's "/" cannot expose it. 0 picks a free port (tests); None (in code): none.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = 9464
    public_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    log_level: str = "INFO"
    instance_id: str = Field(default_factory=socket.gethostname)  # ce_source, consumer groups
    # "kafka": acknowledged before answered. "log": development only, never durable.
    audit_sink: Literal["kafka", "log"] = "kafka"
    readiness_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0  # per dependency check

    issuers: list[IssuerSettings] = Field(default_factory=list)
    identity: IdentitySettings = IdentitySettings()
    links: LinkSettings = LinkSettings()
    # The hospital-fed study facts (institution → facility; labels, consent, referrer by study).
    facts_file: Path | None = None
    # The OHIF viewer's prebuilt dist/ (the image carries it at /opt/ohif); None: no viewer.
    viewer_dir: Path | None = None
    facts_ttl_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    # HMAC key for patient pseudonyms in policy input and audit events (base64url, 32 bytes).
    pseudonym_key: SecretStr | None = None
    opa: OpaSettings = OpaSettings()
    kafka: KafkaSettings = KafkaSettings()
    pacs: PacsSettings = PacsSettings()
    integrity: IntegritySettings = IntegritySettings()
    streams: StreamSettings = StreamSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    tracing: TracingSettings = TracingSettings()


# TELERAD_* variables that belong to the tooling, not to the broker's settings.
_TOOLING = ("TELERAD_SECRETS_DIR", "TELERAD_CACHE", "TELERAD_M2_REPO", "TELERAD_STACK_")


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """TELERAD_* names that no setting reads (pydantic-settings would silently ignore them)."""
    fields = {f"TELERAD_{name.upper()}" for name in Settings.model_fields}
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith("TELERAD_") or upper.startswith(_TOOLING):
            continue
        if upper not in fields and upper.split("__", 1)[0] not in fields:
            unknown.append(name)
    return sorted(unknown)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a TELERAD_* variable no setting reads: a typo must not fall back to a default."""
    unknown = _unknown_variables(os.environ if environ is None else environ)
    if unknown:
        raise ValueError(f"unknown setting(s) in the environment: {', '.join(unknown)}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
