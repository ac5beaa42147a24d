"""Schema validation that speaks to people: each jsonschema error becomes a
located `Problem` pointing at the offending node itself (an unknown key at the
key, a wrong value at the value), saying what is wrong and what is allowed.
A key indented into the wrong mapping is one problem saying where it belongs,
in place of the errors it causes (daemon/config/indentation.py); a value that could
be a secret is quoted masked (`quoted`).
"""

from __future__ import annotations

from typing import Any, Iterable

from jsonschema.exceptions import ValidationError

from gatewayd.daemon.config.indentation import Misplaced, find_misplaced
from gatewayd.daemon.config.schemadoc import validator
from gatewayd.daemon.config.yamldoc import Document
from gatewayd.daemon.core.problems import Problem, quoted, suggest
from gatewayd.daemon.core.windows import WindowSyntaxError, parse_window

TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "a whole number",
              "object": "a mapping", "array": "a list", "boolean": "true or false", "null": "null"}


def describe_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def type_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def expected(types: str | list[str]) -> str:
    names = [TYPE_NAMES.get(t, t) for t in ([types] if isinstance(types, str) else types)]
    return " or ".join(names)


def shown(doc: Document, value: Any) -> str:
    """A value quoted for a message, unless it came from the environment: a secret put
    under the wrong key (`base_url: ${OPENAI_API_KEY}`) must not be printed; nor one pasted
    there literally (`quoted` masks what could be one)."""
    text = str(value)
    for name, resolved in doc.env_refs.items():
        if resolved and len(resolved) >= 3 and resolved in text:
            return f"the value of ${{{name}}}"
    return quoted(text)


def validate(document: Document) -> list[Problem]:
    errors = list(validator().iter_errors(document.data))
    misplaced = find_misplaced(document, errors)
    problems = [indentation_problem(document, block) for block in misplaced]
    for error in errors:
        if any(block.caused(error) for block in misplaced):
            continue  # said once, as the indentation it comes from
        skip = frozenset().union(*(block.skipped(error) for block in misplaced))
        problems.extend(explain(document, error, skip))
    unique = {(p.line, p.column, p.message): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.line, p.column, p.message))


def indentation_problem(doc: Document, block: Misplaced) -> Problem:
    """One problem for keys indented into the wrong mapping, at the first of them."""
    mark = doc.key_mark(block.where + (block.keys[0],))
    where, home = describe_path(block.where), describe_path(block.home)
    if len(block.keys) == 1:
        message = (f"{quoted(block.keys[0])} is indented as a key of {where}; it belongs under {home} "
                   "(check its indentation)")
    else:
        names = ", ".join(quoted(key) for key in block.keys[:-1]) + f" and {quoted(block.keys[-1])}"
        message = f"{names} are indented as keys of {where}; they belong under {home} (check their indentation)"
    return Problem(doc.path, mark.line, mark.column, message)


def explain(doc: Document, error: ValidationError, skip: frozenset[str] = frozenset()) -> list[Problem]:
    """The problems one schema error stands for; keys in `skip` are reported elsewhere."""
    path = tuple(error.absolute_path)
    where = describe_path(path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance

    def at_value(message: str) -> Problem:
        mark = doc.mark(path)
        return Problem(doc.path, mark.line, mark.column, message)

    if keyword == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        problems = []
        for key in value:
            if key in allowed or key in skip:
                continue
            mark = doc.key_mark(path + (key,))
            hint = suggest(key, allowed) or f"; allowed keys: {', '.join(allowed)}"
            problems.append(Problem(doc.path, mark.line, mark.column,
                                    f"unknown key {quoted(key)} in {where}{hint}"))
        return problems
    if keyword == "required" and isinstance(value, dict):
        mark = doc.key_mark(path)
        return [Problem(doc.path, mark.line, mark.column, f"{where} is missing the required key '{key}'")
                for key in error.validator_value if key not in value and key not in skip]
    if keyword == "propertyNames" or "propertyNames" in error.schema_path:
        # jsonschema reports a bad name as the name's own `pattern` failure, located at the parent
        mark = doc.key_mark(path + (value,))
        hint = definition_hint(schema)
        return [Problem(doc.path, mark.line, mark.column, f"{quoted(value)} is not a valid name in {where}: {hint}")]
    if keyword == "type":
        return [at_value(f"{where} must be {expected(error.validator_value)}, found {type_of(value)}")]
    if keyword == "enum":
        allowed = [str(v) for v in error.validator_value]
        hint = suggest(str(value), allowed)
        return [at_value(f"{where}: {shown(doc, value)} is not allowed{hint}; use one of: {', '.join(allowed)}")]
    if keyword == "const":
        if path == ("version",):
            return [at_value(f"version {value} is not supported: this gatewayd reads version: 1")]
        return [at_value(f"{where} must be {error.validator_value!r}")]
    if keyword == "pattern":
        if len(path) >= 3 and path[-3] == "windows" and path[-2] in ("only", "except"):
            try:
                parse_window(str(value))
            except WindowSyntaxError as exc:
                return [at_value(f"{where}: {exc}")]
        hint = schema.get("x-hint", f"it must match {error.validator_value}")
        return [at_value(f"{where}: {shown(doc, value)} is not valid: {hint}")]
    if keyword == "minItems" and error.validator_value == 1:
        return [at_value(f"{where} must not be empty")]
    return [at_value(f"{where}: {library_message(doc, error)}")]


def library_message(doc: Document, error: ValidationError) -> str:
    """jsonschema's own message, with the value it quotes (as Python's repr) quoted as ours."""
    value = error.instance
    if isinstance(value, str) and repr(value) in error.message:
        return error.message.replace(repr(value), shown(doc, value))
    return error.message


def definition_hint(schema: dict) -> str:
    names = schema.get("propertyNames", schema)
    if "$ref" in names:
        from gatewayd.daemon.config.schemadoc import definition

        names = definition(names["$ref"].rsplit("/", 1)[-1])
    return names.get("x-hint", "not a valid name")
