"""The reading room's pages: sign-in, the worklist, one study, and the refusals, in words.

    GET  /                         sign-in (no session) or the worklist
    GET  /studies/{uid}            one study: open it, or break the glass
    POST /studies/{uid}/open       issue a link (action ``issue_link``) and open the viewer

Pages are rendered on the server (Jinja2), carry no inline script or style, and every form
carries the session's CSRF token. A page that needs a session and has none sends the browser
through sign-in and back to where it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from broker.errors import (
    BadRequest,
    DependencyUnavailable,
    Forbidden,
    NotFound,
    RateLimited,
    StepUpRequired,
    TeleradError,
    Unauthenticated,
    UpstreamError,
)
from broker.identity.dependencies import current_principal
from broker.identity.principal import Principal
from broker.links.endpoints import IssueLinkRequest, issue_link
from broker.pages.security import CSRF_FIELD, check_csrf, csrf_token, origin_of, page_csp
from broker.pages.worklist import load_worklist, study_row
from broker.policy import RequestContext
from broker.state import state_of

__all__ = ["REASON_WORDS", "render_refusal", "router", "templates"]

log = logging.getLogger("telerad.pages")
router = APIRouter(tags=["pages"], include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

BREAK_GLASS_MIN = 20  # characters; the policy's minimum (policies/telerad/access/requirements.rego)

# The policy's reason codes in a reader's words (codes: policies/telerad/access/access.rego).
REASON_WORDS: dict[str, str] = {
    "break_glass_justification_invalid": "The emergency justification is missing or too short.",
    "break_glass_not_permitted": "Emergency access is available to radiologists only.",
    "consent_denied": "The patient has opted out of external reading.",
    "consent_missing": "No consent for external reading is on record for this study.",
    "download_not_permitted": "You are not permitted to download studies.",
    "not_assigned": "The study is not on your worklist and your group does not cover it now.",
    "not_licensed": "You hold no licence in the facility's jurisdiction.",
    "not_privileged": "You hold no privileges at this facility.",
    "operation_not_permitted": "That is not permitted for your role.",
    "role_not_permitted": "Your role does not permit this.",
    "sensitive_requires_assignment": "This sensitive study must be assigned to you explicitly.",
    "step_up_required": "A stronger sign-in (one-time code) is required.",
    "unknown_facility": "The study's facility is not known to the broker.",
    "unknown_radiologist": "You are not registered as a radiologist here.",
}


def _idp_origins(request: Request) -> list[str]:
    return [origin_of(str(i.issuer)) for i in state_of(request).settings.issuers]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with the strict policy and no caching (pages show PHI)."""
    principal = context.pop("principal", None)
    response = templates.TemplateResponse(
        request,
        template,
        {"principal": principal, "csrf": csrf_token(request) if principal else "", **context},
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = page_csp(form_targets=_idp_origins(request))
    response.headers["Cache-Control"] = "no-store"
    return response


def _login_url(request: Request, next_path: str, **extra: str | int) -> str | None:
    state = state_of(request)
    idps = [i.label for i in state.settings.issuers if i.client_id]
    if len(idps) != 1:
        return None
    return "/auth/login?" + urlencode({"idp": idps[0], "next": next_path, **extra})


def _sign_in(request: Request, next_path: str, status_code: int = 200) -> Response:
    """The sign-in page (with every IdP), or straight to the only one there is."""
    state = state_of(request)
    idps = [
        {"label": i.label, "url": "/auth/login?" + urlencode({"idp": i.label, "next": next_path})}
        for i in state.settings.issuers
        if i.client_id
    ]
    return render(request, "signin.html", status_code, idps=idps, next_path=next_path)


async def _principal(request: Request) -> Principal | None:
    try:
        return await current_principal(request)
    except Unauthenticated:
        return None


def render_refusal(
    request: Request, exc: TeleradError, principal: Principal | None, study_uid: str | None = None
) -> HTMLResponse:
    """The page for a refusal: what happened, in words, and what the reader can do."""
    kind = {
        400: "bad_request",
        401: "sign_in",
        403: "forbidden",
        404: "not_found",
        410: "gone",
        429: "rate_limited",
        502: "pacs_down",
        503: "unavailable",
    }.get(exc.status_code, "error")
    codes = exc.reasons if isinstance(exc, Forbidden) else ()
    words = [REASON_WORDS.get(code, code.replace("_", " ")) for code in codes]
    known = (400, 401, 403, 404, 410, 429, 502, 503)
    status = exc.status_code if exc.status_code in known else 500
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    response = render(
        request,
        "refusal.html",
        status,
        principal=principal,
        kind=kind,
        detail=exc.detail,
        reasons=words,
        study_uid=study_uid,
        retry_after=retry_after,
    )
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _sign_in(request, "/")
    context = RequestContext.of(request)
    try:
        rows = await load_worklist(state_of(request), principal, context)
    except (DependencyUnavailable, UpstreamError) as exc:
        return render_refusal(request, exc, principal)
    return render(request, "worklist.html", principal=principal, rows=rows)


@router.get("/signout", response_class=HTMLResponse)
async def signout_page(request: Request) -> Response:
    """Sign out, confirmed with a form (a GET signs nobody out)."""
    principal = await _principal(request)
    if principal is None:
        return RedirectResponse("/", status_code=303)
    return render(request, "signout.html", principal=principal)


@router.get("/studies/lookup")
async def lookup(uid: str = "") -> Response:
    """The worklist's find-a-study form: to that study's page (which decides what it shows)."""
    uid = uid.strip()
    return RedirectResponse(f"/studies/{quote(uid[:64], safe='.')}" if uid else "/", 303)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
async def study_page(request: Request, study_uid: str, stepped_up: bool = False) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _sign_in(request, f"/studies/{quote(study_uid)}")
    try:
        row = await study_row(state_of(request), principal, study_uid, RequestContext.of(request))
    except TeleradError as exc:
        if isinstance(exc, NotFound):
            # not on the worklist: break-glass is still offered, clearly marked
            return render(
                request,
                "study.html",
                404,
                principal=principal,
                row=None,
                study_uid=study_uid,
                break_glass_min=BREAK_GLASS_MIN,
            )
        return render_refusal(request, exc, principal, study_uid)
    return render(
        request,
        "study.html",
        principal=principal,
        row=row,
        study_uid=study_uid,
        stepped_up=stepped_up,
        break_glass_min=BREAK_GLASS_MIN,
    )


@router.post("/studies/{study_uid}/open")
async def open_study(request: Request, study_uid: str) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _sign_in(request, f"/studies/{quote(study_uid)}", status_code=401)
    async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
        submitted, justification = form.get(CSRF_FIELD), form.get("justification")
    if not check_csrf(request, submitted):
        return render_refusal(
            request, BadRequest("This form has expired. Please go back and try again."), principal
        )
    reason = justification.strip() if isinstance(justification, str) else ""
    if isinstance(justification, str) and len(reason) < BREAK_GLASS_MIN:
        exc = Forbidden(reasons=("break_glass_justification_invalid",))
        return render_refusal(request, exc, principal, study_uid)
    try:
        link = await issue_link(
            IssueLinkRequest(study_uid=study_uid, break_glass_justification=reason or None),
            principal,
            request,
        )
    except StepUpRequired as exc:
        # back to this study's page after the IdP's step-up, not to the form's POST
        # at the IdP the reader signed in with (there may be several)
        asked = dict(parse_qsl(urlsplit(exc.login_url or "").query))
        back = f"/studies/{quote(study_uid)}?stepped_up=true"
        extra = {k: asked[k] for k in ("acr_values", "max_age") if k in asked}
        if "idp" in asked:
            params: dict[str, str] = {"idp": asked["idp"], "next": back} | extra
            url: str | None = "/auth/login?" + urlencode(params)
        else:
            url = _login_url(request, back, **extra)
        if url is None:
            return render_refusal(request, exc, principal, study_uid)
        return RedirectResponse(url, status_code=303)
    except TeleradError as exc:
        return render_refusal(request, exc, principal, study_uid)
    token = str(link["dicomweb_root"]).rstrip("/").rsplit("/", 2)[-2]
    viewer = f"/read/{token}/viewer?" + urlencode({"StudyInstanceUIDs": study_uid})
    return RedirectResponse(viewer, status_code=303)
