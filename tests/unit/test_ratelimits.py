"""Rate limits: the token buckets (property-based), the limits and their obligations, and the
429s the routes answer (API, reading room, login) with their audit events and metric."""

from __future__ import annotations

import json
import math
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.app import session_keyring
from broker.audit import EventKind, Outcome
from broker.config import RateLimitSettings
from broker.errors import RateLimited
from broker.opa import Decision
from broker.ratelimits import Limit, RateLimits, TokenBuckets, retry_after_header
from streams.alerts import Alert, AlertDetector, AlertRules
from tests.unit.fake_broker import ISS, READABLE, FakeBroker, fake_broker


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


limits = st.builds(
    Limit,
    burst=st.integers(min_value=1, max_value=10_000).map(float),
    per_minute=st.floats(min_value=0.01, max_value=100_000),
)
steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=120), st.integers(min_value=1, max_value=5)),
    max_size=200,
)


class TestTokenBuckets:
    def test_a_burst_then_refused_until_a_token_is_back(self) -> None:
        clock = Clock()
        buckets = TokenBuckets(clock=clock)
        limit = Limit(burst=3, per_minute=6)  # one token every 10 s
        assert [buckets.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = buckets.take("a", limit)
        assert wait == pytest.approx(10.0)
        clock.now += 9.9
        assert buckets.take("a", limit) > 0
        clock.now += 0.1
        assert buckets.take("a", limit) == 0.0
        assert buckets.take("b", limit) == 0.0  # another key: its own bucket

    def test_a_cost_above_the_burst_can_never_be_had(self) -> None:
        buckets = TokenBuckets(clock=Clock())
        assert buckets.take("a", Limit(burst=2, per_minute=60), cost=3) == math.inf

    @settings(max_examples=200, deadline=None)
    @given(limit=limits, steps=steps)
    def test_never_more_than_the_burst_plus_the_refill(
        self, limit: Limit, steps: list[tuple[float, int]]
    ) -> None:
        clock = Clock()
        buckets = TokenBuckets(clock=clock)
        start, granted = clock.now, 0
        for elapsed, cost in steps:
            clock.now += elapsed
            if buckets.take("k", limit, cost) == 0.0:
                granted += cost
            tokens = buckets.tokens("k", limit)
            assert 0.0 <= tokens <= limit.burst
        allowed = limit.burst + (clock.now - start) * limit.per_second
        assert granted <= allowed + 1e-6

    @settings(max_examples=200, deadline=None)
    @given(limit=limits, steps=steps, cost=st.integers(min_value=1, max_value=5))
    def test_waiting_as_long_as_told_is_enough(
        self, limit: Limit, steps: list[tuple[float, int]], cost: int
    ) -> None:
        clock = Clock()
        buckets = TokenBuckets(clock=clock)
        for elapsed, step_cost in steps:
            clock.now += elapsed
            buckets.take("k", limit, step_cost)
        wait = buckets.take("k", limit, cost)
        if wait == 0.0 or wait == math.inf:
            assert wait == 0.0 or cost > limit.burst
            return
        clock.now += wait * (1 + 1e-9) + 1e-9
        assert buckets.take("k", limit, cost) == 0.0

    def test_memory_is_bounded_and_the_least_recently_used_go_first(self) -> None:
        clock = Clock()
        buckets = TokenBuckets(max_keys=3, clock=clock)
        limit = Limit(burst=1, per_minute=1)
        for key in ("a", "b", "c"):
            buckets.take(key, limit)
        buckets.take("a", limit)  # refused, but used: "b" is now the oldest
        buckets.take("d", limit)
        assert len(buckets) == 3
        assert buckets.tokens("b", limit) == 1.0  # evicted: a fresh bucket
        assert buckets.tokens("a", limit) < 1.0


class TestLimit:
    def test_an_obligation_lowers_each_field_it_names(self) -> None:
        limit = Limit(burst=30, per_minute=2)
        assert limit.lowered_by({"burst": 5}) == Limit(burst=5, per_minute=2)
        assert limit.lowered_by({"per_minute": 0.5, "burst": 10}) == Limit(10, 0.5)

    @given(
        obligation=st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["burst", "per_minute", "x"]), inner, max_size=3)
            ),
            max_leaves=6,
        )
    )
    def test_an_obligation_never_raises_a_limit(self, obligation: Any) -> None:
        limit = Limit(burst=30, per_minute=2)
        lowered = limit.lowered_by(obligation)
        assert lowered.burst <= limit.burst
        assert lowered.per_minute <= limit.per_minute
        assert lowered.burst >= 0 and lowered.per_minute >= 0

    @pytest.mark.parametrize("value", [None, True, "3", float("nan"), float("inf"), -1, 100, [1]])
    def test_a_malformed_or_higher_value_changes_nothing(self, value: object) -> None:
        limit = Limit(burst=30, per_minute=2)
        assert limit.lowered_by({"burst": value, "per_minute": value}) == limit


