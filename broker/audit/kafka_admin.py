"""The admin side of our kafka-python adapter: ACLs and topics (with :mod:`broker.audit.kafka`,
the only modules of ``broker`` that import ``kafka``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AclGrant",
    "TopicState",
    "admin_client",
    "alter_topics",
    "create_acls",
    "describe_topic",
]

Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"]


@dataclass(frozen=True)
class AclGrant:
    """ALLOW ``operations`` on topics (or groups) whose names start with ``prefix``."""

    principal: str  # "User:telerad-broker", "User:CN=telerad-broker"
    resource: Literal["topic", "group"]
    prefix: str  # "*" with literal=True: every name
    operations: tuple[Operation, ...]
    literal: bool = False


@dataclass(frozen=True)
class TopicState:
    """What the cluster says about one topic."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@contextmanager
def admin_client(
    bootstrap_servers: str, *, timeout_ms: int = 10000, **security: Any
) -> Iterator[Any]:
    """A kafka-python admin client, closed at the end of the block."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        client_id="telerad-admin",
        **security,
    )
    try:
        yield admin
    finally:
        admin.close()


def create_acls(admin: Any, grants: Iterable[AclGrant]) -> int:
    """Create the ALLOW ACLs ``grants`` stand for; raise if Kafka refuses any. How many made."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    literal, prefixed = ACLResourcePatternType.LITERAL, ACLResourcePatternType.PREFIXED
    acls = [
        ACL(
            principal=grant.principal,
            host="*",
            operation=ACLOperation[operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType.TOPIC if grant.resource == "topic" else ResourceType.GROUP,
                grant.prefix,
                literal if grant.literal else prefixed,
            ),
        )
        for grant in grants
        for operation in grant.operations
    ]
    result = admin.create_acls(acls)
    if result.get("failed"):
        raise RuntimeError(f"Kafka refused ACLs: {result['failed'][:3]}")
    return len(result.get("succeeded", []))


def alter_topics(
    admin: Any,
    *,
    create: dict[str, tuple[int, int, dict[str, str]]],
    partitions: dict[str, int],
    configs: dict[str, dict[str, str]],
) -> None:
    """Create topics ``{name: (partitions, replication, configs)}``, raise partition counts to
    ``{name: total}``, and set ``{name: {key: value}}`` (incrementally: other keys stay)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    if create:
        admin.create_topics(
            {
                name: {"num_partitions": n, "replication_factor": rf, "configs": dict(cfg)}
                for name, (n, rf, cfg) in create.items()
            },
            wait_for_metadata=True,
        )
    if partitions:
        admin.create_partitions(dict(partitions))
    if configs:
        admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(cfg))
                for name, cfg in configs.items()
            ],
            incremental=True,
        )


def describe_topic(admin: Any, name: str) -> TopicState | None:
    """The topic's partitions, replication factor and (non-default and default) configs."""
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import for_code

    described = admin.describe_topics([name])
    code = described[0].get("error_code", 0) if described else 3
    if code == 3:  # UNKNOWN_TOPIC_OR_PARTITION
        return None
    if code != 0:  # e.g. TOPIC_AUTHORIZATION_FAILED: never mistaken for "missing"
        raise for_code(code)(f"describing topic {name}")
    partitions = described[0]["partitions"]
    # MetadataResponse names them replica_nodes (older kafka-python answers: replicas)
    replication = min(
        (len(p.get("replica_nodes", p.get("replicas", []))) for p in partitions), default=0
    )
    response = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
    )
    return TopicState(name, len(partitions), replication, _configs(response))


def _configs(response: Any) -> dict[str, str]:
    """``{name: value}`` from kafka-python's ``{type: {resource: {key: {config data}}}}``."""
    out: dict[str, str] = {}
    for resources in dict(response).values():
        for configs in dict(resources).values():
            for key, data in dict(configs).items():
                value = data.get("value") if isinstance(data, dict) else data
                out[str(key)] = "" if value is None else str(value)
    return out
