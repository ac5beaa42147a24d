"""The part of a document the schema accepted, so that the compiler can check it too.

The compiler reads only schema-valid documents. So that one `gatewayd check` (or reload)
reports every error at once, the parts the schema refused are put aside and the compiler
runs on the rest: a refused provider, model or alias keeps its name (whatever names it
still resolves) and gets a stand-in value that compiles without a word; a refused
`server` or `defaults` falls back to the schema's defaults; an unknown top-level key goes.
When that is not possible (a whole `providers`, `models` or `aliases` section refused, or
an entry's name), there is no valid part, and only the schema's errors are reported.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

from jsonschema.exceptions import ValidationError

from gatewayd.daemon.config.schemadoc import entry_schema, schema_at, validator
from gatewayd.daemon.config.yamldoc import Document

# A name no config uses (names start with a letter or digit; this one says what it is).
STAND_IN = "0-gatewayd-stand-in-for-a-refused-part"


def valid_part(document: Document) -> Document | None:
    """`document` with every refused part replaced by a stand-in; None when there is no valid part."""
    data = copy.deepcopy(document.data)
    for error in validator().iter_errors(document.data):
        if not set_aside(data, tuple(error.absolute_path), error):
            return None
    if not validator().is_valid(data):
        return None
    return dataclasses.replace(document, data=data)


def set_aside(data: dict, path: tuple, error: ValidationError) -> bool:
    """Put aside the part of `data` that `error` is about; False when that cannot be done."""
    if not path:
        if error.validator == "additionalProperties":
            for key in [key for key in data if key not in schema_at(()).get("properties", {})]:
                del data[key]
            return True
        if error.validator == "required":
            data["version"] = 1
            return True
        return False
    section = path[0]
    stand_in = STAND_INS.get(section)
    if entry_schema(schema_at((section,))) is None:  # version, server, defaults: their defaults stand in
        data.pop(section, None)
        data.setdefault("version", 1)
        return True
    if len(path) == 1 or stand_in is None:  # the section itself, or the name of an entry
        return False
    data[section][path[1]] = stand_in(data)
    return True


def stand_in_provider(data: dict) -> dict[str, Any]:
    return {"type": "mock"}


def stand_in_model(data: dict) -> dict[str, Any]:
    section(data, "providers").setdefault(STAND_IN, stand_in_provider(data))
    return {"provider": STAND_IN, "model": "stand-in"}


def stand_in_alias(data: dict) -> dict[str, Any]:
    models = section(data, "models")
    if STAND_IN not in models:
        models[STAND_IN] = stand_in_model(data)
    return {"targets": [STAND_IN]}


def section(data: dict, name: str) -> dict:
    """`data[name]` as a mapping to add a stand-in to (one that is not a mapping is refused whole)."""
    if not isinstance(data.get(name), dict):
        data[name] = {}
    return data[name]


STAND_INS: dict[str, Callable[[dict], dict[str, Any]]] = {
    "providers": stand_in_provider, "models": stand_in_model, "aliases": stand_in_alias,
}
