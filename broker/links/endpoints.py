"""Issuing, redeeming and revoking study links.

    POST /api/links                              issue (policy action ``issue_link``)
    POST /api/links/{link_id}/revoke             revoke one of one's own links
    GET  /links/{token}/dicom-web/{path}         redeem: DICOMweb below the linked study

Redemption, on every request: open the token (404 if it does not open, 410 once expired or
revoked), check the path, authenticate the caller and check the link's binding (403 for anyone
else), and only then proxy to the PACS. The policy (action ``redeem``) is asked on the holder's
first request; an allow with the obligation ``redeem_window_seconds`` opens a decision window
(``broker.links.window``) that later requests of that holder, link and operation reuse instead of
asking again. The window's grant event is made durable with the decision before the first byte;
the reads inside it are recorded as aggregated ``link.transferred`` events. Without a window each
request records its own ``link.redeemed`` event, durably, before it is answered.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from broker.audit import AuditEvent, AuditUnavailable, EventKind, Outcome
from broker.crypto import b64u_encode
from broker.dicomweb.facts import StudyFacts
from broker.dicomweb.proxy import parse_path
from broker.errors import (
    DependencyUnavailable,
    Forbidden,
    Gone,
    NotFound,
    RateLimited,
    StepUpRequired,
    TeleradError,
    Unauthenticated,
)
from broker.identity.bearer import TokenRejected
from broker.identity.dependencies import CurrentPrincipal, current_principal
from broker.identity.principal import Principal
from broker.links.integrity import policy_of, read_check
from broker.links.token import LinkClaims, LinkInvalid
from broker.links.transfers import Transferred
from broker.links.window import Window, WindowKey, window_seconds
from broker.opa import Decision
from broker.openapi import AUTHENTICATED, error_responses, redirect_response
from broker.policy import RequestContext
from broker.revocation import RevocationKind, revoke_everywhere
from broker.state import AppState, state_of

__all__ = [
    "REDEEM_PATH",
    "IssueLinkRequest",
    "IssuedLink",
    "api_router",
    "redeem",
    "redeem_router",
    "subject_binding",
]

log = logging.getLogger("telerad.links")
api_router = APIRouter(prefix="/api/links", tags=["links"])
redeem_router = APIRouter(prefix="/links", tags=["links"])
# The redemption route's template; broker.links.fast_route serves it ahead of FastAPI's route.
REDEEM_PATH = "/links/{token}/dicom-web/{path:path}"

_MAX_TTL = 3600  # seconds; a policy obligation above this is clamped
_JSON_ARRAY = {"schema": {"type": "array", "items": {"type": "object"}}}
_BYTES = {"schema": {"type": "string", "format": "binary"}}
# What redemption answers besides its own errors: the PACS's answers, passed on.
_REDEEM_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The PACS's answer, streamed (DICOM JSON with its URLs rewritten).",
        "content": {
            "application/dicom+json": _JSON_ARRAY,
            "application/json": _JSON_ARRAY,
            "multipart/related": _BYTES,
            "application/octet-stream": _BYTES,
            "image/*": _BYTES,
        },
    },
    204: {"description": "The PACS has nothing to answer."},
    303: redirect_response("A browser session must step up: to the IdP's login."),
    406: {"description": "The PACS cannot answer in a media type the Accept header names."},
}


class IssueLinkRequest(BaseModel):
    """A link for one study, for the operations wanted."""

    model_config = ConfigDict(extra="forbid")
    study_uid: Annotated[
        str, Field(min_length=1, max_length=64, examples=["1.2.826.0.1.3680043.10.1119.1"])
    ]
    operations: Annotated[list[Literal["view", "download"]], Field(min_length=1, max_length=2)] = [
        "view"
    ]
    break_glass_justification: Annotated[str | None, Field(max_length=1000)] = None


class IssuedLink(BaseModel):
    """A link: its study URL and DICOMweb root (the token inside both), id and expiry."""

    url: str
    dicomweb_root: str
    link_id: str
    expires_at: Annotated[int, Field(description="Unix time, seconds.")]
    operations: list[Literal["view", "download"]]


def subject_binding(principal: Principal) -> str:
    """A short digest naming one person at one IdP (keeps the token compact)."""
    digest = hashlib.sha256(f"{principal.issuer}#{principal.id}".encode()).digest()
    return b64u_encode(digest[:16])


def _dpop_thumbprint(request: Request) -> str | None:
    """The key thumbprint of a valid DPoP proof on this request; None when none is sent."""
    proof = request.headers.get("dpop")
    if proof is None:
        return None
    state = state_of(request)
    url = f"{str(state.settings.public_url).rstrip('/')}{request.url.path}"
    try:
        return state.dpop.verify(proof, method=request.method, url=url)
    except TokenRejected as exc:
        raise Unauthenticated("The DPoP proof is not valid.", error="invalid_dpop_proof") from exc


def _binding(principal: Principal, request: Request) -> dict[str, str]:
    if principal.via == "session" and principal.session_id:
        return {"sid": principal.session_id}
    thumbprint = _dpop_thumbprint(request)
    if thumbprint is not None:
        return {"jkt": thumbprint}  # RFC 9449: only the holder of this key can redeem
    return {"sub": subject_binding(principal)}


def _holder(claims: LinkClaims, principal: Principal, request: Request) -> str | None:
    """The link's binding as this request presents it (``sid:…``, ``sub:…``, ``jkt:…``), or
    None when the caller is not the holder."""
    ((kind, value),) = claims.binding.items()
    if kind == "sid":
        bound = principal.via == "session" and principal.session_id == value
    elif kind == "sub":
        bound = hmac.compare_digest(subject_binding(principal), value)
    elif kind == "jkt":
        thumbprint = _dpop_thumbprint(request)
        bound = thumbprint is not None and hmac.compare_digest(thumbprint, value)
    else:
        bound = False
    return f"{kind}:{value}" if bound else None


def _bound_to(claims: LinkClaims, principal: Principal, request: Request) -> bool:
    return _holder(claims, principal, request) is not None


def _refuse(decision: Decision, principal: Principal, request: Request) -> None:
    """Turn a denial into the right error: step-up (401) or forbidden (403)."""
    step_up = decision.obligations.get("step_up")
    codes = [r.code for r in decision.reasons]
    if isinstance(step_up, dict) and codes == ["step_up_required"]:
        acr, max_age = step_up.get("acr"), step_up.get("max_age")
        login_url = None
        issuer = state_of(request).bearer.issuer(principal.issuer)
        if principal.via == "session" and issuer is not None:
            params = {"idp": issuer.label, "acr_values": acr, "next": request.url.path}
            if max_age is not None:
                params["max_age"] = max_age
            login_url = "/auth/login?" + urlencode(params)
        raise StepUpRequired(acr, max_age, login_url)
    if any(code.startswith("policy_") for code in codes):
        raise DependencyUnavailable("The policy service is unavailable; nothing was granted.")
    raise Forbidden("The policy does not allow this: " + ", ".join(codes), reasons=tuple(codes))


@api_router.post(
    "",
    response_model=IssuedLink,
    summary="Issue a short-lived link to one study",
    responses=error_responses(400, 401, 403, 404, 429, 502, 503),
    openapi_extra=AUTHENTICATED,
)
async def issue_link(
    body: IssueLinkRequest, principal: CurrentPrincipal, request: Request
) -> dict[str, Any]:
    state = state_of(request)
    context = RequestContext.of(request)
    binding = _binding(principal, request)  # a bad DPoP proof fails here, before any decision
    try:
        state.limits.check("issue_link", principal.id)  # before the PACS or the policy is asked
    except RateLimited as exc:
        await _audit_rate_limited(state, exc, principal, body.study_uid, context)
        raise
    facts = await state.facts.get(body.study_uid)
    sealed: list[tuple[LinkClaims, str]] = []

    def issued(decision: Decision, _decided: AuditEvent) -> list[AuditEvent]:
        """The link, sealed on an allow that grants something; its event rides with the
        decision's (one produce, one acknowledgement)."""
        if not decision.allow:
            return []
        ttl = min(int(decision.obligations.get("link_ttl_seconds", 0)), _MAX_TTL)
        granted = [op for op in decision.obligations.get("operations", []) if op in body.operations]
        if ttl <= 0 or not granted:
            return []
        now = int(context.now)
        claims = LinkClaims(
            subject=principal.id,
            issuer=principal.issuer,
            study_uid=facts.study_uid,
            operations=tuple(sorted(granted)),
            expires_at=now + ttl,
            issued_at=now,
            decision_id=decision.decision_id,
            binding=binding,
            bearer_only=bool(decision.obligations.get("bearer_only_redeem", False)),
        )
        # runs inside authorize, after its allow and before the events are made durable
        sealed.append((claims, state.links.seal(claims)))  # lint: no-decision (see above)
        return [
            AuditEvent(
                kind=EventKind.LINK_ISSUED,
                outcome=Outcome.SUCCESS,
                **context.actor(principal),
                action="issue_link",
                study_uid=facts.study_uid,
                operations=list(claims.operations),
                decision_id=decision.decision_id,
                link_id=claims.link_id,
                detail={"expires_at": claims.expires_at},
            )
        ]

    decision = await state.enforcer.authorize(
        principal,
        "issue_link",
        list(body.operations),
        facts,
        context,
        break_glass=body.break_glass_justification,
        also=issued,
    )
    if not decision.allow:
        _refuse(decision, principal, request)
    state.limits.apply_obligation(
        "issue_link", principal.id, decision.obligations.get("rate_limit")
    )
    if not sealed:
        raise Forbidden("The policy granted nothing to link.")
    ((claims, token),) = sealed
    base = str(state.settings.public_url).rstrip("/")
    return {
        "url": f"{base}/links/{token}/dicom-web/studies/{facts.study_uid}",
        "dicomweb_root": f"{base}/links/{token}/dicom-web",
        "link_id": claims.link_id,
        "expires_at": claims.expires_at,
        "operations": list(claims.operations),
    }


