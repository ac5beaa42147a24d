"""The access-log line formats, on records built by hand (the end-to-end lines are in test_api.py).

`text_line` and `json_line` are written field by field, and `text_value` keeps a
memo, for speed; these tests pin the exact bytes, check both against the plain
reflective version they replaced (kept here as the reference), and check that
the memo gives the same answers, every time, and stays bounded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.daemon.observe.accesslog import (
    ERROR_LIMIT,
    MODEL_LIMIT,
    TEXT_VALUES_KEPT,
    TEXT_VALUES_UP_TO,
    AccessRecord,
    TextValues,
    clip,
    json_line,
    text_line,
)

FIELD_NAMES = [f.name for f in fields(AccessRecord)]
values = TextValues()  # the memo under test, emptied around each test
NOW = 1712345678.123456


@pytest.fixture(autouse=True)
def fresh_memo():
    values.known.clear()
    yield
    values.known.clear()


@pytest.fixture
def frozen_time(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW)


def served() -> AccessRecord:
    return AccessRecord("POST", "/v1/chat/completions", 200, model="bench", deployment="bench-model", attempts=1,
                        latency_ms=1.234, ttfb_ms=1.2, prompt_tokens=9, completion_tokens=12, key="bench",
                        config="3f2a9c1b7d4e")


# --- the reference: what the lines were before they were written for speed -------------------

def reference_text_value(value: str) -> str:
    if value and value.isascii() and value.isprintable() and not any(c in value for c in ' "\\'):
        return value
    return json.dumps(value)


def reference_text_line(r: AccessRecord) -> str:
    line = f"{r.method} {r.path} {r.status}"
    if r.model is not None:
        line += f" model={reference_text_value(clip(r.model, MODEL_LIMIT))}"
    if r.deployment is not None:
        line += f" deployment={r.deployment}"
    line += f" attempts={r.attempts} latency_ms={r.latency_ms:.1f}"
    if r.ttfb_ms is not None:
        line += f" ttfb_ms={r.ttfb_ms:.1f}"
    if r.prompt_tokens is not None:
        line += f" prompt_tokens={r.prompt_tokens}"
    if r.completion_tokens is not None:
        line += f" completion_tokens={r.completion_tokens}"
    if r.cost is not None:
        line += f" cost={r.cost:.6f}"
    if r.key is not None:
        line += f" key={reference_text_value(r.key)}"
    if r.config is not None:
        line += f" config={r.config}"
    if r.error is not None:
        line += f" error={json.dumps(clip(r.error, ERROR_LIMIT))}"
    return line


def reference_json_line(record: AccessRecord) -> str:
    kept = {"ts": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": "info", "event": "access", "msg": f"{record.method} {record.path} {record.status}"}
    kept |= {k: v for k, v in asdict(record).items() if v is not None}
    for name, limit in (("model", MODEL_LIMIT), ("error", ERROR_LIMIT)):
        if isinstance(kept.get(name), str):
            kept[name] = clip(kept[name], limit)
    return orjson.dumps(kept).decode()


# client-chosen text: spaces, quotes, backslashes, control, non-ASCII, line separators, long
chosen = st.one_of(
    st.sampled_from(["bench", "gpt-4o-mini", "", " ", 'a"b', "a\\b", "x\ny", "\x1b[2J", "é", "\u2028", "😀",
                     "m" * (MODEL_LIMIT + 1), "q " * 1500]),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=300),  # orjson refuses lone surrogates
)
floats = st.floats(allow_nan=True, allow_infinity=True)
counts = st.integers(min_value=0, max_value=2**63 - 1)
records = st.builds(
    AccessRecord, method=st.sampled_from(["POST", "GET"]), path=st.sampled_from(["/v1/chat/completions", "/v1/models"]),
    status=st.sampled_from([200, 400, 404, 502]), model=st.none() | chosen,
    deployment=st.none() | st.sampled_from(["bench-model", "m"]), attempts=st.integers(0, 5), latency_ms=floats,
    ttfb_ms=st.none() | floats, prompt_tokens=st.none() | counts, completion_tokens=st.none() | counts,
    cost=st.none() | floats, key=st.none() | chosen, error=st.none() | chosen,
    config=st.none() | st.just("3f2a9c1b7d4e"))


@settings(max_examples=300, deadline=None)
@given(records)
def test_text_line_matches_the_reference_and_again_from_the_memo(record):
    expected = reference_text_line(record)
    assert text_line(record, values) == expected
    assert text_line(record, values) == expected  # now the model and key names are remembered
    assert len(values.known) <= TEXT_VALUES_KEPT


@settings(max_examples=300, deadline=None)
@given(records)
def test_json_line_matches_the_reference(record):
    real = time.time
    time.time = lambda: NOW  # hypothesis and function-scoped fixtures do not mix
    try:
        assert json_line(record) == reference_json_line(record)
    finally:
        time.time = real


# --- exact lines ------------------------------------------------------------------------------

def test_text_line_of_a_served_request():
    record = served()
    assert text_line(record, values) == (
        "POST /v1/chat/completions 200 model=bench deployment=bench-model attempts=1 latency_ms=1.2 ttfb_ms=1.2"
        " prompt_tokens=9 completion_tokens=12 key=bench config=3f2a9c1b7d4e")
    record.cost, record.key = 0.000123, None
    assert text_line(record, values) == (
        "POST /v1/chat/completions 200 model=bench deployment=bench-model attempts=1 latency_ms=1.2 ttfb_ms=1.2"
        " prompt_tokens=9 completion_tokens=12 cost=0.000123 config=3f2a9c1b7d4e")


def test_text_line_leaves_out_what_is_not_set():
    assert text_line(AccessRecord("GET", "/v1/models", 200, latency_ms=0.05), values) == (
        "GET /v1/models 200 attempts=0 latency_ms=0.1")
    failed = AccessRecord("POST", "/v1/chat/completions", 404, model="nope", latency_ms=0.321, key="app",
                          error="the model 'nope' does not exist", config="v1")
    assert text_line(failed, values) == (
        "POST /v1/chat/completions 404 model=nope attempts=0 latency_ms=0.3 key=app config=v1"
        ' error="the model \'nope\' does not exist"')


def test_json_line_starts_as_every_json_log_line_then_keeps_the_field_order(frozen_time):
    everything = AccessRecord("POST", "/v1/chat/completions", 502, model="m", deployment="d", attempts=2,
                              latency_ms=1.5, ttfb_ms=0.5, prompt_tokens=1, completion_tokens=2, cost=0.25,
                              key="k", error="boom", config="v", format="openai", cache="miss",
                              request_id="req_1")
    # every field, none forgotten
    assert list(orjson.loads(json_line(everything))) == ["ts", "level", "event", "msg", *FIELD_NAMES]
    assert json_line(served()) == (
        '{"ts":"2024-04-05T19:34:38.123Z","level":"info","event":"access","msg":"POST /v1/chat/completions 200",'
        '"method":"POST","path":"/v1/chat/completions","status":200,"model":"bench","deployment":"bench-model",'
        '"attempts":1,"latency_ms":1.234,"ttfb_ms":1.2,"prompt_tokens":9,"completion_tokens":12,"key":"bench",'
        '"config":"3f2a9c1b7d4e"}')


def test_json_line_clips_model_and_error(frozen_time):
    record = AccessRecord("POST", "/v1/chat/completions", 404, model="m" * 1000, error="e" * 5000)
    line = orjson.loads(json_line(record))
    assert line["model"] == "m" * MODEL_LIMIT + f"...[truncated {1000 - MODEL_LIMIT} characters]"
    assert line["error"] == "e" * ERROR_LIMIT + f"...[truncated {5000 - ERROR_LIMIT} characters]"
    assert record.model == "m" * 1000  # the record itself is left alone


# --- text_value and its memo ------------------------------------------------------------------

@pytest.mark.parametrize(("value", "written"), [
    ("bench", "bench"),
    ("meta-llama/Llama-3.1-8B:free", "meta-llama/Llama-3.1-8B:free"),
    ("", '""'),
    ("gpt 4o", '"gpt 4o"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a\\b", '"a\\\\b"'),
    ("x\ny\r\x1b", '"x\\ny\\r\\u001b"'),
    ("modèle", '"mod\\u00e8le"'),
    ("\u2028", '"\\u2028"'),
])
def test_text_value_bare_or_quoted(value, written):
    assert values(value) == written
    assert values(value) == written  # from the memo


def test_an_unsafe_name_twice_is_quoted_once_and_the_same():
    name = 'evil" status=200\nPOST'
    first = values(name)
    assert first == json.dumps(name)
    assert values(name) is first  # remembered, not quoted again
    record = AccessRecord("POST", "/v1/chat/completions", 404, model=name, key=name)
    expected = f"POST /v1/chat/completions 404 model={first} attempts=0 latency_ms=0.0 key={first}"
    assert text_line(record, values) == text_line(record, values) == expected


def test_a_name_longer_than_the_clip_limit_is_clipped_then_quoted_the_same_every_time():
    name = "é" * (MODEL_LIMIT + 44)
    expected = json.dumps("é" * MODEL_LIMIT + "...[truncated 44 characters]")
    record = AccessRecord("POST", "/v1/chat/completions", 404, model=name)
    lines = {text_line(record, values) for _ in range(3)}
    assert lines == {f"POST /v1/chat/completions 404 model={expected} attempts=0 latency_ms=0.0"}
    assert name not in values.known  # never remembered unclipped
    assert all(len(value) <= TEXT_VALUES_UP_TO for value in values.known)


def test_a_remembered_model_name_is_one_clipping_leaves_alone():
    # else a name remembered as a key could be written unclipped as a model
    assert TEXT_VALUES_UP_TO <= MODEL_LIMIT
    long_key = "k" * (MODEL_LIMIT + 1)
    record = AccessRecord("POST", "/v1/chat/completions", 200, model=long_key, key=long_key)
    clipped = json.dumps(clip(long_key, MODEL_LIMIT))
    for _ in range(2):
        assert text_line(record, values) == (
            f"POST /v1/chat/completions 200 model={clipped} attempts=0 latency_ms=0.0 key={long_key}")


def test_only_short_values_are_remembered():
    assert values("s" * TEXT_VALUES_UP_TO) == "s" * TEXT_VALUES_UP_TO
    assert values("l" * (TEXT_VALUES_UP_TO + 1)) == "l" * (TEXT_VALUES_UP_TO + 1)
    assert set(values.known) == {"s" * TEXT_VALUES_UP_TO}


def test_the_memo_stays_bounded_and_right_after_it_is_emptied():
    assert TEXT_VALUES_KEPT <= 1024  # at most a few megabytes, whatever names clients send
    names = [f"model {i}" for i in range(3 * 1024 + 7)]  # every one unsafe: a space
    for name in names:
        assert values(name) == json.dumps(name)
        assert len(values.known) <= TEXT_VALUES_KEPT
    assert 0 < len(values.known) <= TEXT_VALUES_KEPT
    for name in (names[0], names[-1], "bench"):  # forgotten, remembered, new
        assert values(name) == reference_text_value(name)
