"""The neutral chat request: OpenAI bodies decoded into it, and the encoders that write it for
Anthropic, Ollama and OpenAI upstreams. (The exact bytes each encoder writes for the OpenAI
bodies of tests/test_adapter_anthropic.py and tests/test_adapter_ollama.py are asserted there.)
"""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.adapters import ollama as ollama_request
from gatewayd.daemon.core.conversation import (
    AUTO,
    REQUIRED,
    Chat,
    Image,
    Malformed,
    Message,
    Refusal,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    UnsupportedPart,
    UnsupportedTool,
)
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.formats import anthropic as anthropic_request
from gatewayd.daemon.formats import openai as openai_request
from gatewayd.daemon.formats.openai import decode_chat

MODEL = "upstream-model"

# --- the request bodies of tests/test_adapter_anthropic.py and tests/test_adapter_ollama.py ----

ANTHROPIC_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }},
    {"type": "function", "function": {"name": "now"}},
]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather for a location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
                   "required": ["location", "format"]},
}}
USER_X = [{"role": "user", "content": "x"}]
CALL = {"type": "function", "function": {"name": "f", "arguments": "{}"}}


def with_choice(choice, parallel) -> dict:
    body: dict = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": ANTHROPIC_TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    return body


def invalid_arguments(arguments: str) -> dict:
    return {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]}


