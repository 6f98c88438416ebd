"""Browser login with the hospital's IdP: authorization code + PKCE (S256), state and nonce.

    GET  /auth/login?idp=<name>&next=/path   → the IdP (acr_values, max_age for step-up)
    GET  /auth/callback                      → a fresh session, then back to ``next``
    GET  /auth/logout                        → the sign-out page (a GET changes nothing)
    POST /auth/logout                        → session revoked here, then RP-initiated logout
    POST /auth/backchannel-logout            ← the IdP (OIDC Back-Channel Logout 1.0)

authlib's Starlette client keeps ``state``, ``nonce`` and the PKCE verifier in ``request.session``,
which here is the encrypted session cookie. The access token the IdP returns goes through the same
strict validation as any bearer token, and the session keeps the resulting principal — never the
IdP's tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.audit import AuditEvent, AuditUnavailable, EventKind, Outcome
from broker.config import IssuerSettings
from broker.errors import BadRequest, DependencyUnavailable, RateLimited
from broker.identity._authlib import OAuth, OAuthError
from broker.identity.bearer import TokenRejected, claims_to_principal, string_list
from broker.identity.principal import Principal
from broker.identity.sessions import SESSION_META, session_fits
from broker.openapi import error_responses, redirect_response
from broker.pages.security import CSRF_FIELD, check_csrf
from broker.policy import RequestContext
from broker.revocation import RevocationKind, revoke_everywhere
from broker.state import AppState, state_of

__all__ = ["build_oauth", "principal_from_session", "router", "session_principal_dict"]

log = logging.getLogger("telerad.identity")
router = APIRouter(prefix="/auth", tags=["auth"])

_BCL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_IDP_UNAVAILABLE = "The identity provider could not be reached; please try again."


def build_oauth(issuers: list[IssuerSettings], scopes: str) -> OAuth:
    """One authlib client per issuer that browsers log in through."""
    oauth = OAuth()
    for issuer in issuers:
        if issuer.client_id is None or issuer.client_secret is None:
            continue
        oauth.register(
            name=issuer.label,
            client_id=issuer.client_id,
            client_secret=issuer.client_secret.get_secret_value(),
            server_metadata_url=f"{str(issuer.issuer).rstrip('/')}/.well-known/openid-configuration",
            client_kwargs={"scope": scopes, "code_challenge_method": "S256"},
        )
    return oauth


def session_principal_dict(principal: Principal) -> dict[str, Any]:
    """What of a principal the session cookie keeps (no tokens)."""
    return {
        "id": principal.id,
        "issuer": principal.issuer,
        "subject": principal.subject,
        "roles": list(principal.roles),
        "licenses": list(principal.licenses),
        "privileges": list(principal.privileges),
        "group": principal.group,
        "acr": principal.acr,
        "amr": list(principal.amr),
        "auth_time": principal.auth_time,
        "idp_session_id": principal.idp_session_id,
        "name": principal.name,
    }


def principal_from_session(request: Request) -> Principal | None:
    """The principal of a live browser session, or None."""
    stored = request.session.get("principal")
    meta = request.scope.get(SESSION_META)
    if not isinstance(stored, dict) or not isinstance(meta, dict):
        return None
    return Principal(
        id=stored["id"],
        issuer=stored["issuer"],
        subject=stored["subject"],
        roles=tuple(stored.get("roles", ())),
        licenses=tuple(stored.get("licenses", ())),
        privileges=tuple(stored.get("privileges", ())),
        group=stored.get("group"),
        acr=stored.get("acr"),
        amr=tuple(stored.get("amr", ())),
        auth_time=stored.get("auth_time"),
        via="session",
        session_id=meta.get("sid"),
        idp_session_id=stored.get("idp_session_id"),
        name=stored.get("name"),
    )


def _safe_next(value: str | None) -> str:
    """Only a path on this site: no scheme, no host, no protocol-relative or backslash tricks."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _failure_page(status: int, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    body = (
        "<!doctype html><title>Sign-in failed</title>"
        f"<h1>Sign-in failed</h1><p>{message}</p><p><a href='/'>Start again</a></p>"
    )
    return HTMLResponse(body, status_code=status, headers=headers)