@api_router.post(
    "/{link_id}/revoke",
    summary="Revoke one of your own links",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 503),
    openapi_extra=AUTHENTICATED,
)
async def revoke_link(link_id: str, principal: CurrentPrincipal, request: Request) -> Response:
    state = state_of(request)
    if not (0 < len(link_id) <= 64):
        raise NotFound()
    # Anyone may revoke a link id they hold; only its owner could have learnt it (it is inside
    # the sealed token and in the issue response), and revoking only ever takes access away.
    try:
        await revoke_everywhere(
            state.revocations,
            state.audit,
            RevocationKind.LINK,
            link_id,
            until=time.time() + _MAX_TTL + 60,
            subject=principal.id,
            issuer=principal.issuer,
            link_id=link_id,
            detail={"by": "owner"},
            **RequestContext.audit_fields(request),
        )
    except AuditUnavailable as exc:
        # revoked here already; other replicas learn of it only through the stream
        raise DependencyUnavailable("Revoked here, but not yet everywhere; retry.") from exc
    return Response(status_code=204)


@redeem_router.get(
    REDEEM_PATH.removeprefix("/links"),
    summary="DICOMweb below the linked study",
    response_class=Response,
    responses=error_responses(401, 403, 404, 410, 429, 502, 503, also=_REDEEM_ANSWERS),
    openapi_extra=AUTHENTICATED,
)
async def redeem(token: str, path: str, request: Request) -> Response:
    state = state_of(request)
    context = RequestContext.of(request)
    claims: LinkClaims | None = None
    principal: Principal | None = None
    operation: str | None = None
    decision: Decision | None = None
    reason = "invalid_link"
    try:
        try:
            claims = state.links.open(token)
        except LinkInvalid:
            raise NotFound() from None
        reason = "expired"
        if claims.expires_at <= context.now:
            raise Gone()
        reason = "revoked"
        if state.revocations.is_revoked(RevocationKind.LINK, claims.link_id):
            raise Gone("This link has been revoked.")
        reason = "path_not_allowed"
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").lower()
        if any(escape in raw_path for escape in ("%2f", "%5c", "%2e")):
            raise NotFound()
        parsed = parse_path(path, claims.study_uid)
        operation = parsed.operation
        reason = "unauthenticated"
        principal = await current_principal(request)
        reason = "not_link_holder"
        holder = _holder(claims, principal, request)
        if holder is None or principal.id != claims.subject:
            raise Forbidden("This link was issued to someone else.")
        reason = "operation_not_in_link"
        if parsed.operation not in claims.operations:
            raise Forbidden("This link does not allow that operation.")
        reason = "rate_limited"
        state.limits.check("redeem", principal.id)  # every request, window or not
        key = WindowKey(claims.link_id, holder, principal.id, parsed.operation)
        window = state.windows.get(key, policy_revision=state.enforcer.policy_revision)
        if window is None:
            async with state.windows.deciding(key):
                # a concurrent first request may have opened it while this one waited
                window = state.windows.get(key, policy_revision=state.enforcer.policy_revision)
                if window is None:
                    # read before the facts: a change that lands while they are fetched or
                    # the policy is asked keeps this decision from opening a window
                    generation = state.windows.generation
                    reason = "study_unavailable"
                    facts = await state.facts.get(claims.study_uid)
                    reason = "policy_denied"
                    decision, window = await _decide_window(
                        state, key, claims, principal, facts, context, request, generation
                    )
    except TeleradError as exc:
        state.metrics.redemptions.labels(reason).inc()
        if isinstance(exc, RateLimited):
            state.metrics.rate_limited.labels("redeem").inc()
        await _audit_redeem(state, claims, principal, operation, Outcome.DENY, [reason], context)
        raise exc from None
    state.metrics.redemptions.labels("allow" if decision is not None else "window").inc()
    link_base = f"{str(state.settings.public_url).rstrip('/')}/links/{token}/dicom-web"
    query = list(request.query_params.multi_items())
    if window is None:
        # no window (the policy gave none): this request is recorded on its own, durably
        decision_id = decision.decision_id if decision is not None else None
        await _audit_redeem(
            state, claims, principal, operation, Outcome.ALLOW, [], context, decision_id
        )
        policy = policy_of(decision.obligations.get("unfingerprinted") if decision else None)
        check = read_check(state, claims, principal, context, parsed.upstream, policy)
        return await state.proxy.forward(
            parsed, query, dict(request.headers), link_base, check=check
        )
    # Inside a window the grant is durable already; what flows is aggregated per link and
    # series and flushed every second (broker.links.transfers).
    who = Transferred(
        link_id=claims.link_id,
        grant_id=window.grant_id,
        decision_id=window.decision_id,
        subject=principal.id,
        issuer=principal.issuer,
        session_id=principal.session_id,
        study_uid=claims.study_uid,
        operation=parsed.operation,
        client_ip=context.client_ip,
        user_agent=context.user_agent,
    )
    upstream = parsed.upstream

    def transferred(size: int, complete: bool) -> None:
        state.transfers.record(who, upstream, size=size, ok=complete)

    check = read_check(
        state, claims, principal, context, upstream, policy_of(window.unfingerprinted)
    )
    try:
        return await state.proxy.forward(
            parsed, query, dict(request.headers), link_base, on_done=transferred, check=check
        )
    except TeleradError:
        transferred(0, False)
        raise