def image_message(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


NAMED = {"type": "function", "function": {"name": "now"}}
BODIES = {
    # tests/test_adapter_anthropic.py
    "minimal": {"model": "alias", "messages": [{"role": "user", "content": "Hi"}]},
    "system_hoisted": {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "developer", "content": "Never apologise."},
        {"role": "user", "content": "Again"},
    ]},
    "merged_turns": {"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}], "name": "bot"},
        {"role": "user", "content": "five"},
        {"role": "assistant", "content": "six"},
    ]},
    "images": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]},
    "image_not_base64": image_message("data:image/png,notbase64"),
    "image_ftp": image_message("ftp://example.com/a.png"),
    "image_file": image_message("file:///etc/passwd"),
    "audio_part": {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
    "function_role": {"messages": [{"role": "function", "name": "f", "content": "x"}]},
    "no_messages": {"messages": []},
    "n_2": {"messages": USER_X, "n": 2},
    **{f"tool_choice_{i}": with_choice(choice, parallel) for i, (choice, parallel) in enumerate([
        (None, None), ("auto", None), ("required", None), ("none", None), (NAMED, None), (None, False),
        ("required", False), (NAMED, False), ("auto", True)])},
    "code_interpreter": {"messages": USER_X, "tools": [{"type": "code_interpreter"}]},
    "tool_choice_sometimes": {"messages": USER_X, "tools": ANTHROPIC_TOOLS, "tool_choice": "sometimes"},
    "tool_history": {"messages": [
        {"role": "user", "content": "Weather in Oslo and Paris?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "18 C, sun"}]},
        {"role": "user", "content": "Which is warmer?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
    ]},
    "arguments_unclosed": invalid_arguments('{"city": "Oslo"'),
    "arguments_array": invalid_arguments("[1, 2]"),
    "arguments_not_json": invalid_arguments("not json"),
    "tool_call_without_id": {"messages": [{"role": "assistant", "tool_calls": [CALL]}]},
    "tool_result_without_id": {"messages": [{"role": "tool", "content": "x"}]},
    "empty_tool_result": {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "id": "c"}]},
                                       {"role": "tool", "tool_call_id": "c", "content": ""}]},
    "sampling_and_dropped": {
        "model": "alias", "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "stream": True,
        "user": "user-42", "n": 1, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logprobs": True,
        "top_logprobs": 2, "logit_bias": {"1": 2}, "response_format": {"type": "json_object"}, "seed": 7,
        "stream_options": {"include_usage": True}, "store": True, "metadata": {"a": "b"},
    },
    "stop_list_max_completion_tokens": {"messages": USER_X, "stop": ["a", "b"], "max_tokens": 10,
                                        "max_completion_tokens": 20, "stream": False},
    "adapter_chat": {"model": "alias", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]},
    "adapter_stream": {"messages": [{"role": "user", "content": "Weather?"}], "tools": ANTHROPIC_TOOLS,
                       "stream_options": {"include_usage": True}, "stream": True},
    # tests/test_adapter_ollama.py
    "options_and_dropped": {
        "model": "llama",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": "\n\n", "max_tokens": 64,
        "presence_penalty": 0.5, "frequency_penalty": 0.3,
        "n": 1, "user": "u-1", "tool_choice": "auto", "logit_bias": {"1": 2},
    },
    "options_and_extensions": {
        "model": "llama", "messages": [{"role": "developer", "content": "Rules."}],
        "max_tokens": 10, "max_completion_tokens": 20, "stop": ["END", "###"], "stream": True,
        "options": {"num_ctx": 8192, "temperature": 1.0}, "temperature": 0,
        "keep_alive": "10m", "think": False,
    },
    "data_url_images": {"model": "llava", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "Answer briefly."},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%21"}},
    ]}]},
    "remote_image": {"model": "llava", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
    "ollama_tools": {
        "model": "llama", "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "What is the weather today in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_abc", "type": "function",
                "function": {"name": "get_current_weather",
                             "arguments": "{\"location\": \"Paris, FR\", \"format\": \"celsius\"}"},
            }]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "22 degrees"},
        ],
    },
    "arguments_not_an_object": {"model": "llama", "messages": [{"role": "assistant", "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}]}]},
    "format_json_object": {"model": "llama", "messages": [], "response_format": {"type": "json_object"}},
    "format_json_schema": {"model": "llama", "messages": [], "response_format": {
        "type": "json_schema", "json_schema": {"name": "person", "schema": {
            "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}},
    "format_text": {"model": "llama", "messages": [], "response_format": {"type": "text"}},
    "ollama_chat": {"model": "llama", "messages": [{"role": "user", "content": "Hello!"}],
                    "temperature": 0, "seed": 101},
    "ollama_stream": {"model": "llama", "messages": [{"role": "user", "content": "why is the sky blue?"}],
                      "stream": True, "stream_options": {"include_usage": True}},
    # more of what the old translations refuse, or read in their own way
    "legacy_function_result": {"messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
        {"role": "function", "name": "g", "content": "42"}]},
    "content_is_a_number": {"messages": [{"role": "user", "content": 5}]},
    "system_content_is_an_object": {"messages": [{"role": "system", "content": {"a": 1}}, *USER_X]},
    "text_is_a_number": {"messages": [{"role": "system", "content": [{"type": "text", "text": 5}]}]},
    "refusal_part": {"messages": [*USER_X, {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}]},
    "part_not_an_object": {"messages": [{"role": "user", "content": ["text"]}]},
    "image_url_as_a_string": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]},
    "image_url_without_url": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    "tool_calls_an_object": {"messages": [{"role": "assistant", "content": "x", "tool_calls": {"id": "c"}}]},
    "tool_call_not_an_object": {"messages": [{"role": "assistant", "content": "x", "tool_calls": ["c"]}]},
    "arguments_as_an_object": {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": [1]}}}]}]},
    "tool_call_id_unhashable": {"messages": [{"role": "tool", "tool_call_id": ["c"], "content": "x"}]},
    "stop_numbers": {"messages": USER_X, "stop": [1, 2]},
    "stop_empty": {"messages": USER_X, "stop": ""},
    "n_as_text": {"messages": USER_X, "n": "1"},
    "unknown_role": {"messages": [{"role": "critic", "content": "meh"}]},
    "options_not_an_object": {"messages": USER_X, "options": "fast"},
    "response_format_not_an_object": {"messages": USER_X, "response_format": "json"},
    "too_deep": {"messages": USER_X, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": orjson.loads("[" * 300 + "]" * 300)}}]},
}


def error_fields(error: UpstreamError) -> tuple:
    return error.failure, error.status, error.message, error.code, error.param


def outcome(encode, body: dict) -> bytes | tuple:
    """What a translation makes of `body`: the bytes, or the fields of the error it raises."""
    try:
        return encode(body, MODEL)
    except UpstreamError as error:
        return error_fields(error)


def new_anthropic(body: dict, model: str) -> bytes:
    return anthropic_request.encode_chat(decode_chat(body), model)


def new_ollama(body: dict, model: str) -> bytes:
    return ollama_request.encode_chat(decode_chat(body), model)


# --- (a) every body above: the encoders' bytes, or a client's 400 -------------------------------

@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_decoding_and_encoding_never_change_the_clients_body(body):
    before = copy.deepcopy(body)
    outcome(new_anthropic, body), outcome(new_ollama, body)
    assert body == before  # decoding reads the client's body, never changes it


def test_the_fixtures_reach_both_answers_and_every_kind_of_error():
    anthropic = [outcome(new_anthropic, body) for body in BODIES.values()]
    ollama = [outcome(new_ollama, body) for body in BODIES.values()]
    assert sum(isinstance(out, bytes) for out in anthropic) > 15 and sum(isinstance(out, bytes) for out in ollama) > 15
    codes = {out[3] for out in anthropic + ollama if isinstance(out, tuple)}
    assert codes == {"invalid_request", "unsupported_value", "invalid_value", "invalid_body"}
    assert {out[:2] for out in anthropic + ollama if isinstance(out, tuple)} == {(FailureClass.CLIENT, 400)}


# --- (b) ... and for bodies hypothesis makes up: bytes or a client's 400, never another error ---

def maybe(key: str, values: st.SearchStrategy) -> dict:
    return {key: values}


TEXTS = st.sampled_from(["", "Hi", "two words", "ünïcode ✓"])
URLS = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:text/plain,hi%21", "data:image/png,raw",
                        "data:;base64,AAAA", "data:", "https://example.com/a.png", "http://x/y", "ftp://x/y", ""])
IMAGE_URLS = st.one_of(
    st.fixed_dictionaries({"url": URLS}, optional={"detail": st.sampled_from(["low", "high", "auto"])}),
    URLS, st.just({}), st.none(),
)
PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text")}, optional={"text": TEXTS | st.integers(0, 2)}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": TEXTS}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": IMAGE_URLS}),
    st.sampled_from([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                     {"type": "file", "file": {"file_id": "f"}}, {"no": "type"}, "text", 5]),
)
CONTENTS = st.one_of(st.none(), TEXTS, st.lists(PARTS, max_size=4), st.sampled_from([5, True, {"a": 1}]))
IDS = st.sampled_from(["call_1", "call_2", "", ["call_1"]])
ARGUMENTS = st.sampled_from(['{"city": "Oslo"}', "{}", "", "[1, 2]", "not json", '{"a": 1', None, {"a": 1}, [1], 0])
TOOL_CALLS = st.one_of(
    st.builds(lambda call, function: {**call, "type": "function", "function": function},
              st.fixed_dictionaries({}, optional={"id": IDS.filter(lambda i: not isinstance(i, list))}),
              st.fixed_dictionaries({}, optional={"name": st.sampled_from(["get_weather", "now", ""]),
                                                  "arguments": ARGUMENTS})),
    st.sampled_from(["c", {"id": "c"}, {"id": "c", "function": "f"}]),
)
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "critic"])},
    optional={"content": CONTENTS, "tool_calls": st.one_of(st.lists(TOOL_CALLS, max_size=3), st.none(),
                                                           st.sampled_from(["abc", {"a": 1}])),
              "tool_call_id": IDS, "name": st.sampled_from(["f", "bot", ""])},
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def function_tool(function: dict) -> dict:
    """A function tool, its keys in the order the Ollama encoder writes them (it rebuilds tools)."""
    return {"type": "function", "function": {key: function[key] for key in FUNCTION_KEYS if key in function}}


