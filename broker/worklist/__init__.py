"""RIS worklist assignments: the event schema, the state every replica keeps, the publisher.

Public surface::

    WorklistEvent, WorklistKind, Priority      the versioned event (events.py)
    to_record, from_record, export_schema      CloudEvents 1.0 binary mode on Kafka (events.py)
    Assignment, WorklistState                  the current assignment per study (state.py)
"""

from broker.worklist.events import (
    SCHEMA_PATH,
    Priority,
    WorklistEvent,
    WorklistKind,
    check_against_schema,
    export_schema,
    from_record,
    to_record,
)
from broker.worklist.state import Assignment, WorklistState

__all__ = [
    "SCHEMA_PATH",
    "Assignment",
    "Priority",
    "WorklistEvent",
    "WorklistKind",
    "WorklistState",
    "check_against_schema",
    "export_schema",
    "from_record",
    "to_record",
]