async def _decide_window(
    state: AppState,
    key: WindowKey,
    claims: LinkClaims,
    principal: Principal,
    facts: StudyFacts,
    context: RequestContext,
    request: Request,
    generation: int,
) -> tuple[Decision, Window | None]:
    """Ask the policy (action ``redeem``); on an allow with ``redeem_window_seconds``, open a
    window whose grant event is made durable together with the decision's.

    Raises the refusal on a deny. ``generation`` is the windows' generation read before the
    study's facts were.
    """
    opened: list[Window] = []

    def grant(decision: Decision, decided: AuditEvent) -> list[AuditEvent]:
        seconds = window_seconds(
            decision.obligations.get("redeem_window_seconds"),
            now=context.now,
            link_expires_at=claims.expires_at,
        )
        if not decision.allow or seconds <= 0:
            return []
        event = AuditEvent(
            kind=EventKind.LINK_GRANTED,
            outcome=Outcome.ALLOW,
            **context.actor(principal),
            action="redeem",
            study_uid=claims.study_uid,
            operations=[key.operation],
            decision_id=decision.decision_id,
            policy_revision=decision.policy_revision,
            link_id=claims.link_id,
            detail={
                "window_start": context.now,
                "window_end": context.now + seconds,
                "holder": key.holder.split(":", 1)[0],
                "decision_event": decided.id,
            },
        )
        opened.append(
            Window(
                key=key,
                study_uid=claims.study_uid,
                session_id=principal.session_id,
                decision_id=decision.decision_id,
                policy_revision=decision.policy_revision,
                start=context.now,
                end=context.now + seconds,
                grant_id=event.id,
                unfingerprinted=policy_of(decision.obligations.get("unfingerprinted")),
            )
        )
        return [event]

    decision = await state.enforcer.authorize(
        principal, "redeem", [key.operation], facts, context, also=grant
    )
    if not decision.allow:
        _refuse(decision, principal, request)
    state.limits.apply_obligation("redeem", principal.id, decision.obligations.get("rate_limit"))
    if not opened:
        return decision, None
    # The grant is durable. The window opens for later requests unless a change arrived while
    # it was being decided; this request is covered by its grant either way.
    state.windows.open(opened[0], generation=generation)
    return decision, opened[0]


