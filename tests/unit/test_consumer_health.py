"""The audit consumers' health: liveness from the loop's turns, readiness from Kafka's answers."""

from __future__ import annotations

import json
from typing import Any

import httpx
from kafka.structs import TopicPartition

from broker.config import StreamSettings
from streams.health import ConsumerHealth, KafkaView, health_server
from streams.runner import ConsumerRunner


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body(answer: tuple[int, str, bytes]) -> tuple[int, dict[str, Any]]:
    status, content_type, body = answer
    assert content_type == "application/json"
    return status, json.loads(body)


class TestConsumerHealth:
    def test_not_ready_before_the_first_check(self) -> None:
        health = ConsumerHealth("ledger", clock=Clock())
        assert _body(health.liveness())[0] == 200
        status, body = _body(health.readiness())
        assert (status, body["status"], body["detail"]) == (503, "unready", "not checked yet")

    def test_ready_with_lag_once_kafka_answered(self) -> None:
        health = ConsumerHealth("ledger", clock=Clock())
        health.observe(KafkaView(ok=True, detail="consuming 2", lag={"a/0": 3, "a/1": 4}))
        status, body = _body(health.readiness())
        assert status == 200, body
        assert (body["lag"], body["lag_total"]) == ({"a/0": 3, "a/1": 4}, 7)

    def test_a_stalled_loop_is_dead_and_unready(self) -> None:
        clock = Clock()
        health = ConsumerHealth("ledger", stale_seconds=30, clock=clock)
        health.observe(KafkaView(ok=True, detail="consuming 1"))
        clock.now += 31
        assert _body(health.liveness()) == (
            503,
            {"age_s": 31.0, "consumer": "ledger", "status": "stalled"},
        )
        status, body = _body(health.readiness())
        assert (status, body["detail"]) == (503, "loop stalled for 31 s")
        health.beat()
        assert _body(health.liveness())[0] == 200

    def test_a_failed_batch_is_unready_until_one_succeeds(self) -> None:
        health = ConsumerHealth("alerts", clock=Clock())
        health.observe(KafkaView(ok=True, detail="consuming 1"))
        health.batch_done(failed=True)
        status, body = _body(health.readiness())
        assert (status, body["detail"]) == (503, "the last batch failed (retrying)")
        health.batch_done(failed=False)
        assert _body(health.readiness())[0] == 200

    def test_served_on_its_own_port(self) -> None:
        health = ConsumerHealth("export")
        server = health_server(health, "127.0.0.1", 0)
        try:
            base = f"http://127.0.0.1:{server.port}"
            assert httpx.get(f"{base}/healthz").status_code == 200
            ready = httpx.get(f"{base}/readyz")
            assert ready.status_code == 503, ready.text
            assert httpx.get(f"{base}/metrics").status_code == 404
        finally:
            server.stop()


class FakeConsumer:
    """Just what the runner's Kafka check calls."""

    def __init__(self, assigned: list[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        self.assigned = assigned
        self.ends = ends
        self.positions = dict.fromkeys(assigned, 0)
        self.down = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> Any:
        if self.down:
            raise TimeoutError("no leader answered")
        return {tp: self.ends[tp] for tp in partitions}

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return self.positions[tp]


def _runner(consumer: FakeConsumer) -> ConsumerRunner:
    return ConsumerRunner(
        "ledger",
        bootstrap="unused:9092",
        topic="audit",
        group_id="g",
        handler=lambda events: None,
        dead_letter_topic="dlq",
        consumer=consumer,
    )


class TestRunnerKafkaView:
    def test_no_assignment_is_not_ok(self) -> None:
        view = _runner(FakeConsumer([], {}))._kafka_view()
        assert (view.ok, view.detail) == (False, "no partitions assigned (joining the group)")

    def test_lag_is_end_minus_position(self) -> None:
        a0, a1 = TopicPartition("audit", 0), TopicPartition("audit", 1)
        consumer = FakeConsumer([a1, a0], {a0: 10, a1: 5})
        consumer.positions[a0] = 4
        view = _runner(consumer)._kafka_view()
        assert (view.ok, dict(view.lag)) == (True, {"audit/0": 6, "audit/1": 5})

    def test_kafka_not_answering_is_named(self) -> None:
        consumer = FakeConsumer([TopicPartition("audit", 0)], {TopicPartition("audit", 0): 1})
        consumer.down = True
        view = _runner(consumer)._kafka_view()
        assert (view.ok, view.detail) == (False, "Kafka did not answer: TimeoutError")


def test_settings_health_options() -> None:
    options = StreamSettings(health_host="10.0.0.7", health_port=8081).health_options()
    assert options == {
        "health_host": "10.0.0.7",
        "health_port": 8081,
        "health_stale_seconds": 60.0,
    }
    assert StreamSettings().health_port is None  # off unless asked for (the chart asks)