class TestRetryAfter:
    @given(seconds=st.floats(min_value=0, max_value=1e9))
    def test_whole_seconds_at_least_one_never_early(self, seconds: float) -> None:
        value = int(retry_after_header(seconds))
        assert value >= 1 and value >= seconds

    def test_never_is_an_hour(self) -> None:
        assert retry_after_header(math.inf) == "3600"


class TestRateLimits:
    def test_limits_come_from_settings_per_scope_and_key(self) -> None:
        clock = Clock()
        limits = RateLimits(RateLimitSettings(issue_burst=2, issue_per_minute=1), clock=clock)
        limits.check("issue_link", "npi:1")
        limits.check("issue_link", "npi:1")
        with pytest.raises(RateLimited) as refused:
            limits.check("issue_link", "npi:1")
        assert refused.value.retry_after == "60"
        assert refused.value.status_code == 429
        limits.check("issue_link", "npi:2")  # someone else
        limits.check("redeem", "npi:1")  # another scope
        clock.now += 60
        limits.check("issue_link", "npi:1")

    def test_disabled_limits_nothing(self) -> None:
        limits = RateLimits(RateLimitSettings(enabled=False, issue_burst=1), clock=Clock())
        for _ in range(10):
            limits.check("issue_link", "npi:1")

    def test_an_obligation_lowers_one_subject_until_a_decision_without_one(self) -> None:
        limits = RateLimits(RateLimitSettings(issue_burst=30), clock=Clock())
        limits.apply_obligation("issue_link", "npi:1", {"burst": 1, "per_minute": 1})
        assert limits.limit("issue_link", "npi:1") == Limit(1, 1)
        assert limits.limit("issue_link", "npi:2") == Limit(30, 2)
        assert limits.limit("redeem", "npi:1") == Limit(5000, 3000)
        limits.check("issue_link", "npi:1")
        with pytest.raises(RateLimited):
            limits.check("issue_link", "npi:1")
        limits.apply_obligation("issue_link", "npi:1", None)
        assert limits.limit("issue_link", "npi:1") == Limit(30, 2)

    def test_a_penalty_takes_what_is_left_and_is_never_refused(self) -> None:
        limits = RateLimits(RateLimitSettings(login_burst=6, login_per_minute=1), clock=Clock())
        limits.check("login", "ip:10.0.0.1")
        limits.penalize("login", "ip:10.0.0.1", 100)
        with pytest.raises(RateLimited):
            limits.check("login", "ip:10.0.0.1")


def _tight(broker: FakeBroker, **values: Any) -> None:
    broker.state.limits = RateLimits(RateLimitSettings(**values), clock=Clock())


def _limited_count(broker: FakeBroker, scope: str) -> float:
    value = broker.state.metrics.registry.get_sample_value(
        "telerad_rate_limited_total", {"scope": scope}
    )
    return value or 0.0


class TestIssuance:
    async def test_past_the_limit_429_with_retry_after_audited_and_counted(self) -> None:
        broker = fake_broker()
        _tight(broker, issue_burst=2, issue_per_minute=1)
        ada, ben = broker.bearer(), broker.bearer(sub="u-2", npi="1000000002")
        async with broker.client() as client:
            for _ in range(2):
                r = await client.post("/api/links", headers=ada, json={"study_uid": READABLE})
                assert r.status_code == 200, r.text
            asked = len(broker.audit.events)
            r = await client.post("/api/links", headers=ada, json={"study_uid": READABLE})
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "60"
            assert r.json()["error"] == "rate_limited"
            other = await client.post("/api/links", headers=ben, json={"study_uid": READABLE})
            assert other.status_code == 200, other.text
        refused = broker.audit.events[asked]
        assert refused.kind is EventKind.DECISION and refused.outcome is Outcome.DENY
        assert refused.reasons == ["rate_limited"]
        assert (refused.subject, refused.action, refused.study_uid) == (
            "npi:1000000001",
            "issue_link",
            READABLE,
        )
        assert refused.decision_id is None  # the broker's own refusal: OPA was not asked
        assert _limited_count(broker, "issue_link") == 1

    async def test_refused_issuances_still_count_toward_bulk_access(self) -> None:
        """A thief held back by the limit keeps asking: the alert rule that contains them
        sees every study asked for, refused or not."""
        broker = fake_broker()
        _tight(broker, issue_burst=1)
        studies = [READABLE] + [f"1.2.826.0.1.3680043.10.1119.{i}" for i in range(2, 6)]
        async with broker.client() as client:
            for study in studies:
                await client.post("/api/links", headers=broker.bearer(), json={"study_uid": study})
        refused = [e for e in broker.audit.events if e.reasons == ["rate_limited"]]
        assert len(refused) == len(studies) - 1
        alerts: list[Alert] = []
        rules = AlertRules(bulk_studies=len(studies), bulk_window_seconds=300)
        AlertDetector(rules).handle(broker.audit.events, alerts.append)
        assert [a.rule for a in alerts if a.rule == "bulk_access"] == ["bulk_access"]

    async def test_the_refusal_stays_a_429_when_the_audit_is_down(self) -> None:
        broker = fake_broker()
        _tight(broker, issue_burst=1)
        async with broker.client() as client:
            await client.post("/api/links", headers=broker.bearer(), json={"study_uid": READABLE})
            broker.audit.fail = True
            r = await client.post(
                "/api/links", headers=broker.bearer(), json={"study_uid": READABLE}
            )
        assert r.status_code == 429, r.text

    async def test_a_rate_limit_obligation_lowers_the_subjects_limit(self) -> None:
        broker = fake_broker()
        decide = broker.opa.decide

        async def with_limit(input_data: dict[str, Any]) -> Decision:
            decision = await decide(input_data)
            obligations = decision.obligations | {"rate_limit": {"burst": 1, "per_minute": 1}}
            return Decision(
                allow=decision.allow,
                reasons=decision.reasons,
                obligations=obligations,
                decision_id=decision.decision_id,
            )

        broker.opa.decide = with_limit  # type: ignore[method-assign]
        async with broker.client() as client:
            first = await client.post(
                "/api/links", headers=broker.bearer(), json={"study_uid": READABLE}
            )
            second = await client.post(
                "/api/links", headers=broker.bearer(), json={"study_uid": READABLE}
            )
        assert first.status_code == 200, first.text
        assert second.status_code == 429, second.text  # the settings' burst is 30


