"""The reading room's pages against the real stack: sign-in, worklist by policy, open, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from devstack.samples import sample_studies
from tests.integration.conftest import Broker
from tests.integration.helpers import browser_login, expired_link

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(broker: Broker, user: str) -> httpx.Response:
    """Sign in at the real Keycloak and land on the worklist, as a browser would."""
    back = await browser_login(
        broker.client, broker.url, idp="hospital-a", username=user, next_path="/"
    )
    assert back.status_code == 303 and back.headers["location"] == "/", back.text[:500]
    return await broker.client.get(f"{broker.url}/")


async def test_signed_out_home_is_the_sign_in_page(broker: Broker) -> None:
    page = await broker.client.get(f"{broker.url}/")
    assert page.status_code == 200
    assert "Sign in with hospital-a" in page.text
    assert "/auth/login?idp=hospital-a" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"


async def test_json_answers_get_a_policy_that_allows_nothing(broker: Broker) -> None:
    answer = await broker.client.get(f"{broker.url}/healthz")
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")


async def test_worklist_lists_what_the_policy_allows_and_nothing_else(broker: Broker) -> None:
    landed = await sign_in(broker, "ada")
    assert landed.status_code == 200, landed.text[:500]
    listed = set(re.findall(r'data-study-uid="([0-9.]+)"', landed.text))
    assert STUDY["stolaf-ct-chest"].study_uid in listed  # assigned to ada
    assert STUDY["mercy-ct-head"].study_uid not in listed  # ben's facility
    assert STUDY["stolaf-ct-optout"].study_uid not in listed  # the patient opted out
    assert STUDY["stolaf-mr-vip"].study_uid not in listed  # sensitive, not assigned to her
    searches = [e for e in broker.audit.events if e.action == "search"]
    assert {e.study_uid for e in searches} >= {s.study_uid for s in STUDY.values()}


async def test_open_needs_the_csrf_token_and_leads_to_the_viewer(broker: Broker) -> None:
    page = await sign_in(broker, "ada")
    csrf = _CSRF.search(page.text)
    assert csrf, page.text[:1000]
    uid = STUDY["stolaf-ct-chest"].study_uid
    forged = await broker.client.post(f"{broker.url}/studies/{uid}/open", data={"csrf": "x" * 43})
    assert forged.status_code == 400 and "form has expired" in forged.text
    cross_site = await broker.client.post(
        f"{broker.url}/studies/{uid}/open",
        data={"csrf": csrf.group(1)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    opened = await broker.client.post(
        f"{broker.url}/studies/{uid}/open", data={"csrf": csrf.group(1)}
    )
    assert opened.status_code == 303, opened.text[:500]
    assert re.fullmatch(
        rf"/read/[A-Za-z0-9._-]+/viewer\?StudyInstanceUIDs={re.escape(uid)}",
        opened.headers["location"],
    )
    assert any(e.kind.value == "link.issued" and e.study_uid == uid for e in broker.audit.events)


async def test_refusals_are_pages_with_the_reasons_in_words(broker: Broker) -> None:
    page = await sign_in(broker, "ada")
    csrf = _CSRF.search(page.text)
    assert csrf
    uid = STUDY["stolaf-ct-optout"].study_uid
    study = await broker.client.get(f"{broker.url}/studies/{uid}")
    assert study.status_code == 404 and "Emergency access" in study.text
    refused = await broker.client.post(
        f"{broker.url}/studies/{uid}/open", data={"csrf": csrf.group(1)}
    )
    assert refused.status_code == 403
    assert "opted out of external reading" in refused.text
    short = await broker.client.post(
        f"{broker.url}/studies/{uid}/open", data={"csrf": csrf.group(1), "justification": "now"}
    )
    assert short.status_code == 403 and "justification is missing or too short" in short.text


async def test_break_glass_opens_an_unassigned_study_and_is_alerted(broker: Broker) -> None:
    page = await sign_in(broker, "ben")
    csrf = _CSRF.search(page.text)
    assert csrf
    uid = STUDY["stolaf-ct-chest"].study_uid  # not ben's facility or worklist
    opened = await broker.client.post(
        f"{broker.url}/studies/{uid}/open",
        data={"csrf": csrf.group(1), "justification": "suspected stroke, on-call radiologist away"},
    )
    if opened.status_code == 303:
        assert any(e.kind.value == "break_glass" for e in broker.audit.events)
    else:  # the policy may refuse break-glass without a licence in the jurisdiction
        assert opened.status_code == 403 and "You may not open this study" in opened.text


@pytest.fixture
def ohif_dist(broker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for OHIF's dist/ (the route's checks are under test here, not OHIF)."""
    (tmp_path / "index.html").write_text("<!doctype html><title>viewer stand-in</title>")
    (tmp_path / "app.bundle.js").write_text("/* bundle */")
    (tmp_path / "sw.js").write_text("/* a service worker must never be served */")
    monkeypatch.setenv("TELERAD_VIEWER_DIR", str(tmp_path))
    return tmp_path


