"""The reading room in a real browser: Debian's Chromium, the real OHIF viewer, the real stack.

A radiologist signs in at Keycloak, sees the worklist the policy allows, opens a study and reads
it in OHIF through a study link; the DICOMweb requests OHIF makes all succeed, the pixels on its
canvas are not blank, and the access is on the audit topic. The refusals a reader meets (another
person's link, step-up, an expired link) are seen as the browser shows them.

Set ``TELERAD_SCREENSHOTS=<dir>`` to keep the screenshots (the README's come from this test).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from kafka import KafkaConsumer

from broker.audit.cloudevents import from_record
from broker.config import Settings
from devstack import provision
from devstack.kafka_cluster import CONSUMER, client_kwargs
from devstack.samples import sample_studies
from devstack.stack import Stack
from tests.integration.conftest import LiveBroker, serve
from tests.integration.helpers import EVE_TOTP_BASE32, PASSWORD, expired_link, totp

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
LOAD_TIMEOUT_MS = 90_000

# Chromium as root in a sandbox with no network beyond loopback: no sandbox, no GPU (WebGL by
# SwiftShader), and none of the background connections that the closed network would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# Statistics of every 2D canvas OHIF draws the image on: how many pixels are not black.
_CANVAS_PIXELS = """() => {
  const found = [];
  for (const canvas of document.querySelectorAll('canvas')) {
    if (canvas.width < 64 || canvas.height < 64) continue;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) continue;
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0, levels = new Set();
    for (let i = 0; i < data.length; i += 16) {
      const v = data[i] + data[i + 1] + data[i + 2];
      if (v > 30) lit++;
      levels.add(v >> 3);
    }
    found.push({ width: canvas.width, height: canvas.height, lit, sampled: data.length / 16,
                 levels: levels.size });
  }
  return found;
}"""


@dataclass
class NetworkLog:
    """What the page asked of the broker's DICOMweb proxy, and what failed."""

    dicomweb: list[tuple[str, int]] = field(default_factory=list)
    failed_requests: list[tuple[str, str]] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # any answer >= 400, script errors

    @property
    def failed(self) -> list[str]:
        """DICOMweb requests that failed: an error answer, or a request that never completed.

        OHIF cancels a request it no longer needs (the thumbnail's copy of a frame the viewport
        already loaded): ``net::ERR_ABORTED`` for a URL the broker also answered 2xx is the
        viewer's own doing, not a failure.
        """
        answered = {url for url, status in self.dicomweb if status < 400}
        out = [f"{status} {url}" for url, status in self.dicomweb if status >= 400]
        for failure, url in self.failed_requests:
            if "ERR_ABORTED" in failure and url in answered:
                continue
            out.append(f"{failure} {url}")
        return out

    def attach(self, page: Any) -> None:
        def on_response(response: Any) -> None:
            if response.status >= 400:
                self.errors.append(f"{response.status} {response.url}")
            if "/dicom-web" in response.url:
                self.dicomweb.append((response.url, response.status))

        def on_failed(request: Any) -> None:
            if "/dicom-web" in request.url:
                self.failed_requests.append((str(request.failure), request.url))

        def on_console(message: Any) -> None:
            if "Content Security Policy" in message.text.replace("-", " "):
                self.csp_violations.append(message.text)

        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))