async def _audit_redeem(
    state: AppState,
    claims: LinkClaims | None,
    principal: Principal | None,
    operation: str | None,
    outcome: Outcome,
    reasons: list[str],
    context: RequestContext,
    decision_id: str | None = None,
) -> None:
    await state.audit.emit(
        AuditEvent(
            kind=EventKind.LINK_REDEEMED,
            outcome=outcome,
            **context.actor(principal),
            action="redeem",
            study_uid=claims.study_uid if claims else None,
            operations=[operation] if operation else [],
            reasons=reasons,
            decision_id=decision_id,
            link_id=claims.link_id if claims else None,
            detail={"link_subject": claims.subject} if claims else {},
        ),
    )


async def _audit_rate_limited(
    state: AppState,
    exc: RateLimited,
    principal: Principal,
    study_uid: str,
    context: RequestContext,
) -> None:
    """Record an issuance refused by its rate limit: the broker's own deny, with no policy
    decision behind it (reason ``rate_limited``). It grants nothing, so an audit trail that is
    down does not change the answer (429), only the log and the failure counter say so."""
    state.metrics.rate_limited.labels(exc.scope).inc()
    event = AuditEvent(
        kind=EventKind.DECISION,
        outcome=Outcome.DENY,
        **context.actor(principal),
        action="issue_link",
        study_uid=study_uid,
        reasons=["rate_limited"],
        detail={"retry_after": int(exc.retry_after)},
    )
    try:
        await state.audit.emit(event)
    except AuditUnavailable:
        state.metrics.audit_failures.inc()
        log.warning("a rate-limited issuance could not be audited", extra={"scope": exc.scope})
