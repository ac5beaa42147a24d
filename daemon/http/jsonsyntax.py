"""Where and why a request body is not JSON, said in the gateway's own words.

orjson locates a syntax error (`JSONDecodeError.pos`, `.lineno`, `.colno`, in characters)
but its wording is its own and may change; what is wrong is read here from the text at that
spot. Only a refused body comes here, so none of this costs a valid request anything:

    the body is not valid JSON: line 3, column 3: a comma is missing before '"'
"""

from __future__ import annotations

import re

import orjson

PREFIX = "the body is not valid JSON"
READ_DEPTH = 1024  # levels of arrays and objects orjson reads
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# what a writer of JSON by hand forgets most, tried in turn where the JSON went wrong
MISSING = ((",", "a comma"), (":", "a colon"), ("]", "a closing ']'"), ("}", "a closing '}'"))


def explain_invalid_json(body: bytes | bytearray, error: orjson.JSONDecodeError) -> str:
    """`the body is not valid JSON: line L, column C: what is wrong there` for a body orjson refused."""
    if not body.strip():
        return f"{PREFIX}: the body is empty"
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as bad:
        line, column = line_and_column(bytes(body[:bad.start]).decode("utf-8"))
        return f"{PREFIX}: line {line}, column {column}: byte 0x{body[bad.start]:02x} is not UTF-8 text"
    return f"{PREFIX}: line {error.lineno}, column {error.colno}: {what_is_wrong(text, error.pos)}"


def line_and_column(before: str) -> tuple[int, int]:
    """The 1-based line and column just after `before`."""
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def what_is_wrong(text: str, pos: int) -> str:
    """What the text at character `pos`, where the JSON stopped making sense, does wrong."""
    rest = text[pos:]
    if not rest.strip():
        return "the text ends before the JSON does (a string, array or object left open?)"
    if is_json(text[:pos]):
        return "more text follows the JSON value"
    if depth_at(text[:pos]) >= READ_DEPTH:
        return f"arrays and objects are nested more than {READ_DEPTH} levels deep"
    char = rest[0]
    closing = rest[1:].lstrip()[:1]
    if char == "," and closing in ("}", "]"):
        return f"a comma before the closing '{closing}'"
    if char == "'":
        return "strings and keys are written in double quotes"
    if char == "\\":
        return f"'{rest[:2]}' is not a valid escape in a string"
    if number_cut_short(text[:pos]):
        return f"a number ends in '{text[pos - 1]}'"
    for missing, name in MISSING:
        if repaired_by(text, pos, missing):
            return f"{name} is missing before {shown(char)}"
    if char.isalpha():
        return f"'{next_word(rest)}' is not a JSON value (true, false, null, a number or a \"string\")"
    if ord(char) < 0x20:
        return f"control character U+{ord(char):04X} (inside a string, write it escaped)"
    if char in "+.0123456789":
        return f"'{next_word(rest)}' is not a number as JSON writes them"
    return f"unexpected {shown(char)}"


def repaired_by(text: str, pos: int, insert: str) -> bool:
    """Whether `insert` at `pos` gets the JSON past this spot: what was missing there."""
    try:
        orjson.loads(text[:pos] + insert + text[pos:])
    except orjson.JSONDecodeError as error:
        return error.pos > pos + len(insert)
    return True


def number_cut_short(before: str) -> bool:
    """`before` ends in a sign, a decimal point or an exponent with no digit after it."""
    last = before[-1:]
    return last in ("-", "+") or last in (".", "e", "E") and before[-2:-1].isdigit()


def depth_at(before: str) -> int:
    """How many arrays and objects are open at the end of `before` (brackets in strings aside)."""
    bare = STRING.sub("", before)
    return bare.count("[") + bare.count("{") - bare.count("]") - bare.count("}")


def is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def next_word(text: str, limit: int = 20) -> str:
    """The letters, digits and number signs `text` starts with (at most `limit` of them)."""
    end = 0
    while end < len(text) and end < limit and (text[end].isalnum() or text[end] in "_+-."):
        end += 1
    return text[:end]


def shown(char: str) -> str:
    return f"'{char}'" if char.isprintable() else f"character U+{ord(char):04X}"
