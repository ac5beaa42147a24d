"""How a malformed request body is explained (daemon/http/jsonsyntax.py): where, as line and
column in characters, and what is wrong there, in the gateway's own words."""

from __future__ import annotations

import orjson
import pytest

from gatewayd.daemon.http.jsonsyntax import explain_invalid_json


def explained(body: bytes) -> str:
    with pytest.raises(orjson.JSONDecodeError) as caught:
        orjson.loads(body)
    return explain_invalid_json(body, caught.value)


@pytest.mark.parametrize(("body", "where", "what"), [
    (b'{"model": "chat", "messages": [', "line 1, column 32", "ends before the JSON does"),
    (b'{"model": nul}', "line 1, column 11", "'nul' is not a JSON value"),
    (b'{"model": NaN}', "line 1, column 11", "'NaN' is not a JSON value"),
    (b'{"model": "chat",}', "line 1, column 17", "a comma before the closing '}'"),
    (b"{'model': 'chat'}", "line 1, column 2", "double quotes"),
    (b'{"model": "chat"} extra', "line 1, column 19", "more text follows the JSON value"),
    (b'{\n  "model": "chat"\n  "stream": true\n}', "line 3, column 3", "a comma is missing before '\"'"),
    (b'{"model" "chat"}', "line 1, column 10", "a colon is missing"),
    (b'{"messages": [1, 2}', "line 1, column 19", "a closing ']' is missing before '}'"),
    (b'{"n": 01}', "line 1, column 7", "'01' is not a number"),
    (b'{"n": 1.}', "line 1, column 9", "a number ends in '.'"),
    (b'{"s": "a\\qb"}', "line 1, column 9", "'\\q' is not a valid escape"),
    (b'{"s": "tab\there"}', "line 1, column 11", "control character U+0009"),
    (b'{"\xc3\xa9t\xc3\xa9": x}', "line 1, column 9", "'x' is not a JSON value"),  # columns count characters
    (b'{"s": "caf\xe9"}', "line 1, column 11", "byte 0xe9 is not UTF-8 text"),
    (b'\n\n{"s": "\xff"}', "line 3, column 8", "byte 0xff is not UTF-8 text"),
])
def test_where_and_what(body, where, what):
    message = explained(body)
    assert message.startswith(f"the body is not valid JSON: {where}: "), message
    assert what in message


@pytest.mark.parametrize("body", [b"", b"  \r\n\t "])
def test_an_empty_body_is_said_to_be_empty(body):
    assert explained(body) == "the body is not valid JSON: the body is empty"


def test_no_message_quotes_more_than_a_few_characters_of_the_body():
    body = b'{"model": ' + b"x" * 100_000 + b"}"
    assert len(explained(body)) < 200


def test_nesting_deeper_than_the_parser_reads_is_said_to_be_that():
    message = explained(b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert message.startswith("the body is not valid JSON: line 1, column ")
    assert "nested more than" in message
