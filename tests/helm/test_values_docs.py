"""values.yaml is documented key by key, the README's table is generated from it, and the schema
is strict and complete."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helm.conftest import CHART, REPO, merge_values, scenario_values

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES: dict[str, Any] = yaml.safe_load(VALUES_TEXT)
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())


def _load_tool() -> ModuleType:
    path = REPO / "helm" / "tools" / "gen_values_table.py"
    spec = importlib.util.spec_from_file_location("gen_values_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _load_tool()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        node = {**SCHEMA["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


class TestValuesDocumentation:
    def test_readme_table_is_up_to_date(self) -> None:
        readme = (CHART / "README.md").read_text()
        wanted = gen.update_readme(readme, gen.render(VALUES_TEXT))
        assert readme == wanted, "run: python helm/tools/gen_values_table.py"

    def test_check_mode_fails_on_a_stale_readme(self, tmp_path: Path) -> None:
        for name in ("values.yaml", "README.md"):
            (tmp_path / name).write_text((CHART / name).read_text())
        assert gen.main(["--check", "--chart", str(tmp_path)]) == 0
        values = tmp_path / "values.yaml"
        values.write_text(values.read_text().replace("replicaCount: 2", "replicaCount: 4"))
        assert gen.main(["--check", "--chart", str(tmp_path)]) == 1
        assert gen.main(["--chart", str(tmp_path)]) == 0
        assert gen.main(["--check", "--chart", str(tmp_path)]) == 0

    def test_every_value_is_documented(self) -> None:
        documented = {p.key for s in gen.parse(VALUES_TEXT) for p in s.params}
        undocumented = [
            path
            for path in gen.leaf_paths(VALUES)
            if not any(path == key or path.startswith(key + ".") for key in documented)
        ]
        assert not undocumented, f"add ## @param lines for: {undocumented}"

    def test_every_documented_key_exists(self) -> None:
        sentinel = gen.lookup({}, "x")
        for section in gen.parse(VALUES_TEXT):
            for param in section.params:
                present = gen.lookup(VALUES, param.key) is not sentinel
                assert present or param.optional, f"{param.key} is documented but not in values"
                assert not (present and param.optional), f"{param.key}: optional but set"

    def test_keys_are_documented_once(self) -> None:
        keys = [p.key for s in gen.parse(VALUES_TEXT) for p in s.params]
        assert len(keys) == len(set(keys))


class TestSchema:
    def test_defaults_are_valid(self) -> None:
        jsonschema.Draft7Validator(SCHEMA).validate(VALUES)

    @pytest.mark.parametrize("scenario", ["minimal", "production", "bundle"])
    def test_scenarios_are_valid(self, scenario: str) -> None:
        jsonschema.Draft7Validator(SCHEMA).validate(merge_values(VALUES, scenario_values(scenario)))

    def test_every_object_is_closed(self) -> None:
        def walk(node: Any, where: str) -> list[str]:
            open_objects = []
            if isinstance(node, dict):
                if "properties" in node and node.get("additionalProperties") is not False:
                    open_objects.append(where)
                if node.get("type") == "object" and "properties" not in node:
                    # a map: its values must be constrained, or it is a documented pass-through
                    if "additionalProperties" not in node and "description" not in node:
                        open_objects.append(where)
                for key, child in node.items():
                    open_objects += walk(child, f"{where}/{key}")
            elif isinstance(node, list):
                for i, child in enumerate(node):
                    open_objects += walk(child, f"{where}/{i}")
            return open_objects

        assert not walk(SCHEMA, "#"), walk(SCHEMA, "#")

    def test_every_value_is_in_the_schema(self) -> None:
        def walk(values: Any, schema: dict[str, Any], where: str) -> list[str]:
            schema = _resolve(schema)
            missing = []
            if isinstance(values, dict) and "properties" in schema:
                for key, child in values.items():
                    if key not in schema["properties"]:
                        missing.append(f"{where}.{key}")
                    else:
                        missing += walk(child, schema["properties"][key], f"{where}.{key}")
            return missing

        assert not walk(VALUES, SCHEMA, "values")

    def test_every_schema_property_is_a_value(self) -> None:
        params = [p for s in gen.parse(VALUES_TEXT) for p in s.params]
        optional = {p.key for p in params if p.optional}
        # A key documented as a whole (resources, probes, security contexts) may leave fields
        # of its schema unset.
        wholes = {p.key for p in params if isinstance(gen.lookup(VALUES, p.key), dict)}

        def walk(values: Any, schema: dict[str, Any], where: str) -> list[str]:
            schema = _resolve(schema)
            extra = []
            if isinstance(values, dict) and "properties" in schema and where not in wholes:
                for key, child in schema["properties"].items():
                    path = f"{where}.{key}".removeprefix(".")
                    if key not in values:
                        if path not in optional and path != "global":
                            extra.append(path)
                    else:
                        extra += walk(values[key], child, path)
            return extra

        assert not walk(VALUES, SCHEMA, "")