_RATE_LIMITED_PAGE = {
    "description": "Too many sign-in attempts from this address (a page saying so).",
    "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    "content": {"text/html": {}},
}


def _login_key(request: Request) -> str:
    """Login attempts are counted by client address (no person is known before the IdP)."""
    return f"ip:{request.client.host if request.client else 'unknown'}"


async def _rate_limited(request: Request, step: str) -> Response | None:
    """Take a login attempt from this address; the refusal page (429) when none is left.

    The refusal is audited (``login.failed``, reason ``rate_limited``) on a best-effort basis:
    it grants nothing, so an unavailable audit trail does not change the answer.
    """
    state = state_of(request)
    try:
        state.limits.check("login", _login_key(request))
    except RateLimited as exc:
        state.metrics.rate_limited.labels("login").inc()
        try:
            await state.audit.emit(
                AuditEvent(
                    kind=EventKind.LOGIN_FAILED,
                    outcome=Outcome.FAILURE,
                    reasons=["rate_limited"],
                    detail={"step": step, "retry_after": int(exc.retry_after)},
                    **RequestContext.audit_fields(request),
                )
            )
        except AuditUnavailable:
            state.metrics.audit_failures.inc()
            log.warning("a rate-limited login could not be audited")
        return _failure_page(
            429,
            f"Too many sign-in attempts from your address. Please wait {exc.retry_after} "
            "seconds, then start again.",
            headers={"Retry-After": exc.retry_after, "Cache-Control": "no-store"},
        )
    return None


def _failed_attempt(request: Request) -> None:
    """A failed callback costs more than an attempt: guessing is slowed down further."""
    state = state_of(request)
    state.limits.penalize(
        "login", _login_key(request), state.settings.rate_limits.login_failure_cost
    )


@router.get(
    "/login",
    summary="Start a browser login at the named IdP",
    status_code=302,
    response_class=RedirectResponse,
    responses=error_responses(
        400,
        503,
        also={
            302: redirect_response("To the IdP's authorization endpoint."),
            429: _RATE_LIMITED_PAGE,
        },
    ),
)
async def login(
    request: Request,
    idp: str | None = None,
    next: str | None = None,  # the conventional name of the return path
    acr_values: str | None = None,
    max_age: int | None = None,
) -> Response:
    state = state_of(request)
    if (refused := await _rate_limited(request, "login")) is not None:
        return refused
    names = [i.label for i in state.settings.issuers if i.client_id]
    name = idp or (names[0] if len(names) == 1 else None)
    client = state.oauth.create_client(name) if name else None
    if client is None:
        raise BadRequest(f"Choose an identity provider: idp is one of {', '.join(names)}.")
    request.session["next"] = _safe_next(next)
    extra: dict[str, Any] = {}
    if acr_values:
        extra["acr_values"] = acr_values[:64]
    if max_age is not None and max_age >= 0:
        extra["max_age"] = max_age
    redirect_uri = f"{str(state.settings.public_url).rstrip('/')}/auth/callback"
    request.session["idp"] = name
    try:
        response: Response = await client.authorize_redirect(request, redirect_uri, **extra)
    except (httpx.HTTPError, ValueError) as exc:  # its discovery document: unreachable or garbage
        raise DependencyUnavailable(_IDP_UNAVAILABLE) from exc
    return response