TOOLS = st.one_of(
    st.builds(function_tool, st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["get_weather", "now", ""]), "description": st.sampled_from(["", "Weather."]),
        "parameters": st.sampled_from([{}, SCHEMA]), "strict": st.booleans()})),
    st.sampled_from([{"type": "code_interpreter"}, {"type": "custom", "custom": {"name": "x"}}]),
)
NUMBERS = st.none() | st.integers(0, 5) | st.floats(0, 2)
BODIES_MADE_UP = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGES, max_size=6)},
    optional={
        "model": st.just("alias"), "n": st.sampled_from([None, 0, 1, 2, "1"]),
        "max_completion_tokens": st.integers(1, 100), "max_tokens": st.none() | st.integers(1, 100),
        "temperature": NUMBERS, "top_p": NUMBERS, "seed": NUMBERS, "presence_penalty": NUMBERS,
        "frequency_penalty": NUMBERS,
        "stop": st.sampled_from([None, "", "END", ["a", "b"], [], [1], 5]),
        "stream": st.sampled_from([None, True, False]), "user": st.sampled_from(["u-1", ""]),
        "tools": st.lists(TOOLS, max_size=3),
        "tool_choice": st.sampled_from([None, "auto", "required", "none", "sometimes", NAMED,
                                        {"type": "function", "function": {}}, {"type": "function"}, 5]),
        "parallel_tool_calls": st.sampled_from([None, True, False]),
        "response_format": st.sampled_from([
            None, {"type": "json_object"}, {"type": "text"}, {"type": "json_schema", "json_schema": "x"},
            {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}, {"type": "json_schema"},
            {"type": "json_schema", "json_schema": {"name": "p"}}, "json"]),
        "options": st.sampled_from([None, "fast", {"num_ctx": 8192, "temperature": 1.0}, {"stop": ["x"], "seed": 1}]),
        "keep_alive": st.sampled_from([None, "10m", 0]), "think": st.sampled_from([None, True, False]),
        "logit_bias": st.just({"1": 2}), "stream_options": st.just({"include_usage": True}),
    },
)


