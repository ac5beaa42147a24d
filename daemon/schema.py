"""Access to schema/gateway.schema.json: the validator and the defaults it declares.

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