@router.get(
    "/callback",
    summary="The IdP's redirect back after login",
    status_code=303,
    response_class=RedirectResponse,
    responses=error_responses(
        503,
        also={
            303: redirect_response("Signed in: back to where the login started."),
            400: {
                "description": "The login failed (a page saying so).",
                "content": {"text/html": {}},
            },
            429: _RATE_LIMITED_PAGE,
        },
    ),
)
async def callback(request: Request) -> Response:
    state = state_of(request)
    if (refused := await _rate_limited(request, "callback")) is not None:
        return refused
    name = request.session.get("idp")
    client = state.oauth.create_client(name) if isinstance(name, str) else None
    audit_base = RequestContext.audit_fields(request)
    if client is None:
        _failed_attempt(request)
        await state.audit.emit(
            AuditEvent(
                kind=EventKind.LOGIN_FAILED,
                outcome=Outcome.FAILURE,
                reasons=["no_login_in_progress"],
                **audit_base,
            )
        )
        return _failure_page(400, "No sign-in was in progress. Please start again.")
    try:
        token = await client.authorize_access_token(request)
        principal = await state.bearer.validate(token["access_token"])
    except httpx.HTTPError as exc:  # the IdP's token endpoint: an outage, not a failed login
        raise DependencyUnavailable(_IDP_UNAVAILABLE) from exc
    except (OAuthError, TokenRejected, KeyError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "error", None) or "login_failed"
        log.warning("login failed", extra={"idp": name, "reason": str(reason)})
        _failed_attempt(request)
        await state.audit.emit(
            AuditEvent(
                kind=EventKind.LOGIN_FAILED,
                outcome=Outcome.FAILURE,
                reasons=[str(reason)[:64]],
                detail={"idp": name},
                **audit_base,
            )
        )
        return _failure_page(400, "The identity provider's answer could not be accepted.")
    userinfo = token.get("userinfo") or {}
    principal = _merge_id_token(principal, userinfo)
    target = request.session.get("next", "/")
    request.session.clear()
    request.scope[SESSION_META] = None  # a fresh session id at login: no session fixation
    request.session["principal"] = session_principal_dict(principal)
    if not session_fits(request.scope):
        request.session.clear()
        log.warning("login refused: the identity is too large for a session", extra={"idp": name})
        await state.audit.emit(
            AuditEvent(
                kind=EventKind.LOGIN_FAILED,
                outcome=Outcome.FAILURE,
                subject=principal.id,
                issuer=principal.issuer,
                reasons=["session_too_large"],
                detail={"idp": name, "roles": len(principal.roles)},
                **audit_base,
            )
        )
        return _failure_page(
            400,
            "Your sign-in carries more than a browser session can hold (too many roles, "
            "licences or privileges from the identity provider). Ask the hospital's IT to "
            "send fewer claims to this broker.",
        )
    await state.audit.emit(
        AuditEvent(
            kind=EventKind.LOGIN,
            outcome=Outcome.SUCCESS,
            subject=principal.id,
            issuer=principal.issuer,
            roles=list(principal.roles),
            detail={"idp": name, "acr": principal.acr, "amr": list(principal.amr)},
            **audit_base,
        )
    )
    return RedirectResponse(_safe_next(target), status_code=303)


def _merge_id_token(principal: Principal, userinfo: dict[str, Any]) -> Principal:
    """Authentication facts the ID token is authoritative for (acr, amr, auth_time, sid)."""
    acr = userinfo.get("acr")
    auth_time = userinfo.get("auth_time")
    sid = userinfo.get("sid")
    amr = userinfo.get("amr")
    return replace(
        principal,
        via="session",
        acr=str(acr) if isinstance(acr, str | int) else principal.acr,
        auth_time=auth_time if isinstance(auth_time, int) else principal.auth_time,
        idp_session_id=sid if isinstance(sid, str) else principal.idp_session_id,
        amr=tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else principal.amr,
    )


@router.get(
    "/logout",
    summary="Ask before signing out",
    status_code=303,
    response_class=RedirectResponse,
    responses=error_responses(
        also={
            303: redirect_response(
                "To the sign-out page (a form that posts here), or, signed out, the start page."
            ),
        },
    ),
)
async def logout_page(request: Request) -> Response:
    """A GET changes nothing: a link or an image on another site cannot sign a reader out."""
    signed_in = principal_from_session(request) is not None
    return RedirectResponse("/signout" if signed_in else "/", status_code=303)