def assert_bytes_or_a_client_error(encode, body: dict) -> None:
    out = outcome(encode, body)
    if isinstance(out, tuple):
        assert out[:2] == (FailureClass.CLIENT, 400) and out[3] in {
            "invalid_request", "unsupported_value", "invalid_value", "invalid_body"}
    else:
        assert isinstance(orjson.loads(out), dict)


@settings(max_examples=200, deadline=None)
@given(BODIES_MADE_UP)
def test_any_body_becomes_an_anthropic_request_or_a_client_error(body):
    assert_bytes_or_a_client_error(new_anthropic, body)


@settings(max_examples=200, deadline=None)
@given(BODIES_MADE_UP)
def test_any_body_becomes_an_ollama_request_or_a_client_error(body):
    assert_bytes_or_a_client_error(new_ollama, body)


# --- (c) OpenAI: decoded and written back, a body is the same ---------------------------------

def round_trip(body: dict) -> dict:
    return orjson.loads(openai_request.encode_chat(decode_chat(body), MODEL))


ROUND_TRIPS = {
    "tool_history": BODIES["tool_history"],
    "images": BODIES["images"],
    "everything": {
        "model": "alias",
        "messages": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ],
        "stream": True, "max_completion_tokens": 20, "temperature": 0.5, "top_p": 1, "stop": ["END"], "seed": 7,
        "presence_penalty": 0.1, "frequency_penalty": -0.2, "n": 2, "user": "u-1", "tools": ANTHROPIC_TOOLS,
        "tool_choice": NAMED, "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "description": "A person.", "schema": SCHEMA, "strict": True}},
        "stream_options": {"include_usage": True}, "logit_bias": {"1": 2}, "keep_alive": "5m",
        "options": {"num_ctx": 4096},
    },
}