class TestRedemption:
    async def test_past_the_limit_429_audited_as_a_refused_redemption(self) -> None:
        broker = fake_broker()
        async with broker.client() as client:
            r = await client.post(
                "/api/links", headers=broker.bearer(), json={"study_uid": READABLE}
            )
            path = urlsplit(r.json()["url"]).path + "/metadata"
            _tight(broker, redeem_burst=3, redeem_per_minute=60)
            statuses = [
                (await client.get(path, headers=broker.bearer())).status_code for _ in "1234"
            ]
            refused = await client.get(path, headers=broker.bearer())
        assert statuses == [200, 200, 200, 429]
        assert refused.headers["retry-after"] == "1"
        event = broker.audit.events[-1]
        assert event.kind is EventKind.LINK_REDEEMED and event.outcome is Outcome.DENY
        assert event.reasons == ["rate_limited"]
        assert _limited_count(broker, "redeem") == 2


class TestReadingRoom:
    async def test_open_past_the_limit_is_a_429_page_that_says_when(self) -> None:
        broker = fake_broker()
        _tight(broker, issue_burst=1, issue_per_minute=1)
        now = int(time.time())
        principal = {"id": "npi:1000000001", "issuer": ISS, "subject": "u-1"}
        principal |= {"roles": ["radiologist"], "acr": "1", "auth_time": now}
        stored = {
            "m": {"sid": "sid-1", "created": now, "seen": now},
            "d": {"principal": principal, "csrf": "c" * 43},
        }
        sealed = session_keyring(broker.state.settings).seal(
            json.dumps(stored).encode(), purpose="session"
        )
        same_site = {"Sec-Fetch-Site": "same-origin"}
        async with broker.client() as client:
            client.cookies.update({broker.state.settings.identity.session_cookie: sealed})
            opened = await client.post(
                f"/studies/{READABLE}/open", data={"csrf": "c" * 43}, headers=same_site
            )
            assert opened.status_code == 303, opened.text
            r = await client.post(
                f"/studies/{READABLE}/open", data={"csrf": "c" * 43}, headers=same_site
            )
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "60"
        assert r.headers["content-type"].startswith("text/html")
        assert "Too many studies opened too quickly" in r.text
        assert "wait 60 seconds" in r.text


class TestLogin:
    async def test_login_attempts_per_address_then_a_429_page(self) -> None:
        broker = fake_broker()
        _tight(broker, login_burst=3, login_per_minute=6)
        async with broker.client() as client:
            statuses = [(await client.get("/auth/login")).status_code for _ in range(4)]
            r = await client.get("/auth/login")
        assert statuses == [302, 302, 302, 429]
        assert r.headers["retry-after"] == "10"
        assert "Too many sign-in attempts" in r.text
        event = broker.audit.events[-1]
        assert event.kind is EventKind.LOGIN_FAILED and event.reasons == ["rate_limited"]
        assert event.client_ip == "10.1.2.3"
        assert _limited_count(broker, "login") == 2

    async def test_failed_callbacks_cost_more_than_attempts(self) -> None:
        broker = fake_broker()
        _tight(broker, login_burst=10, login_per_minute=1, login_failure_cost=4)
        async with broker.client() as client:
            first = await client.get("/auth/callback")  # no login in progress: failed, 1 + 4
            second = await client.get("/auth/callback")  # 1 + 4 more: none left
            r = await client.get("/auth/login")
        assert (first.status_code, second.status_code) == (400, 400)
        assert r.status_code == 429, r.text

    async def test_a_good_login_is_not_penalized(self) -> None:
        broker = fake_broker()
        _tight(broker, login_burst=4, login_per_minute=1, login_failure_cost=10)
        async with broker.client() as client:
            r = await client.get("/auth/login")
            state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
            r = await client.get("/auth/callback", params={"code": "c", "state": state})
            assert r.status_code == 303, r.text
            again = await client.get("/auth/login")
        assert again.status_code == 302, again.text
