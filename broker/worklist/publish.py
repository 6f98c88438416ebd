"""Publishing worklist events as the RIS does (``telerad worklist publish``, the dev stack, tests).

Each event is one record on the worklist topic, keyed by its study, and the call returns once
Kafka acknowledged it (``acks=all``). Only the RIS's principal may write the topic: any other
principal gets Kafka's authorization error here, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.audit.kafka import make_producer
from broker.worklist.events import WorklistEvent, to_record

__all__ = ["publish"]


def publish(
    events: Iterable[WorklistEvent],
    *,
    bootstrap: str,
    topic: str,
    source: str = "/ris",
    client_config: Mapping[str, Any] | None = None,
    timeout_seconds: float = 10.0,
) -> int:
    """Write ``events`` in order and wait for each acknowledgement; how many were written."""
    producer = make_producer(bootstrap, client_id="telerad-ris", **dict(client_config or {}))
    try:
        written = 0
        for event in events:
            key, value, headers = to_record(event, source=source)
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=timeout_seconds)
            written += 1
        return written
    finally:
        producer.close(5)