@pytest.mark.parametrize("body", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_openai_round_trip(body):
    assert round_trip(body) == {**body, "model": MODEL}


def test_openai_round_trip_names_the_limit_max_completion_tokens_and_the_stop_a_list():
    body = {"messages": USER_X, "max_tokens": 5, "stop": "END", "stream": False, "temperature": None}
    assert round_trip(body) == {"model": MODEL, "messages": USER_X, "max_completion_tokens": 5, "stop": ["END"]}


WELL_FORMED_PARTS = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, TEXTS),
    st.builds(lambda text: {"type": "refusal", "refusal": text}, TEXTS),
    st.builds(lambda image: {"type": "image_url", "image_url": image},
              st.fixed_dictionaries({"url": URLS}, optional={"detail": st.sampled_from(["low", "high"])})),
)
WELL_FORMED_CALLS = st.builds(
    lambda id_, name, arguments: {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}},
    st.sampled_from(["call_1", "call_2"]), st.sampled_from(["get_weather", "now"]),
    st.sampled_from(['{"city": "Oslo"}', "{}", "not json"]),
)
WELL_FORMED_MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
     "content": st.none() | TEXTS | st.lists(WELL_FORMED_PARTS, max_size=3)},
    optional={"name": st.sampled_from(["ann", "bot"]), "tool_call_id": st.sampled_from(["call_1", "call_2"]),
              "tool_calls": st.lists(WELL_FORMED_CALLS, min_size=1, max_size=2)},
)
WELL_FORMED_TOOLS = st.builds(
    function_tool,
    st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "now"])}, optional={
        "description": st.sampled_from(["", "Weather."]), "parameters": st.sampled_from([{}, SCHEMA]),
        "strict": st.booleans()}),
)
WELL_FORMED_BODIES = st.fixed_dictionaries(
    {"model": st.just("alias"), "messages": st.lists(WELL_FORMED_MESSAGES, min_size=1, max_size=5)},
    optional={
        "stream": st.just(True), "max_completion_tokens": st.integers(1, 10**6),
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": st.lists(TEXTS, min_size=1, max_size=4), "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2), "n": st.integers(1, 4), "user": TEXTS,
        "tools": st.lists(WELL_FORMED_TOOLS, min_size=1, max_size=3),
        "tool_choice": st.sampled_from(["auto", "required", "none", NAMED]),
        "parallel_tool_calls": st.booleans(),
        "response_format": st.one_of(
            st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
            st.builds(lambda schema: {"type": "json_schema", "json_schema": schema},
                      st.fixed_dictionaries({"name": st.just("p")}, optional={
                          "description": TEXTS, "schema": st.just(SCHEMA), "strict": st.booleans()}))),
        "logit_bias": st.just({"50256": -100}), "stream_options": st.just({"include_usage": True}),
        "reasoning_effort": st.sampled_from(["low", "high"]), "metadata": st.just({"a": "b"}),
    },
)


@settings(max_examples=200, deadline=None)
@given(WELL_FORMED_BODIES)
def test_openai_round_trip_for_any_well_formed_body(body):
    assert round_trip(body) == {**body, "model": MODEL}


@settings(max_examples=200, deadline=None)
@given(WELL_FORMED_BODIES)
def test_any_well_formed_body_becomes_a_request_or_a_client_error(body):
    assert_bytes_or_a_client_error(new_anthropic, body)
    assert_bytes_or_a_client_error(new_ollama, body)


# --- decoding ----------------------------------------------------------------------------------

def test_decode_reads_every_field():
    chat = decode_chat(ROUND_TRIPS["everything"])
    assert chat.model == "alias" and chat.client_format == "openai"
    assert chat.messages == (
        Message("developer", "Rules."),
        Message("user", (Text("Hi"),), name="ann"),
        Message("assistant", (Refusal("No."),)),
    )
    assert (chat.stream, chat.max_tokens, chat.temperature, chat.top_p, chat.stop, chat.seed) == (
        True, 20, 0.5, 1, ("END",), 7)
    assert (chat.presence_penalty, chat.frequency_penalty, chat.n, chat.user) == (0.1, -0.2, 2, "u-1")
    weather = ANTHROPIC_TOOLS[0]["function"]
    assert chat.tools == (Tool("get_weather", weather["description"], weather["parameters"], True), Tool("now"))
    assert chat.tool_choice == ToolChoice("tool", "now") and chat.parallel_tool_calls is False
    assert chat.response_format == ResponseFormat("json_schema", "person", "A person.", SCHEMA, True)
    assert dict(chat.extra) == {"stream_options": {"include_usage": True}, "logit_bias": {"1": 2},
                                "keep_alive": "5m", "options": {"num_ctx": 4096}}


