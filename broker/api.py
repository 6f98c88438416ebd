"""The protected API: who am I, and "may I do X on study S, and if not, why"."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from broker.identity.dependencies import CurrentPrincipal
from broker.opa import Reason
from broker.openapi import AUTHENTICATED, error_responses
from broker.policy import RequestContext
from broker.state import state_of

__all__ = ["Caller", "DecisionAnswer", "DecisionRequest", "router"]

router = APIRouter(prefix="/api", tags=["api"])

Operation = Literal["view", "download"]


class DecisionRequest(BaseModel):
    """What the caller wants to know."""

    model_config = ConfigDict(extra="forbid")
    study_uid: Annotated[
        str, Field(min_length=1, max_length=64, examples=["1.2.826.0.1.3680043.10.1119.1"])
    ]
    action: Literal["issue_link", "redeem", "search"] = "issue_link"
    operations: Annotated[list[Operation], Field(min_length=1, max_length=4)] = ["view"]
    break_glass_justification: Annotated[str | None, Field(max_length=1000)] = None


class Caller(BaseModel):
    """Who the broker takes the caller to be."""

    id: str
    issuer: str
    roles: list[str]
    acr: str | None
    amr: list[str]
    via: Literal["bearer", "session"]
    name: str | None


class DecisionAnswer(BaseModel):
    """The policy's decision (a denial is an answer too), as audited under ``decision_id``."""

    allow: bool
    reasons: list[Reason]
    obligations: dict[str, Any]
    decision_id: str | None


@router.get(
    "/me",
    response_model=Caller,
    summary="Who the broker takes the caller to be",
    responses=error_responses(401),
    openapi_extra=AUTHENTICATED,
)
async def me(principal: CurrentPrincipal) -> dict[str, Any]:
    return {
        "id": principal.id,
        "issuer": principal.issuer,
        "roles": list(principal.roles),
        "acr": principal.acr,
        "amr": list(principal.amr),
        "via": principal.via,
        "name": principal.name,
    }


@router.post(
    "/decisions",
    response_model=DecisionAnswer,
    summary="May I do this on that study, and if not, why",
    # a denial is an answer (200, allow false); 403 only for a cross-site session request
    responses=error_responses(400, 401, 403, 404, 502, 503),
    openapi_extra=AUTHENTICATED,
)
async def decide(
    body: DecisionRequest, principal: CurrentPrincipal, request: Request
) -> dict[str, Any]:
    state = state_of(request)
    facts = await state.facts.get(body.study_uid)
    decision = await state.enforcer.authorize(
        principal,
        body.action,
        list(body.operations),
        facts,
        RequestContext.of(request),
        break_glass=body.break_glass_justification,
    )
    return {
        "allow": decision.allow,
        "reasons": [r.model_dump() for r in decision.reasons],
        "obligations": decision.obligations,
        "decision_id": decision.decision_id,
    }