@router.post(
    "/logout",
    summary="End the session here and at the IdP",
    status_code=303,
    response_class=RedirectResponse,
    responses=error_responses(
        400,
        403,
        503,
        also={
            302: redirect_response("Signed out here: on to the IdP's end-session endpoint."),
            303: redirect_response("Signed out (or never signed in): to the start page."),
        },
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {CSRF_FIELD: {"type": "string"}},
                        "required": [CSRF_FIELD],
                    }
                }
            },
        }
    },
)
async def logout(request: Request) -> Response:
    """Sign out: the form of the sign-out page, with this session's CSRF token."""
    state = state_of(request)
    principal = principal_from_session(request)
    if principal is None:
        request.session.clear()
        return RedirectResponse("/", status_code=303)
    async with request.form(max_files=0, max_fields=2, max_part_size=4096) as form:
        submitted = form.get(CSRF_FIELD)
    if not check_csrf(request, submitted):
        raise BadRequest("This sign-out form has expired: open the sign-out page again.")
    request.session.clear()
    revoke_until = time.time() + state.settings.identity.session_absolute_seconds
    base = {
        "subject": principal.id,
        "issuer": principal.issuer,
        "session_id": principal.session_id,
        **RequestContext.audit_fields(request),
    }
    await state.audit.emit(AuditEvent(kind=EventKind.LOGOUT, outcome=Outcome.SUCCESS, **base))
    if principal.session_id:
        await revoke_everywhere(
            state.revocations,
            state.audit,
            RevocationKind.SESSION,
            principal.session_id,
            until=revoke_until,
            detail={"by": "logout"},
            **base,
        )
    issuer = state.bearer.issuer(principal.issuer)
    client = state.oauth.create_client(issuer.label) if issuer else None
    if client is None:
        return RedirectResponse("/", status_code=303)
    try:
        metadata = await client.load_server_metadata()
        if not metadata.get("end_session_endpoint"):
            return RedirectResponse("/", status_code=303)
        response: Response = await client.logout_redirect(
            request,
            post_logout_redirect_uri=f"{str(state.settings.public_url).rstrip('/')}/",
            client_id=issuer.client_id if issuer else None,
        )
    except (httpx.HTTPError, ValueError) as exc:
        # signed out here already; say that the IdP's own session may still be alive
        raise DependencyUnavailable(
            "Signed out here, but the identity provider could not be reached to end its session."
        ) from exc
    return response


@router.post(
    "/backchannel-logout",
    summary="OIDC Back-Channel Logout from the IdP",
    response_class=Response,
    responses=error_responses(
        400, 503, also={200: {"description": "The sessions the token names are revoked."}}
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"logout_token": {"type": "string", "minLength": 1}},
                        "required": ["logout_token"],
                    }
                }
            },
        }
    },
)
async def backchannel_logout(request: Request) -> Response:
    state = state_of(request)
    async with request.form(max_files=0, max_fields=4) as form:
        token = form.get("logout_token")
    if not isinstance(token, str) or not token:
        raise BadRequest("logout_token is required")
    claims = await _verify_logout_token(state, token)
    until = time.time() + state.settings.identity.session_absolute_seconds
    base = {
        "issuer": str(claims["iss"]),
        "detail": {"by": "backchannel_logout"},
        **RequestContext.audit_fields(request),
    }
    if isinstance(claims.get("sid"), str):
        await revoke_everywhere(
            state.revocations,
            state.audit,
            RevocationKind.IDP_SESSION,
            claims["sid"],
            until=until,
            **base,
        )
    issuer = state.bearer.issuer(str(claims["iss"]))
    if issuer is not None and isinstance(claims.get("sub"), str) and not claims.get("sid"):
        subject = claims_to_principal(claims, issuer).id
        await revoke_everywhere(
            state.revocations,
            state.audit,
            RevocationKind.SUBJECT,
            subject,
            until=until,
            subject=subject,
            **base,
        )
    return Response(status_code=200, headers={"Cache-Control": "no-store"})


async def _verify_logout_token(state: AppState, token: str) -> dict[str, Any]:
    """OIDC Back-Channel Logout 1.0 §2.6: signature, iss, aud, iat, events, sid/sub, no nonce."""
    try:
        issuer, claims = await state.bearer.verify_signed(token)
    except TokenRejected as exc:
        raise BadRequest("invalid logout_token") from exc
    events = claims.get("events")
    now = time.time()
    iat = claims.get("iat")
    if (
        issuer.client_id not in string_list(claims.get("aud"))
        or not isinstance(events, dict)
        or _BCL_EVENT not in events
        or "nonce" in claims
        or not (claims.get("sid") or claims.get("sub"))
        or not isinstance(iat, int)
        or iat > now + state.settings.identity.leeway_seconds
        or iat < now - 600
    ):
        raise BadRequest("invalid logout_token")
    return claims
