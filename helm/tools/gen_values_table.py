"""Generate the chart README's values table from the `## @param` comments of values.yaml.

    python helm/tools/gen_values_table.py            rewrite the table in the chart's README
    python helm/tools/gen_values_table.py --check    exit 1 when the README's table is out of date

Comment syntax (Bitnami readme-generator style, the subset this chart uses):

    ## @section <title>                 starts a table
    ## @param <dotted.key> <description>  one row; the default is read from values.yaml itself

A key that is only commented out in values.yaml (an optional key with an example) is documented
with a description starting "(optional)" and shows "unset" as its default. The table sits between
the README's `<!-- values:start -->` and `<!-- values:end -->` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Param", "Section", "leaf_paths", "lookup", "parse", "render", "update_readme"]

CHART = Path(__file__).resolve().parents[1] / "telerad-broker"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_SECTION = re.compile(r"^\s*## @section (?P<title>.+?)\s*$")
_PARAM = re.compile(r"^\s*## @param (?P<key>[A-Za-z0-9_.]+) (?P<description>.+?)\s*$")
_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One documented key."""

    key: str
    description: str

    @property
    def optional(self) -> bool:
        return self.description.startswith("(optional)")


@dataclass
class Section:
    """A titled group of documented keys."""

    title: str
    params: list[Param]


def parse(values_text: str) -> list[Section]:
    """The sections and documented keys of a values.yaml, in file order."""
    sections: list[Section] = []
    for line in values_text.splitlines():
        if m := _SECTION.match(line):
            sections.append(Section(m["title"], []))
        elif m := _PARAM.match(line):
            if not sections:
                raise ValueError(f"@param {m['key']} before any @section")
            sections[-1].params.append(Param(m["key"], m["description"]))
    return sections


def lookup(values: Any, key: str) -> Any:
    """The value at a dotted key, or a private sentinel when absent."""
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values a user sets: scalars, lists and empty maps."""
    if isinstance(values, dict) and values:
        paths: list[str] = []
        for key, child in values.items():
            paths += leaf_paths(child, f"{prefix}.{key}" if prefix else str(key))
        return paths
    return [prefix]


def _default(values: Any, param: Param) -> str:
    value = lookup(values, param.key)
    if value is _MISSING:
        return "unset"
    return "`" + json.dumps(value, separators=(", ", ": ")).replace("|", "\\|") + "`"


def render(values_text: str) -> str:
    """The Markdown tables for a values.yaml."""
    values = yaml.safe_load(values_text)
    out: list[str] = []
    for section in parse(values_text):
        out += [f"### {section.title}", "", "| Name | Description | Default |", "|---|---|---|"]
        for p in section.params:
            description = p.description.replace("|", "\\|")
            out.append(f"| `{p.key}` | {description} | {_default(values, p)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme_text: str, table: str) -> str:
    """The README with the text between the markers replaced by the table."""
    head, sep, rest = readme_text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the README lacks the {START} / {END} markers")
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail when the README is stale")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory")
    args = parser.parse_args(argv)
    readme = args.chart / "README.md"
    current = readme.read_text()
    wanted = update_readme(current, render((args.chart / "values.yaml").read_text()))
    if args.check:
        if current != wanted:
            print(
                f"{readme} is out of date: run python helm/tools/gen_values_table.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != wanted:
        readme.write_text(wanted)
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
