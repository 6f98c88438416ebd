"""The Kafka topics the broker and its consumers rely on, planned and applied (``telerad kafka``).

``acks=all`` promises only as much as the topic's replication: an audit topic left to a
cluster's defaults may have one replica, ``min.insync.replicas=1`` and a seven-day retention.
:func:`plan` compares what the cluster has with what the settings ask for and says, per topic,
what it would change; :func:`apply` makes those changes (creates topics, raises partition counts,
sets configs). A replication factor is never changed here (that is a partition reassignment, an
operator's decision): the plan names it and the command fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from broker.audit.kafka_admin import TopicState, alter_topics, describe_topic
from broker.config import Settings

__all__ = ["TopicChange", "TopicSpec", "apply", "audit_topic_gaps", "plan", "planned_topics"]

_DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the settings want it."""

    name: str
    role: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass
class TopicChange:
    """What :func:`apply` would do to one topic."""

    spec: TopicSpec
    action: Literal["create", "alter", "none", "manual"]
    details: list[str] = field(default_factory=list)
    add_partitions: int = 0
    configs: dict[str, str] = field(default_factory=dict)  # to set

    def line(self) -> str:
        what = "; ".join(self.details) if self.details else "as planned"
        return f"{self.action:>6}  {self.spec.name} ({self.spec.role}): {what}"


def planned_topics(settings: Settings) -> list[TopicSpec]:
    """Audit, control, worklist, fingerprints, dead letters, ledger heads, alerts: as the settings
    say."""
    kafka, streams = settings.kafka, settings.streams
    retention = str(-1 if kafka.audit_retention_days < 0 else kafka.audit_retention_days * _DAY_MS)
    durable = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    kept = durable | {"cleanup.policy": "delete", "retention.ms": retention}

    def spec(name: str, role: str, configs: dict[str, str], partitions: int) -> TopicSpec:
        return TopicSpec(name, role, partitions, kafka.replication_factor, configs)

    return [
        spec(kafka.audit_topic, "audit", kept, kafka.partitions),
        # Compacted: the newest record per key (a study's consent, one revocation) is kept for
        # ever, so a replica started a year later still learns everything still in force.
        spec(kafka.revocation_topic, "control", durable | {"cleanup.policy": "compact"}, 3),
        # The RIS's worklist, keyed by study and compacted: each record carries the study's whole
        # assignment, so the newest per study is all a replica needs (closed studies included).
        *(
            [spec(kafka.worklist_topic, "worklist", durable | {"cleanup.policy": "compact"}, 3)]
            if kafka.worklist_topic
            else []
        ),
        # Compacted too: the newest fingerprint per SOP Instance UID, read whole by every replica.
        spec(kafka.fingerprint_topic, "fingerprints", durable | {"cleanup.policy": "compact"}, 3),
        spec(streams.dead_letter_topic, "dead letters", kept, 1),
        spec(streams.heads_topic, "ledger heads", kept, 1),
        spec(streams.alerts_topic, "alerts", kept, kafka.partitions),
    ]


def _compare(spec: TopicSpec, state: TopicState | None) -> TopicChange:
    if state is None:
        configs = ", ".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
        return TopicChange(
            spec,
            "create",
            [
                f"{spec.partitions} partitions, replication factor {spec.replication_factor}, "
                f"{configs}"
            ],
            configs=dict(spec.configs),
        )
    change = TopicChange(spec, "none")
    if state.replication_factor != spec.replication_factor:
        change.action = "manual"
        change.details.append(
            f"replication factor {state.replication_factor}, wanted "
            f"{spec.replication_factor}: reassign its partitions (kafka-reassign-partitions)"
        )
    if state.partitions < spec.partitions:
        change.add_partitions = spec.partitions
        change.details.append(f"partitions {state.partitions} -> {spec.partitions}")
    for key, wanted in sorted(spec.configs.items()):
        if state.configs.get(key) != wanted:
            change.configs[key] = wanted
            change.details.append(f"{key} {state.configs.get(key)} -> {wanted}")
    if change.action == "none" and (change.add_partitions or change.configs):
        change.action = "alter"
    return change


def plan(admin: Any, settings: Settings) -> list[TopicChange]:
    """What would change, per topic (nothing is changed)."""
    return [_compare(spec, describe_topic(admin, spec.name)) for spec in planned_topics(settings)]


def apply(admin: Any, changes: list[TopicChange]) -> None:
    """Create topics, add partitions, set configs; ``manual`` changes are left to the operator."""
    alter_topics(
        admin,
        create={
            c.spec.name: (c.spec.partitions, c.spec.replication_factor, c.configs)
            for c in changes
            if c.action == "create"
        },
        partitions={c.spec.name: c.add_partitions for c in changes if c.add_partitions},
        configs={c.spec.name: c.configs for c in changes if c.action != "create" and c.configs},
    )


def audit_topic_gaps(admin: Any, settings: Settings) -> list[str]:
    """How the audit topic falls short of the floor (replication factor, min.insync.replicas)."""
    kafka = settings.kafka
    state = describe_topic(admin, kafka.audit_topic)
    if state is None:
        return [f"audit topic {kafka.audit_topic} does not exist (run `telerad kafka topics`)"]
    gaps = []
    if state.replication_factor < kafka.replication_factor:
        gaps.append(
            f"audit topic {kafka.audit_topic}: replication factor {state.replication_factor} "
            f"< {kafka.replication_factor}"
        )
    try:
        min_isr = int(state.configs.get("min.insync.replicas", "1"))
    except ValueError:
        min_isr = 1
    if min_isr < kafka.min_insync_replicas:
        gaps.append(
            f"audit topic {kafka.audit_topic}: min.insync.replicas {min_isr} "
            f"< {kafka.min_insync_replicas}"
        )
    return gaps
