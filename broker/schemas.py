"""Event schemas: JSON Schema exported from a pydantic model, committed beside it, checked with.

The committed file is what integrators and auditors read (the audit event, the RIS's worklist
event); a unit test keeps it equal to what the model exports, and data can be checked against it
with ``jsonschema`` exactly as an outside consumer would.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel

__all__ = ["CommittedSchema"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class CommittedSchema:
    """The schema of ``model``'s serialised form, committed at ``path`` under ``schema_id``."""

    def __init__(self, model: type[BaseModel], path: Path, schema_id: str, what: str) -> None:
        self.model = model
        self.path = path
        self.schema_id = schema_id
        self.what = what

    def export(self) -> dict[str, Any]:
        """The JSON Schema of the model (what is committed at :attr:`path`)."""
        schema = self.model.model_json_schema(mode="serialization")
        schema["$schema"] = _DIALECT
        schema["$id"] = self.schema_id
        return schema

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(json.loads(self.path.read_text()))

    def check(self, data: dict[str, Any]) -> None:
        """Validate ``data`` with the committed schema; ``ValueError`` naming the first error."""
        errors = sorted(self._validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            raise ValueError(f"{self.what} does not match its schema: {errors[0].message}")