def test_decode_shares_the_clients_values_rather_than_copying_them():
    body = BODIES["ollama_tools"]
    chat = decode_chat(body)
    assert chat.tools[0].parameters is WEATHER_TOOL["function"]["parameters"]
    assert decode_chat(ROUND_TRIPS["everything"]).extra["options"] is ROUND_TRIPS["everything"]["options"]


def test_decode_carries_what_it_cannot_read_for_the_encoders_to_refuse():
    chat = decode_chat({"messages": [
        {"role": "user", "content": 5},
        {"role": "user", "content": [{"type": "input_audio"}, "x", {"type": "image_url", "image_url": "https://a/b"}]},
        {"role": "assistant", "content": None, "tool_calls": "abc"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}, {"id": "d", "function": {"name": "f"}}]},
    ], "stop": [1], "tool_choice": "sometimes", "response_format": "json",
        "tools": [{"type": "code_interpreter"}, {"type": "function", "function": "f"}]})
    assert chat.messages == (
        Message("user", Malformed(5)),
        Message("user", (UnsupportedPart("input_audio"), UnsupportedPart(None), Image("https://a/b"))),
        Message("assistant", None, Malformed("abc")),
        Message("assistant", None, (Malformed({"id": "c"}), ToolCall("d", "f", ""))),
    )
    assert chat.stop == Malformed([1]) and chat.tool_choice == Malformed("sometimes")
    assert chat.response_format == Malformed("json")
    assert chat.tools == (UnsupportedTool("code_interpreter"), UnsupportedTool("function"))


def test_decode_prefers_max_completion_tokens_and_defaults():
    assert decode_chat({"messages": [], "max_tokens": 5, "max_completion_tokens": 9}).max_tokens == 9
    assert decode_chat({"messages": [], "max_tokens": 5, "max_completion_tokens": None}).max_tokens == 5
    chat = decode_chat({"messages": USER_X})
    assert (chat.stream, chat.stop, chat.tools, chat.tool_choice, dict(chat.extra)) == (False, (), (), None, {})
    assert decode_chat({"messages": [], "tool_choice": "auto"}).tool_choice is AUTO


# --- the encoders, directly ----------------------------------------------------------------------

def chat(*messages: Message, **fields) -> Chat:
    return Chat("alias", messages, client_format=fields.pop("client_format", "openai"), **fields)


def anthropic(value: Chat) -> dict:
    return orjson.loads(anthropic_request.encode_chat(value, MODEL))


def ollama(value: Chat) -> dict:
    return orjson.loads(ollama_request.encode_chat(value, MODEL))


def refusal(encode, value: Chat) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        encode(value, MODEL)
    assert caught.value.failure is FailureClass.CLIENT and caught.value.status == 400
    return caught.value


CALLS = (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'), ToolCall("call_2", "now", ""))
HISTORY = (
    Message("system", "Be brief."),
    Message("developer", (Text("Never "), Image("https://a/b.png"), Text("apologise."))),
    Message("user", (Text("Look:"), Image("data:image/png;base64,AAAA"))),
    Message("assistant", "Checking.", CALLS),
    Message("tool", "-3 C", tool_call_id="call_1"),
    Message("tool", (Text("12:00"),), tool_call_id="call_2"),
    Message("user", "Thanks"),
)


def test_anthropic_encoder():
    assert anthropic(chat(*HISTORY, temperature=0.3, stop=("END",), stream=True, user="u", seed=3,
                          tools=(Tool("now"),), tool_choice=REQUIRED, parallel_tool_calls=False)) == {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
                {"type": "text", "text": "Thanks"}]},
        ],
        "max_tokens": 4096, "system": "Be brief.\n\nNever apologise.", "temperature": 0.3, "stop_sequences": ["END"],
        "stream": True, "metadata": {"user_id": "u"},
        "tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }


