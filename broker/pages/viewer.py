"""The OHIF viewer, on the broker's own origin, configured for one study link at a time.

    GET /read/{token}/{route}     OHIF's page, once the link opens, is live and is the reader's
    GET /app-config.js            OHIF's configuration, derived from the page's own path
    GET /init-service-worker.js   no service worker (any earlier one on this origin removed)
    GET /<file of OHIF's dist>    OHIF's bundle (index.html and any service worker excepted)

The page's path carries the link (``/read/<token>/viewer?StudyInstanceUIDs=<uid>``), never a
query string, and the link alone opens nothing: every DICOMweb request OHIF makes goes to
``/links/<token>/dicom-web`` and is checked there against the browser session the link is bound
to. The configuration names that one root as OHIF's only data source, with no study list and no
way to load another configuration or server from the URL.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from broker.errors import DependencyUnavailable, Forbidden, Gone, NotFound
from broker.links.endpoints import _bound_to as bound_to
from broker.links.token import LinkInvalid
from broker.pages.ohif_package import NEVER_SERVED
from broker.pages.routes import _principal, _sign_in, render_refusal
from broker.pages.security import origin_of, page_csp
from broker.revocation import RevocationKind
from broker.state import state_of

__all__ = ["APP_CONFIG", "OhifFiles", "router"]

router = APIRouter(tags=["viewer"], include_in_schema=False)

# OHIF's window.config for the link in the page's path (see docs/ohif-notes.md).
APP_CONFIG = """\
(function () {
  "use strict";
  var m = /^\\/read\\/([A-Za-z0-9._~-]{16,1024})\\//.exec(window.location.pathname);
  var root = m ? window.location.origin + "/links/" + m[1] + "/dicom-web" : "about:blank";
  window.config = {
    routerBasename: m ? "/read/" + m[1] : "/",
    showStudyList: false,
    extensions: [],
    modes: [],
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    investigationalUseDialog: { option: "never" },
    // no onboarding tour over the first image a reader opens
    customizationService: { "ohif.tours": { $set: [] } },
    defaultDataSourceName: "link",
    dataSources: [
      {
        namespace: "@ohif/extension-default.dataSourcesModule.dicomweb",
        sourceName: "link",
        configuration: {
          friendlyName: "Study link",
          name: "link",
          wadoUriRoot: root,
          qidoRoot: root,
          wadoRoot: root,
          qidoSupportsIncludeField: false,
          imageRendering: "wadors",
          thumbnailRendering: "wadors",
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: false,
          omitQuotationForMultipartRequest: true,
          bulkDataURI: { enabled: true }
        }
      }
    ]
  };
})();
"""
# Never served from the bundle: the unconfigured entry page and any service worker (no PHI cache).
_WITHHELD = NEVER_SERVED | {"index.html"}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def _inline_hashes(index: bytes) -> list[str]:
    """CSP hashes of the inline scripts OHIF's index.html carries (allowed by hash, not inline)."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(index)
    ]


def _viewer_csp(request: Request, index: bytes) -> str:
    idps = [str(i.issuer) for i in state_of(request).settings.issuers]
    # OHIF compiles its codecs to WebAssembly and styles elements from script.
    return page_csp(
        form_targets=[origin_of(u) for u in idps],
        script_extra=["'wasm-unsafe-eval'", *_inline_hashes(index)],
        style_extra=["'unsafe-inline'"],
    )


# In place of OHIF's registration script: no service worker here (nothing of a study is cached on
# the workstation), and one left on this origin from before is removed.
NO_SERVICE_WORKER = """\
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.getRegistrations().then(function (registrations) {
    registrations.forEach(function (registration) { registration.unregister(); });
  });
}
"""


@router.get("/init-service-worker.js")
async def no_service_worker() -> Response:
    return Response(
        NO_SERVICE_WORKER, media_type="text/javascript", headers={"Cache-Control": "no-store"}
    )


@router.get("/app-config.js")
async def app_config() -> Response:
    return Response(
        APP_CONFIG,
        media_type="text/javascript",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/read/{token}/{route:path}")
async def read(request: Request, token: str, route: str) -> Response:
    """OHIF for one link: refused in words if the link is bad, expired, revoked or not yours."""
    state = state_of(request)
    principal = await _principal(request)
    try:
        try:
            claims = state.links.open(token)
        except LinkInvalid:
            raise NotFound() from None
        if claims.expires_at <= time.time():
            raise Gone()
        if state.revocations.is_revoked(RevocationKind.LINK, claims.link_id):
            raise Gone("This link has been revoked.")
        if principal is None:
            query = f"?{request.url.query}" if request.url.query else ""
            return _sign_in(request, request.url.path + query)
        if principal.id != claims.subject or not bound_to(claims, principal, request):
            raise Forbidden("This link was issued to someone else.")
        viewer = state.settings.viewer_dir
        if viewer is None or not (viewer / "index.html").is_file():
            raise DependencyUnavailable("The viewer is not installed on this broker.")
    except (NotFound, Gone, Forbidden, DependencyUnavailable) as exc:
        return render_refusal(request, exc, principal)
    index = (viewer / "index.html").read_bytes()
    return Response(
        index,
        media_type="text/html",
        headers={
            "Content-Security-Policy": _viewer_csp(request, index),
            "Cache-Control": "no-store",
        },
    )


# The policy a script of the bundle runs under when it is started as a worker (a worker takes the
# CSP of its own script's response; a script the page loads ignores it). OHIF's workers import
# chunks, compile their codecs to WebAssembly and fetch the .wasm and DICOMweb from this origin.
# The image decode worker's codecs (Emscripten embind: JPEG 2000, JPEG-LS, JPEG) build functions
# from strings, so workers, and only workers, may eval; they have no DOM and reach this origin only.
WORKER_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


class OhifFiles(StaticFiles):
    """OHIF's bundle, minus what must come from the broker or must never exist (see above)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = str(scope.get("path", "")).lstrip("/")
        if name in _WITHHELD or name.startswith("."):
            await Response(status_code=404)(scope, receive, send)
            return
        if not name.endswith(".js"):
            await super().__call__(scope, receive, send)
            return

        async def send_with_worker_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = WORKER_CSP
            await send(message)

        await super().__call__(scope, receive, send_with_worker_csp)
