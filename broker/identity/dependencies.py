"""Who is calling: one dependency, declared once, used by every protected route.

    CurrentPrincipal = Annotated[Principal, Depends(current_principal)]

A route without it is public; the route-lint test lists the few that are.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from broker.audit import AuditEvent, EventKind, Outcome
from broker.errors import Unauthenticated
from broker.identity.bearer import TokenRejected
from broker.identity.login import principal_from_session
from broker.identity.principal import Principal
from broker.revocation import RevocationKind
from broker.state import state_of

__all__ = ["CurrentPrincipal", "current_principal"]


async def current_principal(request: Request) -> Principal:
    """The authenticated caller: a bearer token if one is sent, else the browser session."""
    state = state_of(request)
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Use the Bearer scheme.", error="invalid_request")
        try:
            principal = await state.bearer.validate(token.strip())
        except TokenRejected as exc:
            state.metrics.token_rejections.labels(exc.reason).inc()
            await state.audit.emit(
                AuditEvent(
                    kind=EventKind.TOKEN_REJECTED,
                    outcome=Outcome.FAILURE,
                    issuer=exc.issuer,
                    reasons=[exc.reason],
                    client_ip=request.client.host if request.client else None,
                    user_agent=(request.headers.get("user-agent") or "")[:256] or None,
                )
            )
            raise Unauthenticated("The access token is not valid.") from None
    else:
        session_principal = principal_from_session(request)
        if session_principal is None:
            raise Unauthenticated("Authentication is required.", error="invalid_token")
        principal = session_principal
    if state.revocations.is_revoked(RevocationKind.SUBJECT, principal.id):
        raise Unauthenticated("The access token is not valid.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