@pytest.mark.parametrize(("value", "message", "param"), [
    (chat(), "messages must be a non-empty list", "messages"),
    (chat(Message("user", "x"), n=3), "provider type anthropic returns one choice: n must be 1", "n"),
    (chat(Message("function", "x")), "messages[0]: role 'function' is not supported by provider type anthropic", None),
    (chat(Message("user", Malformed(5))), "messages[0]: content must be a string or a list of parts", None),
    (chat(Message("user", (UnsupportedPart("file"),))),
     "messages[0]: content part type 'file' is not supported by provider type anthropic", None),
    (chat(Message("user", (Image("ftp://a/b"),))), "messages[0]: image URLs must be data: or http(s) URLs", None),
    (chat(Message("assistant", None, (ToolCall("c", "f", "[1]"),))),
     "messages[0]: function.arguments is not a JSON object", None),
    (chat(Message("assistant", None, Malformed(7))), "messages[0]: tool calls need an id and a function.name", None),
    (chat(Message("tool", "x")), "messages[0]: tool messages need a tool_call_id", None),
    (chat(Message("user", "x"), stop=Malformed(5)), "stop must be a string or an array of strings", "stop"),
    (chat(Message("user", "x"), tools=(UnsupportedTool("custom"),)),
     "tools[0]: only function tools with a name are supported", "tools"),
    (chat(Message("user", "x"), tools=(Tool("f"),), tool_choice=ToolChoice("tool")),
     "tool_choice must be auto, required, none or a named function", "tool_choice"),
])
def test_anthropic_encoder_refusals(value, message, param):
    error = refusal(anthropic_request.encode_chat, value)
    assert (error.message, error.code, error.param, error.kind) == (message, "invalid_request", param,
                                                                    "invalid_request")


def test_anthropic_encoder_shape_errors_and_depth_are_400s():
    error = refusal(anthropic_request.encode_chat, chat(Message("system", (Text(5),))))
    assert error.code == "invalid_value" and error.message.startswith(
        "the request cannot be translated for provider type anthropic: a field has an unexpected shape")
    deep = orjson.loads("[" * 300 + "]" * 300)
    error = refusal(anthropic_request.encode_chat, chat(Message("user", "x"), tools=(Tool("f", None, deep),)))
    assert error.code == "invalid_body" and "nested too deeply" in error.message


def test_ollama_encoder():
    value = chat(*HISTORY[:1], Message("user", (Text("Look:"), Image("data:text/plain,hi%21"), Text("now"))),
                 *HISTORY[3:6], Message("function", "42", name="legacy"),
                 temperature=0.3, top_p=0.5, max_tokens=9, stop=("END",), user="dropped",
                 tools=(Tool("now", "The time.", SCHEMA, True), UnsupportedTool("code_interpreter")),
                 response_format=ResponseFormat("json_schema", "p", schema=SCHEMA),
                 extra={"options": {"temperature": 1, "num_ctx": 8}, "keep_alive": "1m", "think": None})
    assert ollama(value) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Look:\nnow", "images": ["aGkh"]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                {"function": {"name": "now", "arguments": {}}}]},
            {"role": "tool", "content": "-3 C", "tool_name": "get_weather"},
            {"role": "tool", "content": "12:00", "tool_name": "now"},
            {"role": "tool", "content": "42", "tool_name": "legacy"},
        ],
        "stream": False,
        "tools": [{"type": "function", "function": {"name": "now", "description": "The time.", "parameters": SCHEMA,
                                                    "strict": True}}],
        "options": {"temperature": 0.3, "num_ctx": 8, "top_p": 0.5, "num_predict": 9, "stop": ["END"]},
        "format": SCHEMA, "keep_alive": "1m",
    }