async def _open(broker: Broker, page: httpx.Response, key: str) -> str:
    csrf = _CSRF.search(page.text)
    assert csrf
    opened = await broker.client.post(
        f"{broker.url}/studies/{STUDY[key].study_uid}/open", data={"csrf": csrf.group(1)}
    )
    assert opened.status_code == 303, opened.text[:500]
    return str(opened.headers["location"])


async def test_the_viewer_opens_only_for_the_link_holder(ohif_dist: Path, broker: Broker) -> None:
    viewer = await _open(broker, await sign_in(broker, "ada"), "stolaf-ct-chest")
    page = await broker.client.get(f"{broker.url}{viewer}")
    assert page.status_code == 200 and "viewer stand-in" in page.text
    csp = page.headers["content-security-policy"]
    assert "'wasm-unsafe-eval'" in csp and " 'unsafe-eval'" not in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    config = await broker.client.get(f"{broker.url}/app-config.js")
    assert config.status_code == 200 and "showStudyList: false" in config.text
    assert (await broker.client.get(f"{broker.url}/app.bundle.js")).status_code == 200
    assert (await broker.client.get(f"{broker.url}/sw.js")).status_code == 404
    no_sw = await broker.client.get(f"{broker.url}/init-service-worker.js")
    assert no_sw.status_code == 200 and "unregister()" in no_sw.text
    assert (await broker.client.get(f"{broker.url}/index.html")).status_code == 404

    broker.client.cookies.clear()
    signed_out = await broker.client.get(f"{broker.url}{viewer}")
    assert "Sign in with hospital-a" in signed_out.text
    await sign_in(broker, "ben")
    refused = await broker.client.get(f"{broker.url}{viewer}")
    assert refused.status_code == 403 and "You may not open this study" in refused.text


async def test_an_expired_link_shows_the_expiry_page(ohif_dist: Path, broker: Broker) -> None:
    await sign_in(broker, "ada")
    state = broker.app.state.telerad
    expired = expired_link(STUDY["stolaf-ct-chest"].study_uid)
    page = await broker.client.get(f"{broker.url}/read/{state.links.seal(expired)}/viewer")
    assert page.status_code == 410 and "This link has expired" in page.text
    bad = await broker.client.get(f"{broker.url}/read/{'A' * 40}/viewer")
    assert bad.status_code == 404 and "Not found" in bad.text


@pytest.fixture
def opa_down(broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing answers where the broker looks for OPA (requested before ``broker``)."""
    from devstack._procs import free_port

    monkeypatch.setenv("TELERAD_OPA__URL", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def pacs_down(broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing answers where the broker looks for the PACS (requested before ``broker``)."""
    from devstack._procs import free_port

    monkeypatch.setenv("TELERAD_PACS__URL", f"https://127.0.0.1:{free_port()}/dicom-web")


async def test_policy_down_is_a_503_page_and_nothing_is_listed(
    opa_down: None, broker: Broker
) -> None:
    page = await sign_in(broker, "ada")
    assert page.status_code == 503, page.text[:500]
    assert "Temporarily unavailable" in page.text and "nothing can be granted" in page.text
    assert "data-study-uid" not in page.text


async def test_pacs_down_is_a_502_page(pacs_down: None, broker: Broker) -> None:
    page = await sign_in(broker, "ada")
    assert page.status_code == 502, page.text[:500]
    assert "The image archive is not answering" in page.text
