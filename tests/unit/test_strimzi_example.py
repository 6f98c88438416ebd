"""docs/strimzi-kafka.yaml says what `telerad kafka topics` would make with the defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from broker.audit.topics import planned_topics
from broker.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "strimzi-kafka.yaml"


def test_example_topics_match_the_plan() -> None:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    topics = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    planned = planned_topics(Settings(environment="development"))
    assert set(topics) == {spec.name for spec in planned}
    for spec in planned:
        example = topics[spec.name]
        assert (example["partitions"], example["replicas"]) == (
            spec.partitions,
            spec.replication_factor,
        ), spec.name
        assert {k: str(v) for k, v in example["config"].items()} == spec.configs, spec.name


def _writers(topic: str) -> set[str]:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    return {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "KafkaUser"
        for acl in d["spec"]["authorization"]["acls"]
        if acl["resource"]["type"] == "topic"
        and topic.startswith(acl["resource"]["name"])
        and "Write" in acl["operations"]
    }


def test_only_the_broker_user_may_write_the_control_topic() -> None:
    assert _writers(Settings(environment="development").kafka.revocation_topic) == {
        "telerad-broker"
    }


def test_only_the_integrity_watcher_may_write_the_fingerprint_topic() -> None:
    kafka = Settings(environment="development").kafka
    assert _writers(kafka.fingerprint_topic) == {"telerad-integrity"}
    # its instance.stored events go to the audit topic, which the ledger reads
    assert "telerad-integrity" in _writers(kafka.audit_topic)