def test_ollama_encoder_developer_is_system_and_formats():
    assert ollama(chat(Message("developer", None), stream=True)) == {
        "model": MODEL, "messages": [{"role": "system", "content": ""}], "stream": True}
    assert ollama(chat(response_format=ResponseFormat("json_object")))["format"] == "json"
    assert ollama(chat(response_format=ResponseFormat("json_schema")))["format"] == "json"
    assert "format" not in ollama(chat(response_format=Malformed("json")))


@pytest.mark.parametrize(("value", "message", "param"), [
    (chat(Message("user", Malformed({}))), "message content must be a string or an array of content parts",
     "messages"),
    (chat(Message("user", (Image("https://a/b.png"),))), "Ollama accepts images only as data: URLs", "messages"),
    (chat(Message("user", (Image({"not": "a url"}),))), "Ollama accepts images only as data: URLs", "messages"),
    (chat(Message("assistant", (Refusal("No."),))), "Ollama does not accept 'refusal' content parts", "messages"),
    (chat(Message("user", (UnsupportedPart(None),))), "Ollama does not accept None content parts", "messages"),
    (chat(Message("assistant", None, Malformed(7))), "tool_calls must be an array", "messages"),
    (chat(Message("assistant", None, (Malformed("c"),))), "tool calls need a function object", "messages"),
    (chat(Message("assistant", None, (ToolCall("c", "f", "nope"),))), "tool call arguments must be a JSON object",
     "messages"),
    (chat(stop=Malformed([1])), "stop must be a string or an array of strings", "stop"),
])
def test_ollama_encoder_refusals(value, message, param):
    error = refusal(ollama_request.encode_chat, value)
    assert (error.message, error.code, error.param) == (message, "unsupported_value", param)


def test_openai_encoder_writes_a_foreign_clients_extra_fields_not():
    value = chat(Message("system", "Be brief."), Message("user", (Text("Hi"), Image("https://a/b", "low"))),
                 Message("assistant", None, CALLS[:1]), Message("tool", "-3 C", tool_call_id="call_1"),
                 client_format="anthropic", max_tokens=100, stop=("END",), tools=(Tool("now", parameters=SCHEMA),),
                 tool_choice=AUTO, response_format=ResponseFormat("json_object"), extra={"top_k": 5})
    assert orjson.loads(openai_request.encode_chat(value, MODEL)) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                         {"type": "image_url", "image_url": {"url": "https://a/b", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"},
        ],
        "max_completion_tokens": 100, "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "now", "parameters": SCHEMA}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(("value", "message", "param"), [
    (chat(Message("user", Malformed(5))), "messages[0]: content must be a string or an array of content parts",
     "messages"),
    (chat(Message("user", (UnsupportedPart("document"),))),
     "messages[0]: content part type 'document' cannot be sent to provider type openai", "messages"),
    (chat(Message("assistant", None, (Malformed(1),))), "messages[0]: tool calls need a function object", "messages"),
    (chat(tools=(UnsupportedTool("web_search"),)),
     "tools[0]: tools of type 'web_search' cannot be sent to provider type openai", "tools"),
    (chat(tool_choice=Malformed("sometimes")), "tool_choice must be auto, required, none or a named function",
     "tool_choice"),
    (chat(stop=Malformed(5)), "stop must be a string or an array of strings", "stop"),
])
def test_openai_encoder_refusals(value, message, param):
    error = refusal(openai_request.encode_chat, value)
    assert (error.message, error.code, error.param) == (message, "invalid_value", param)


# --- where the encoders part from the old translations, on purpose -----------------------------

def test_ollama_limit_is_max_tokens_when_max_completion_tokens_is_null():
    body = {"messages": USER_X, "max_completion_tokens": None, "max_tokens": 10}
    assert ollama(decode_chat(body))["options"] == {"num_predict": 10}  # as Anthropic reads it


def test_ollama_tools_are_rebuilt_from_what_they_say():
    reordered = {"type": "function", "function": {"parameters": SCHEMA, "name": "f", "x-note": 1}}
    assert ollama(decode_chat({"messages": USER_X, "tools": [reordered, {"type": "function", "function": "f"}]}))[
        "tools"] == [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
