"""Rate limits as an attacker meets them, against the real stack (Keycloak, OPA, Orthanc).

A valid radiologist token drives link issuance across every study: past the limit each request
is a 429 with ``Retry-After``, audited as a deny with reason ``rate_limited``; another person is
not affected; once the advertised time has passed, issuance works again. Login
attempts from one address are limited too, and a failed callback costs more than an attempt.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest

from bench.fixtures import LargeStudy, bench_facts_file, build_large_study, store_study
from bench.viewer import StudyOpen, open_study
from broker.audit import EventKind, MemorySink, Outcome
from broker.config import Settings
from devstack.samples import sample_studies
from devstack.stack import Stack
from tests.integration.conftest import LiveBroker, serve
from tests.integration.helpers import password_token

pytestmark = pytest.mark.integration


@pytest.fixture
def limited(broker_env: dict[str, str]) -> Iterator[LiveBroker]:
    """A broker whose limits a test can reach quickly: 3 links at once, then one every 10 s;
    4 login attempts at once, then one a minute; a failed callback costs 3 more."""
    tight = {
        "TELERAD_RATE_LIMITS__ISSUE_BURST": "3",
        "TELERAD_RATE_LIMITS__ISSUE_PER_MINUTE": "6",
        "TELERAD_RATE_LIMITS__LOGIN_BURST": "4",
        "TELERAD_RATE_LIMITS__LOGIN_PER_MINUTE": "1",
        "TELERAD_RATE_LIMITS__LOGIN_FAILURE_COST": "3",
    }
    with mock.patch.dict(os.environ, tight):
        settings = Settings()
    with serve(settings, MemorySink()) as live:
        yield live


@pytest.fixture
def viewer_study(stack: Stack, broker_env: dict[str, str], tmp_path: Path) -> Iterator[LargeStudy]:
    """A thin-slice CT of 500 single-frame instances in Orthanc, readable by ada; removed after
    (other tests compare the whole PACS with the ledger)."""
    orthanc = stack.services["orthanc"]
    url, auth = (
        orthanc.endpoints["url"],
        (str(orthanc.extra["user"]), str(orthanc.extra["password"])),
    )
    study = build_large_study(500, 64, name="rate-limit-viewer")
    store_study(url, auth, study)
    facts = bench_facts_file(
        Path(broker_env["TELERAD_FACTS_FILE"]), tmp_path / "facts.json", study.study_uid
    )
    try:
        with mock.patch.dict(os.environ, {"TELERAD_FACTS_FILE": str(facts)}):
            yield study
    finally:
        found = httpx.post(f"{url}/tools/lookup", content=study.study_uid, auth=auth, timeout=30)
        for hit in found.json():
            httpx.delete(f"{url}/studies/{hit['ID']}", auth=auth, timeout=60)


def _open_through_a_link(live: LiveBroker, bearer: str, study_uid: str) -> StudyOpen:
    link = issue(live, bearer, study_uid)
    assert link.status_code == 200, link.text
    root = link.json()["dicomweb_root"]
    headers = {"Authorization": f"Bearer {bearer}"}
    return asyncio.run(open_study(root, study_uid, headers, connections=6))


def test_a_viewer_opening_a_large_study_is_not_limited(
    stack: Stack, viewer_study: LargeStudy
) -> None:
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    with serve(Settings(), MemorySink()) as live:  # the default limits
        opens = [_open_through_a_link(live, ada, viewer_study.study_uid) for _ in range(3)]
        metrics = httpx.get(live.metrics_url, timeout=30).text
    for opened in opens:
        print(
            f"\nstudy open through a link, default limits: {opened.frames} frames, "
            f"{opened.errors} errors, {opened.frames / opened.wall:.0f} frames/s, "
            f"{opened.wall:.2f} s to the last frame"
        )
    assert [(o.frames, o.errors) for o in opens] == [(500, 0)] * 3
    assert 'telerad_rate_limited_total{scope="redeem"}' not in metrics  # labels appear on use

    # the same open under a redemption limit smaller than the study: refused part way
    tight_limits = {
        "TELERAD_RATE_LIMITS__REDEEM_BURST": "100",
        "TELERAD_RATE_LIMITS__REDEEM_PER_MINUTE": "60",
    }
    with mock.patch.dict(os.environ, tight_limits):
        settings = Settings()
    with serve(settings, MemorySink()) as live:
        tight = _open_through_a_link(live, ada, viewer_study.study_uid)
    print(f"\nthe same open at 100 + 1/s: {tight.errors} of {tight.frames} refused")
    assert tight.errors > 0


def issue(live: LiveBroker, bearer: str, study_uid: str) -> httpx.Response:
    return httpx.post(
        f"{live.url}/api/links",
        json={"study_uid": study_uid},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )


def test_bulk_issuance_is_refused_past_the_limit_then_allowed_again(
    stack: Stack, limited: LiveBroker
) -> None:
    realm = stack.services["keycloak"].endpoints["hospital-a"]
    ada, carla = password_token(realm, "ada"), password_token(realm, "carla")
    studies = sample_studies()
    chest = next(s for s in studies if s.key == "stolaf-ct-chest")
    assert len(studies) > 3

    # the thief's pattern: every study, one after another (allowed or not, each one counts)
    started = time.monotonic()
    answers = [issue(limited, ada, study.study_uid) for study in studies]
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in answers]
    assert all(s != 429 for s in statuses[:3]), statuses
    refilled = int(elapsed / 10)  # one token every 10 s came back while the loop ran
    assert statuses.count(429) >= len(studies) - 3 - refilled, (statuses, elapsed)
    assert statuses.count(429) > 0, (statuses, elapsed)
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"] == "rate_limited", refused.text
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 10, refused.headers

    # audited: the broker's own deny, reason rate_limited, for each refused request
    denials = [
        e
        for e in limited.audit.events
        if e.kind is EventKind.DECISION and e.reasons == ["rate_limited"]
    ]
    assert len(denials) == statuses.count(429)
    assert {e.subject for e in denials} == {"npi:1000000001"}
    assert all(e.outcome is Outcome.DENY and e.action == "issue_link" for e in denials)
    metrics = httpx.get(limited.metrics_url, timeout=30).text
    assert f'telerad_rate_limited_total{{scope="issue_link"}} {len(denials)}.0' in metrics

    # another person (the chest study's referring physician) is not affected
    theirs = issue(limited, carla, chest.study_uid)
    assert theirs.status_code == 200, theirs.text

    # once the advertised time has passed, one more link, and only one
    now_refused = issue(limited, ada, chest.study_uid)
    assert now_refused.status_code == 429, now_refused.text
    time.sleep(int(now_refused.headers["retry-after"]))
    again = issue(limited, ada, chest.study_uid)
    assert again.status_code == 200, again.text
    assert issue(limited, ada, chest.study_uid).status_code == 429


def test_login_attempts_from_one_address_are_limited(limited: LiveBroker) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as browser:
        started = browser.get("/auth/login", params={"idp": "hospital-a"})
        assert started.status_code == 302, started.text
        # a forged callback: the state does not match the login in progress
        failed = browser.get("/auth/callback", params={"code": "guess", "state": "guess"})
        assert failed.status_code == 400, failed.text
        # 1 + (1 + 3) of 4 taken: nothing left for the next attempt
        refused = browser.get("/auth/login", params={"idp": "hospital-a"})
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("text/html")
    assert "Too many sign-in attempts" in refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    events = [e for e in limited.audit.events if e.kind is EventKind.LOGIN_FAILED]
    assert [e.reasons for e in events][-1] == ["rate_limited"]
    assert events[-1].client_ip == "127.0.0.1"
