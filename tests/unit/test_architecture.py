"""Architecture invariants, checked on the code itself.

1. Every route authenticates through ``CurrentPrincipal`` unless it is on the short public list.
2. No function reaches the PACS through the proxy or seals a link without asking the policy
   (``enforcer.authorize``) in the same function. Escape: a ``# lint: no-decision (why)`` comment
   on the call's line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from fastapi.routing import APIRoute

from broker.app import create_app
from broker.config import Settings
from broker.identity.dependencies import current_principal

# Public on purpose: probes, metrics, and the login flow itself. The link redemption route
# authenticates inside the handler (after opening the link, so refusals are audited with it).
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/auth/login",
    "/auth/callback",
    "/auth/logout",
    "/auth/backchannel-logout",
    "/app-config.js",  # the viewer's configuration: static code, no data
    "/fhir/metadata",  # the FHIR CapabilityStatement: what the endpoints are, no data
    "/init-service-worker.js",  # unregisters service workers: static code, no data
    "/studies/lookup",  # a redirect to a study's page, which authenticates
}
# The reading room's pages authenticate inside too: signed out, they answer with the sign-in
# page (and a way back), not a 401.
AUTHENTICATES_INSIDE = {
    "/links/{token}/dicom-web/{path:path}",
    "/",
    "/studies/{study_uid}",
    "/studies/{study_uid}/open",
    "/signout",
    "/read/{token}/{route:path}",
    # FHIR answers its errors as OperationOutcome, so it calls current_principal itself
    "/fhir/Consent",
    "/fhir/Consent/{consent_id}",
}
GUARDED_CALLS = {"forward", "seal"}  # state.proxy.forward(...), state.links.seal(...)
BROKER = Path(__file__).resolve().parents[2] / "broker"


def _api_routes(routes: list[object], prefix: str = "") -> list[tuple[str, APIRoute]]:
    """Every APIRoute with its full path (FastAPI keeps included routers as nested objects)."""
    found: list[tuple[str, APIRoute]] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append((prefix + route.path, route))
        elif hasattr(route, "original_router"):
            context = getattr(route, "include_context", None)
            found += _api_routes(
                route.original_router.routes, prefix + getattr(context, "prefix", "")
            )
    return found


def _dependencies(route: APIRoute) -> set[object]:
    seen: set[object] = set()
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        seen.add(dep.call)
        stack.extend(dep.dependencies)
    return seen


def test_every_route_authenticates_or_is_listed_public() -> None:
    app = create_app(Settings(environment="development", audit_sink="log"))
    routes = _api_routes(list(app.routes))
    paths = {path for path, _ in routes}
    assert {"/api/links", "/api/decisions", "/api/me"} <= paths  # the walk finds the routers
    unauthenticated = (
        {path for path, route in routes if current_principal not in _dependencies(route)}
        - PUBLIC
        - AUTHENTICATES_INSIDE
    )
    assert unauthenticated == set(), f"routes without CurrentPrincipal: {sorted(unauthenticated)}"
    assert paths >= AUTHENTICATES_INSIDE


def test_redemption_authenticates_inside() -> None:
    source = (BROKER / "links" / "endpoints.py").read_text()
    handler = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "redeem"
    )
    calls = {
        n.func.id
        for n in ast.walk(handler)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert "current_principal" in calls


def _attribute_calls(function: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(function)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]


def test_the_product_does_not_import_the_dev_stack() -> None:
    """broker/ and streams/ ship in the image; devstack/ (with its dev credentials) does not.
    Only the CLI's ``telerad stack`` imports it, inside the command, after checking it is there."""
    offenders = []
    for root in (BROKER, BROKER.parent / "streams"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "devstack" or n.startswith("devstack.") for n in names):
                    if path.name == "cli.py" and root == BROKER and node.col_offset > 0:
                        continue  # inside a function of the CLI's stack commands
                    offenders.append(f"{path.relative_to(BROKER.parent)}:{node.lineno}")
    assert not offenders, f"the product imports the dev stack: {offenders}"
    assert not (BROKER / "stack").exists()


def test_no_pacs_access_or_link_without_a_decision() -> None:
    offenders: list[str] = []
    for path in BROKER.rglob("*.py"):
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        # Functions of this module that ask the policy: calling one of them counts as asking
        # (redemption asks through the helper that opens a decision window).
        deciders = {
            f.name
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and "authorize"
            in {c.func.attr for c in _attribute_calls(f) if isinstance(c.func, ast.Attribute)}
        }
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            calls = _attribute_calls(function)
            names = {c.func.attr for c in calls if isinstance(c.func, ast.Attribute)}
            called = {
                n.func.id
                for n in ast.walk(function)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
            if "authorize" in names or called & deciders:
                continue
            for call in calls:
                assert isinstance(call.func, ast.Attribute)
                receiver = call.func.value
                owner = (
                    receiver.attr
                    if isinstance(receiver, ast.Attribute)
                    else getattr(receiver, "id", "")
                )
                if call.func.attr in GUARDED_CALLS and owner in {"proxy", "links"}:
                    if "# lint: no-decision" not in lines[call.lineno - 1]:
                        offenders.append(
                            f"{path.relative_to(BROKER.parent)}:{call.lineno} {function.name}"
                        )
    assert offenders == [], offenders


def test_the_lint_would_catch_a_bypass(tmp_path: Path) -> None:
    """The check above is not vacuous: a handler that proxies without authorize is found."""
    bad = "async def h(state):\n    return await state.proxy.forward(1, 2, 3, 4)\n"
    function = ast.parse(bad).body[0]
    calls = _attribute_calls(function)
    assert [c.func.attr for c in calls if isinstance(c.func, ast.Attribute)] == ["forward"]
    assert "authorize" not in {c.func.attr for c in calls if isinstance(c.func, ast.Attribute)}
