"""The one audit event model: who did what to which study, when, from where, and the outcome."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.tracing import current_traceparent

__all__ = ["AuditEvent", "EventKind", "Outcome"]


class EventKind(StrEnum):
    """What happened; the CloudEvents ``type`` is ``org.telerad.<kind>.v1``."""

    LOGIN = "login"
    LOGIN_FAILED = "login.failed"
    LOGOUT = "logout"
    STEP_UP = "step_up"
    TOKEN_REJECTED = "token.rejected"  # noqa: S105 - an event name, not a password
    DECISION = "decision"
    LINK_ISSUED = "link.issued"
    LINK_REDEEMED = "link.redeemed"
    REVOKED = "revoked"
    BREAK_GLASS = "break_glass"
    CONSENT_CHANGED = "consent.changed"  # from the hospital's systems: detail.consent permit|deny
    INSTANCE_STORED = "instance.stored"  # an instance's fingerprint at ingest (streams.integrity)
    ASSIGNMENT_CHANGED = "assignment.changed"  # from the RIS feed: a study's assignments changed
    POLICY_REVISED = "policy.revised"  # a replica saw a new policy revision (policy_revision)
    LINK_GRANTED = "link.granted"  # a decision window opened: the grant, durable before bytes
    LINK_TRANSFERRED = "link.transferred"  # what flowed inside a window, per link and series
    # a read through a link did not match the instance's fingerprint (cut off), or had none
    # to be checked with (served or refused, as the policy said): detail.finding, detail.action
    INTEGRITY_VIOLATION = "integrity.violation"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ALLOW = "allow"
    DENY = "deny"


class AuditEvent(BaseModel):
    """One access event, carrying what auditors need and no token, secret or patient identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    kind: EventKind
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    outcome: Outcome
    subject: str | None = None  # policy subject id, e.g. npi:1000000001
    issuer: str | None = None
    roles: list[str] = Field(default_factory=list)
    action: str | None = None
    study_uid: str | None = None
    operations: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)  # stable reason codes
    decision_id: str | None = None
    policy_revision: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    purpose: str | None = None  # purpose of use; the break-glass justification
    session_id: str | None = None
    link_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    # W3C Trace Context of the span the event was recorded in (CloudEvents distributed-tracing
    # extension; on Kafka also the ce_traceparent header); None when tracing is off
    traceparent: (
        Annotated[str, StringConstraints(pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
        | None
    ) = Field(default_factory=current_traceparent)

    @property
    def type(self) -> str:
        """The versioned CloudEvents type."""
        return f"org.telerad.{self.kind.value}.v1"

    @property
    def partition_key(self) -> str:
        """Events of one study (or one patient's consent) stay in order; others by subject.

        A ``revoked`` event is keyed by what it revokes: the control topic is compacted (the
        newest record per key survives), and keyed by study or subject a later revocation would
        compact away an earlier one still in force (a containment and its lift share the key,
        so the lift is what survives). A ``consent.changed`` keeps the study, or the patient's
        pseudonym for a recorded Consent: the newest one is the one in force.
        """
        revocation = self.detail.get("revocation") if self.kind is EventKind.REVOKED else None
        if isinstance(revocation, dict) and revocation.get("kind") and revocation.get("value"):
            return f"revoked:{revocation['kind']}:{revocation['value']}"
        patient = self.detail.get("patient") if self.kind is EventKind.CONSENT_CHANGED else None
        return (
            self.study_uid
            or (patient if isinstance(patient, str) else None)
            or (self.subject or self.id)
        )
