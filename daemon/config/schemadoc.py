"""Access to schema/gateway.schema.json: the validator, the defaults it declares, and
what it says about the value at a path of a document (`schema_at`).

The schema is the single source of truth for defaults: the compiler asks
`default(...)` here rather than keeping a second copy.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator


@functools.cache
def schema_text() -> str:
    return resources.files("gatewayd.schema").joinpath("gateway.schema.json").read_text("utf-8")


@functools.cache
def schema() -> dict:
    return json.loads(schema_text())


@functools.cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def definition(name: str) -> dict:
    return schema()["$defs"][name]


def default(definition_name: str, *keys: str) -> Any:
    """The default of a key: `default("timeouts", "connect")` -> "5s"."""
    node = definition(definition_name)
    for key in keys:
        node = node["properties"][key]
    if "default" in node:
        return node["default"]
    raise KeyError(f"schema declares no default for {definition_name}.{'.'.join(keys)}")


def property_names(definition_name: str) -> tuple[str, ...]:
    return tuple(definition(definition_name)["properties"])


def entry_schema(node_schema: dict) -> dict | None:
    """The schema of every entry, for a mapping of names (`providers`, `models`, `aliases`)."""
    entries = node_schema.get("additionalProperties")
    return resolve(entries) if isinstance(entries, dict) and "propertyNames" in node_schema else None


def schema_at(path: tuple) -> dict:
    """The schema of the value at `path` in a document ({} where the schema says nothing)."""
    node = resolve(schema())
    for part in path:
        if isinstance(part, int):
            node = resolve(node.get("items", {}))
        elif part in node.get("properties", {}):
            node = resolve(node["properties"][part])
        elif isinstance(node.get("additionalProperties"), dict):
            node = resolve(node["additionalProperties"])
        else:
            return {}
    return node


def resolve(node: dict) -> dict:
    """`node` with its local `$ref` followed (the schema's refs all point into `$defs`)."""
    while "$ref" in node:
        node = {**schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def is_valid(node_schema: dict, value: Any) -> bool:
    """`value` against one part of the schema, whose `$ref`s point into the schema's `$defs`."""
    return Draft202012Validator({**node_schema, "$defs": schema()["$defs"]}).is_valid(value)
