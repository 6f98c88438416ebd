"""A ledger segment: one batch the ledger consumer appends, named by its Kafka offsets.

Published to the segments topic before the batch is appended (see :mod:`streams.recovery`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["SEGMENT_KEY", "Segment"]

SEGMENT_KEY = b"ledger"  # one key: every segment in one partition, in the order published


@dataclass(frozen=True)
class Segment:
    """One batch the ledger consumer was about to append: a partition's offsets, and where."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    size_before: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": "telerad-ledger-segment-v1",
                "topic": self.topic,
                "partition": self.partition,
                "first_offset": self.first_offset,
                "last_offset": self.last_offset,
                "size_before": self.size_before,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Segment:
        data = json.loads(raw)
        if data.get("v") != "telerad-ledger-segment-v1":
            raise ValueError("not a ledger segment")
        segment = cls(
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            first_offset=int(data["first_offset"]),
            last_offset=int(data["last_offset"]),
            size_before=int(data["size_before"]),
        )
        if not 0 <= segment.first_offset <= segment.last_offset or segment.size_before < 0:
            raise ValueError("a segment's offsets are out of order")
        return segment
