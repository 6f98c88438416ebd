"""Decision windows: how long, for whom, and everything that ends one."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from broker.links.window import MAX_SECONDS, DecisionWindows, Window, WindowKey, window_seconds
from broker.revocation import RevocationKind, Revocations

KEY = WindowKey("link-1", "sid:s1", "npi:1", "view")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def window(
    key: WindowKey = KEY,
    *,
    start: float = 1_000.0,
    seconds: float = 30.0,
    study: str = "1.2.3",
    session: str | None = "s1",
    revision: str | None = "bundle@r1",
) -> Window:
    return Window(key, study, session, "decision-1", revision, start, start + seconds)


class TestWindowSeconds:
    @pytest.mark.parametrize(
        ("obligation", "expected"),
        [
            (30, 30.0),
            (12.5, 12.5),
            (600, float(MAX_SECONDS)),  # the broker's cap, whatever the policy says
            (math.inf, float(MAX_SECONDS)),
            (0, 0.0),
            (-5, 0.0),
            (math.nan, 0.0),
            (None, 0.0),
            ("30", 0.0),
            (True, 0.0),  # a boolean is not a number of seconds
        ],
    )
    def test_obligation_is_capped(self, obligation: object, expected: float) -> None:
        assert window_seconds(obligation, now=0, link_expires_at=10_000) == expected

    def test_link_expiry_caps_it(self) -> None:
        assert window_seconds(30, now=100, link_expires_at=110) == 10
        assert window_seconds(30, now=100, link_expires_at=90) == 0


class TestReuse:
    def test_reused_only_by_the_same_holder_link_and_operation(self) -> None:
        windows = DecisionWindows(Clock())
        assert windows.open(window(), generation=windows.generation)
        assert windows.get(KEY, policy_revision="bundle@r1") is not None
        for other in (
            WindowKey("link-2", "sid:s1", "npi:1", "view"),  # another link
            WindowKey("link-1", "sid:s2", "npi:1", "view"),  # another holder
            WindowKey("link-1", "sid:s1", "npi:2", "view"),  # another subject
            WindowKey("link-1", "sid:s1", "npi:1", "download"),  # another operation
        ):
            assert windows.get(other, policy_revision="bundle@r1") is None
        assert windows.reused == 1

    def test_ends_at_its_end(self) -> None:
        clock = Clock()
        windows = DecisionWindows(clock)
        windows.open(window(seconds=30), generation=windows.generation)
        clock.now += 29.9
        assert windows.get(KEY, policy_revision="bundle@r1") is not None
        clock.now += 0.1
        assert windows.get(KEY, policy_revision="bundle@r1") is None
        assert len(windows) == 0

    def test_another_policy_revision_ends_it(self) -> None:
        windows = DecisionWindows(Clock())
        windows.open(window(), generation=windows.generation)
        assert windows.get(KEY, policy_revision="bundle@r2") is None
        assert windows.get(KEY, policy_revision="bundle@r1") is None  # gone for good

    def test_sweep_drops_only_ended_windows(self) -> None:
        clock = Clock()
        windows = DecisionWindows(clock)
        short = WindowKey("link-2", "sid:s1", "npi:1", "view")
        windows.open(window(seconds=60), generation=windows.generation)
        windows.open(window(short, seconds=5), generation=windows.generation)
        clock.now += 10
        windows.sweep()
        assert len(windows) == 1 and windows.get(KEY, policy_revision="bundle@r1") is not None


class TestEndedByChanges:
    def setup_windows(self) -> tuple[Revocations, DecisionWindows]:
        revocations = Revocations()
        windows = DecisionWindows(Clock())
        revocations.add_listener(windows.on_change)
        windows.open(window(), generation=windows.generation)
        other = WindowKey("link-9", "sub:x", "npi:9", "view")
        windows.open(
            window(other, study="9.9", session=None, revision="bundle@r2"),
            generation=windows.generation,
        )
        return revocations, windows

    @pytest.mark.parametrize(
        ("kind", "value"),
        [
            (RevocationKind.LINK, "link-1"),
            (RevocationKind.SESSION, "s1"),
            (RevocationKind.SUBJECT, "npi:1"),
        ],
    )
    def test_revocation_ends_only_what_it_touches(self, kind: RevocationKind, value: str) -> None:
        revocations, windows = self.setup_windows()
        revocations.revoke(kind, value, until=10**10)
        assert windows.get(KEY, policy_revision="bundle@r1") is None
        assert len(windows) == 1  # the other window is untouched

    def test_idp_session_revocation_ends_every_window(self) -> None:
        revocations, windows = self.setup_windows()
        revocations.revoke(RevocationKind.IDP_SESSION, "idp-sid", until=10**10)
        assert len(windows) == 0

    @pytest.mark.parametrize("kind", ["consent", "assignment"])
    def test_study_fact_change_ends_that_studys_windows(self, kind: str) -> None:
        revocations, windows = self.setup_windows()
        revocations.changed(kind, "1.2.3")
        assert windows.get(KEY, policy_revision="bundle@r1") is None
        assert len(windows) == 1

    def test_new_policy_revision_ends_windows_of_other_revisions(self) -> None:
        revocations, windows = self.setup_windows()
        revocations.changed("policy", "bundle@r2")
        assert windows.get(KEY, policy_revision="bundle@r1") is None
        assert len(windows) == 1  # decided under r2 already

    def test_a_change_during_the_decision_makes_it_single_use(self) -> None:
        revocations, windows = self.setup_windows()
        windows.end_all()
        before = windows.generation
        revocations.changed("consent", "unrelated")  # arrives while the policy is asked
        assert windows.open(window(), generation=before) is False
        assert windows.get(KEY, policy_revision="bundle@r1") is None

    def test_changes_from_another_thread_while_windows_open(self) -> None:
        windows = DecisionWindows(Clock())
        stop = threading.Event()

        def churn() -> None:
            while not stop.is_set():
                windows.on_change("consent", "1.2.3")

        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for i in range(20_000):
                key = WindowKey(f"link-{i}", "sid:s1", "npi:1", "view")
                windows.open(window(key), generation=windows.generation)
        finally:
            stop.set()
            thread.join()
        windows.on_change("consent", "1.2.3")
        assert len(windows) == 0


class TestDeciding:
    async def test_concurrent_first_requests_ask_once(self) -> None:
        windows = DecisionWindows(Clock())
        asked = 0

        async def request() -> Window | None:
            nonlocal asked
            found = windows.get(KEY, policy_revision="bundle@r1")
            if found is not None:
                return found
            async with windows.deciding(KEY):
                found = windows.get(KEY, policy_revision="bundle@r1")
                if found is None:
                    asked += 1
                    await asyncio.sleep(0.01)  # the policy is being asked
                    found = window()
                    windows.open(found, generation=windows.generation)
                return found

        results = await asyncio.gather(*(request() for _ in range(6)))
        assert asked == 1
        assert all(r is not None for r in results)
        assert windows._deciding == {}  # no lock is left behind

    async def test_a_denial_is_not_shared(self) -> None:
        windows = DecisionWindows(Clock())
        asked = 0

        async def request() -> None:
            nonlocal asked
            async with windows.deciding(KEY):
                if windows.get(KEY, policy_revision="bundle@r1") is None:
                    asked += 1  # denied: nothing opened, the next waiter asks again
                    await asyncio.sleep(0)

        await asyncio.gather(*(request() for _ in range(3)))
        assert asked == 3


class TestPolicyRevisionWatcher:
    async def test_a_new_revision_ends_windows_and_is_announced(self) -> None:
        from types import SimpleNamespace

        from broker.app import _watch_policy_revision
        from broker.audit import MemorySink

        answers = iter(["bundle@r1", None, "bundle@r1", "bundle@r2"])

        class Opa:
            async def revision(self) -> str | None:
                try:
                    return next(answers)
                except StopIteration:
                    await asyncio.Event().wait()  # the test cancels the watcher here
                    raise AssertionError("unreachable") from None

        revocations = Revocations()
        windows = DecisionWindows(Clock())
        revocations.add_listener(windows.on_change)
        windows.open(window(revision="bundle@r1"), generation=windows.generation)
        audit = MemorySink()
        enforcer = SimpleNamespace(policy_revision=None)
        state = SimpleNamespace(
            settings=SimpleNamespace(opa=SimpleNamespace(revision_poll_seconds=0.001)),
            opa=Opa(),
            enforcer=enforcer,
            revocations=revocations,
            audit=audit,
        )
        task = asyncio.create_task(_watch_policy_revision(state))  # type: ignore[arg-type]
        for _ in range(200):
            if audit.events:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        assert enforcer.policy_revision == "bundle@r2"
        assert len(windows) == 0  # decided under r1
        assert [(e.kind.value, e.policy_revision) for e in audit.events] == [
            ("policy.revised", "bundle@r2")
        ]
        assert audit.events[0].detail == {"previous": "bundle@r1"}