@dataclass
class ReadingRoom:
    live: LiveBroker
    audit_topic: str
    kafka: dict[str, Any]  # kafka-python client arguments, as the consumers' principal
    browser: Any
    shots: Path

    def new_page(self) -> tuple[Any, Any, NetworkLog]:
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        log = NetworkLog()
        log.attach(page)
        return context, page, log

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"))


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = provision.chromium_binary()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def reading_room(
    stack: Stack, broker_env: dict[str, str], chromium: Any, tmp_path: Path
) -> Iterator[ReadingRoom]:
    """The broker with the real OHIF dist, auditing to a fresh Kafka topic, served on loopback."""
    topic = f"audit-browser-{uuid.uuid4().hex[:10]}"
    env = {
        "TELERAD_VIEWER_DIR": str(provision.ohif_dist()),
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_KAFKA__AUDIT_TOPIC": topic,
    }
    shots = Path(os.environ.get("TELERAD_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, env), serve(Settings()) as live:
        yield ReadingRoom(
            live, topic, client_kwargs(stack.services["kafka"], CONSUMER), chromium, shots
        )


def sign_in(room: ReadingRoom, page: Any, username: str, *, otp: bool = False) -> None:
    """From the broker's home page through Keycloak's login form, back to the worklist."""
    page.goto(f"{room.live.url}/")
    page.get_by_role("link", name="Sign in with hospital-a").click()
    page.locator("#username").fill(username)
    page.locator("#password").fill(PASSWORD)
    page.locator("#kc-login").click()
    if otp:
        enter_otp(page)
    page.wait_for_url(f"{room.live.url}/**")


def enter_otp(page: Any) -> None:
    page.locator("#otp").fill(totp(EVE_TOTP_BASE32))
    page.locator("#kc-login").click()


def listed(page: Any) -> set[str]:
    rows = page.locator("tr[data-study-uid]")
    return set(rows.evaluate_all("rows => rows.map(r => r.dataset.studyUid)"))


def wait_for_image(page: Any) -> dict[str, int]:
    """Wait until OHIF's viewport canvas shows an image (enough lit pixels, many grey levels)."""
    deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
    seen: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        seen = page.evaluate(_CANVAS_PIXELS)
        for canvas in seen:
            if canvas["lit"] > canvas["sampled"] * 0.05 and canvas["levels"] > 16:
                return canvas
        page.wait_for_timeout(250)
    raise AssertionError(f"no image on OHIF's canvas within {LOAD_TIMEOUT_MS} ms: {seen}")


def audited(room: ReadingRoom, study_uid: str) -> list[Any]:
    consumer = KafkaConsumer(
        room.audit_topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **room.kafka,
    )
    try:
        events = [from_record(r.value, r.headers) for r in consumer]
    finally:
        consumer.close()
    return [e for e in events if e.study_uid == study_uid]


def open_from_worklist(page: Any, study_uid: str) -> float:
    started = time.monotonic()
    page.locator(f'tr[data-study-uid="{study_uid}"] button', has_text="Open").click()
    page.wait_for_url(re.compile(r".*/read/[^/]+/viewer\?StudyInstanceUIDs=.*"))
    return started


def test_ada_reads_her_study_in_ohif_and_the_access_is_audited(
    reading_room: ReadingRoom,
) -> None:
    room = reading_room
    context, page, log = room.new_page()
    try:
        page.goto(f"{room.live.url}/")
        assert page.get_by_role("link", name="Sign in with hospital-a").is_visible()
        room.shot(page, "sign-in")
        sign_in(room, page, "ada")
        uids = listed(page)
        assert STUDY["stolaf-ct-chest"].study_uid in uids
        assert STUDY["mercy-ct-head"].study_uid not in uids  # ben's hospital
        assert STUDY["stolaf-mr-vip"].study_uid not in uids  # sensitive, not hers
        room.shot(page, "worklist")

        uid = STUDY["stolaf-ct-chest"].study_uid
        started = open_from_worklist(page, uid)
        at_viewer = time.monotonic() - started
        canvas = wait_for_image(page)
        shown = time.monotonic() - started
        page.wait_for_load_state("networkidle")
        settled = time.monotonic() - started
        room.shot(page, "viewer")
        print(
            f"\nviewer: page {at_viewer:.2f} s after Open, first image {shown:.2f} s, "
            f"network idle {settled:.2f} s; {len(log.dicomweb)} DICOMweb requests "
            f"({len(log.failed_requests)} cancelled by the viewer); canvas {canvas}"
        )
        assert log.dicomweb, "OHIF made no DICOMweb request"
        assert not log.failed, log.failed
        assert not log.csp_violations, log.csp_violations
        assert not log.errors, log.errors
        assert not page.get_by_text("Scrolling Through Images").count()  # no onboarding tour
        assert all("/links/" in url for url, _ in log.dicomweb)  # never the PACS itself
        missing = page.get_by_text("One or more of the requested studies are not available")
        assert not missing.count()
    finally:
        context.close()

    events = audited(room, uid)
    kinds = sorted({e.kind.value for e in events})
    assert any(e.kind.value == "link.issued" for e in events), kinds
    # the viewer's reads: one durable grant for the decision window, then what flowed in it
    grants = [e for e in events if e.kind.value == "link.granted"]
    assert grants and all(e.subject == "npi:1000000001" for e in grants), kinds
    transferred = [e for e in events if e.kind.value == "link.transferred"]
    assert transferred and sum(e.detail["requests"] for e in transferred) >= 3, kinds


def test_ben_cannot_open_adas_link(reading_room: ReadingRoom) -> None:
    room = reading_room
    ada_context, ada, _ = room.new_page()
    ben_context, ben, _ = room.new_page()
    try:
        sign_in(room, ada, "ada")
        open_from_worklist(ada, STUDY["stolaf-ct-chest"].study_uid)
        link_page = ada.url
        token = link_page.split("/read/", 1)[1].split("/", 1)[0]

        sign_in(room, ben, "ben")
        answer = ben.goto(link_page)
        assert answer is not None and answer.status == 403
        assert ben.get_by_role("heading", name=re.compile("You may not open this study")).count()
        room.shot(ben, "refused-someone-elses-link")
        data = ben.request.get(f"{room.live.url}/links/{token}/dicom-web/studies")
        assert data.status == 403, data.text()
    finally:
        ada_context.close()
        ben_context.close()


def test_eve_steps_up_with_a_one_time_code_and_reads_the_vip_study(
    reading_room: ReadingRoom,
) -> None:
    room = reading_room
    context, page, log = room.new_page()
    uid = STUDY["stolaf-mr-vip"].study_uid
    try:
        sign_in(room, page, "eve")
        row = page.locator(f'tr[data-study-uid="{uid}"]')
        assert row.count() == 1, listed(page)
        assert "needs a one-time code" in row.inner_text()
        row.get_by_role("button", name=re.compile("Open")).click()
        enter_otp(page)  # Keycloak asks for the second factor, then sends her back to the study
        page.wait_for_url(re.compile(rf".*/studies/{re.escape(uid)}.*"))
        room.shot(page, "step-up-done")
        page.get_by_role("button", name=re.compile("^Open")).first.click()
        page.wait_for_url(re.compile(r".*/read/[^/]+/viewer\?StudyInstanceUIDs=.*"))
        wait_for_image(page)
        page.wait_for_load_state("networkidle")
        assert log.dicomweb and not log.failed, log.failed
        assert not log.csp_violations and not log.errors, (log.csp_violations, log.errors)
    finally:
        context.close()


def test_an_expired_link_shows_the_expiry_page(reading_room: ReadingRoom) -> None:
    room = reading_room
    context, page, _ = room.new_page()
    try:
        sign_in(room, page, "ada")
        expired = expired_link(STUDY["stolaf-ct-chest"].study_uid)
        token = room.live.app.state.telerad.links.seal(expired)
        answer = page.goto(f"{room.live.url}/read/{token}/viewer")
        assert answer is not None and answer.status == 410
        assert page.get_by_text("This link has expired").count()
        room.shot(page, "expired-link")
    finally:
        context.close()


def test_an_expired_session_goes_through_sign_in_back_to_the_study(
    reading_room: ReadingRoom,
) -> None:
    room = reading_room
    context, page, _ = room.new_page()
    uid = STUDY["stolaf-ct-chest"].study_uid
    try:
        sign_in(room, page, "ada")
        session_cookie = room.live.app.state.telerad.settings.identity.session_cookie
        assert any(c["name"] == session_cookie for c in context.cookies())
        context.clear_cookies(name=session_cookie)  # the broker's session is gone, the IdP's not
        page.goto(f"{room.live.url}/studies/{uid}")
        page.get_by_role("link", name="Sign in with hospital-a").click()
        page.wait_for_url(f"{room.live.url}/studies/{uid}")  # the IdP's session signs her in
        assert page.get_by_role("heading", name="stolaf-ct-chest").count()

        page.get_by_role("button", name="Sign out").click()
        # Keycloak asks whether to end its own session too (no id_token_hint is kept), then
        # comes back to the broker's home page
        page.locator("#kc-logout").click()
        page.wait_for_url(re.compile(rf"{re.escape(room.live.url)}/(\?state=.*)?"))
        assert page.get_by_role("link", name="Sign in with hospital-a").is_visible()
        assert not any(c["name"] == session_cookie for c in context.cookies())
    finally:
        context.close()


def test_a_jpeg2000_study_decodes_in_the_viewer(reading_room: ReadingRoom) -> None:
    room = reading_room
    context, page, log = room.new_page()
    uid = STUDY["stolaf-mr-j2k"].study_uid
    try:
        sign_in(room, page, "ada")
        open_from_worklist(page, uid)
        wait_for_image(page)
        page.wait_for_load_state("networkidle")
        room.shot(page, "viewer-jpeg2000")
        assert log.dicomweb and not log.failed, log.failed
        assert not log.csp_violations, log.csp_violations
        assert not log.errors, log.errors
    finally:
        context.close()
