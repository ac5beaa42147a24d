"""The Anthropic codec's client side (daemon/formats/anthropic.py): an Anthropic client's
Messages body read as a neutral `Chat` and written again for Anthropic and OpenAI upstreams;
neutral answers, streams and errors written in Anthropic's words and read back with the
official `anthropic` SDK. The streams in tests/fixtures/anthropic/ (each file names its source:
Anthropic's streaming docs, the SDK's own recorded streams) go through the upstream side's
`StreamDecoder` and back out through the `StreamEncoder`: an Anthropic client must see what it
would have seen from Anthropic, for what the neutral vocabulary carries.
"""

from __future__ import annotations

import copy
from pathlib import Path

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from anthropic.types import Message as SdkMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gatewayd.daemon.core.conversation import (
    AUTO,
    NONE,
    REQUIRED,
    Image,
    Malformed,
    Message,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    UnsupportedPart,
    UnsupportedTool,
)
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import ERROR_KINDS, FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Answer, Delta, Finish, Start, ToolCallDelta, Usage
from gatewayd.daemon.formats import anthropic as codec
from gatewayd.daemon.formats import openai as openai_codec
from gatewayd.daemon.formats.anthropic import (
    StreamDecoder,
    StreamEncoder,
    decode_chat,
    encode_answer,
    encode_chat,
    error_body,
    stream_error,
    upstream_error_body,
)
from tests.wire import pieces_of, recorded_pairs, recorded_stream

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
MODEL = "upstream-model"
CREATED = 1_700_000_000
EVENTS = TypeAdapter(RawMessageStreamEvent)
MESSAGE = TypeAdapter(SdkMessage)
ERROR = TypeAdapter(ErrorResponse)

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                 "description": "The unit of temperature, either 'celsius' or 'fahrenheit'"},
    },
    "required": ["location"],
}
WEATHER_TOOL = {"name": "get_weather", "description": "Get the current weather in a given location",
                "input_schema": WEATHER_SCHEMA}
# a tool-use conversation as Anthropic's tool-use docs write one
TOOL_CONVERSATION = {
    "model": "claude-opus-4-8",
    "max_tokens": 1024,
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "What's the weather like in San Francisco?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA", "unit": "celsius"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
        ]},
    ],
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


# --- helpers -----------------------------------------------------------------------------------

def fixture_events(name: str) -> list[tuple[bytes, bytes]]:
    return recorded_pairs(FIXTURES / name)


def written_events(raw: bytes) -> list[tuple[str, dict]]:
    """The encoder's bytes as (event, data) pairs, each checked: exactly `event: X` then
    `data: {...}` then a blank line, X the data's type, the data a valid SDK stream event."""
    assert raw.endswith(b"\n\n") or raw == b""
    out = []
    for chunk in raw.split(b"\n\n")[:-1]:
        event, data = chunk.split(b"\n")
        name, payload = event.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))
        assert event.startswith(b"event: ") and data.startswith(b"data: ") and payload["type"] == name
        if name != "error":
            EVENTS.validate_python(payload)
        out.append((name, payload))
    return out


def through_gateway(events: list[tuple[bytes, bytes]], body: dict | None = None) -> bytes:
    """An Anthropic upstream's stream, read as neutral events and written for an Anthropic client."""
    decoder, encoder = StreamDecoder(created=CREATED), StreamEncoder(body or {"model": "alias"})
    out = b"".join(encoder.encode(event) for name, data in events for event in decoder.feed(name, data))
    assert decoder.done
    return out + encoder.end(decoder.usage)


def encoded(events, usage: Usage | None = None, body: dict | None = None) -> bytes:
    encoder = StreamEncoder(body or {"model": "alias"})
    return b"".join(map(encoder.encode, events)) + encoder.end(usage)


def sdk_client(respond) -> tuple[httpx2.Client, anthropic.Anthropic]:
    http = httpx2.Client(transport=httpx2.MockTransport(respond))
    return http, anthropic.Anthropic(api_key="key", base_url="http://gateway.test", http_client=http, max_retries=0)


def sdk_stream(raw: bytes):
    """What the official SDK makes of a stream: its events and its accumulated final message."""
    http, client = sdk_client(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=raw))
    with http, client.messages.stream(model="alias", max_tokens=100,
                                      messages=[{"role": "user", "content": "Hi"}]) as stream:
        events = list(stream)
        return events, stream.get_final_message()


def sdk_create(raw: bytes, status: int = 200):
    http, client = sdk_client(lambda request: httpx2.Response(
        status, headers={"content-type": "application/json"}, content=raw))
    with http:
        return client.messages.create(model="alias", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])


def fixture_bytes(name: str) -> bytes:
    return recorded_stream(FIXTURES / name)


def seen(message) -> dict:
    """What a client reads of a final message, in what the neutral vocabulary carries: blocks
    as (type, content) (an empty text block says nothing; thinking has no neutral counterpart),
    the stop reason, the usage."""
    blocks = []
    for block in message.content:
        if block.type == "text" and block.text:
            blocks.append(("text", block.text))
        elif block.type == "tool_use":
            blocks.append(("tool_use", block.id, block.name, block.input))
    usage = message.usage
    return {"id": message.id, "model": message.model, "content": blocks, "stop_reason": message.stop_reason,
            "stop_sequence": message.stop_sequence,
            "usage": (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens or 0)}


# === requests ==================================================================================

# --- decode_chat: literal bodies ---------------------------------------------------------------

def test_decode_reads_every_field():
    body = {
        "model": "alias", "max_tokens": 512, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stream": True,
        "stop_sequences": ["END", "STOP"], "metadata": {"user_id": "u-1"},
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": [WEATHER_TOOL, {"type": "custom", "name": "now", "input_schema": {"type": "object"}, "strict": True},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        "service_tier": "auto",
    }
    chat = decode_chat(body)
    assert chat.model == "alias" and chat.client_format is WireFormat.ANTHROPIC
    assert chat.messages == (Message("system", "Be brief."), Message("user", "Hi"))
    assert (chat.stream, chat.max_tokens, chat.temperature, chat.top_p, chat.stop, chat.user) == (
        True, 512, 0.2, 0.9, ("END", "STOP"), "u-1")
    assert chat.tools == (
        Tool("get_weather", "Get the current weather in a given location", WEATHER_SCHEMA),
        Tool("now", None, {"type": "object"}, True),
        UnsupportedTool("web_search_20250305"),
    )
    assert (chat.tool_choice, chat.parallel_tool_calls) == (REQUIRED, False)
    assert chat.response_format == ResponseFormat("json_schema", schema={"type": "object"})
    assert dict(chat.extra) == {"top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 2048},
                                "output_config": body["output_config"], "service_tier": "auto"}
    assert (chat.seed, chat.n, chat.presence_penalty, chat.frequency_penalty) == (None, None, None, None)


def test_decode_shares_the_clients_values_rather_than_copying_them():
    body = copy.deepcopy(TOOL_CONVERSATION)
    body["thinking"] = {"type": "enabled", "budget_tokens": 2048}
    before = copy.deepcopy(body)
    chat = decode_chat(body)
    assert chat.tools[0].parameters is body["tools"][0]["input_schema"]
    assert chat.extra["thinking"] is body["thinking"]
    assert chat.messages[1].content is body["messages"][1]["content"][0]["text"]  # one text block: its string
    assert body == before  # decoding reads the client's body, never changes it


def test_tool_results_become_tool_messages_before_the_turns_other_blocks():
    chat = decode_chat({"messages": [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two cities: two calls.", "signature": "EqQBCgIYAhIM"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees", "is_error": False},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "unknown city"},
                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]})
    assert chat.messages == (
        Message("user", "Weather in Paris and Oslo?"),
        Message("assistant", None, (ToolCall("toolu_1", "get_weather", '{"location":"Paris"}'),
                                    ToolCall("toolu_2", "get_weather", "{}"))),
        Message("tool", "15 degrees", tool_call_id="toolu_1"),
        Message("tool", (Text("unknown city"), Image(f"data:image/png;base64,{PNG}")), tool_call_id="toolu_2"),
        Message("user", (Text("And tomorrow?"),)),
        Message("tool", "", tool_call_id="toolu_3"),  # no content: an empty result
    )


def test_blocks_images_thinking_and_the_text_of_systems_and_assistants():
    chat = decode_chat({
        "system": [{"type": "text", "text": "You are terse. ", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Answer in French."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
                {"type": "image"},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},  # a user does not call tools
                "text",
            ]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Un chat", "citations": None},
                {"type": "text", "text": " et un chien."},
            ]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
        ],
    })
    assert chat.messages == (
        Message("system", "You are terse. Answer in French."),
        Message("user", (
            Text("What is in these?"), Image(f"data:image/png;base64,{PNG}"), Image("https://example.com/cat.jpg"),
            UnsupportedPart("image with a file source"), UnsupportedPart("image without a source"),
            UnsupportedPart("document"), UnsupportedPart("tool_use"), UnsupportedPart(None),
        )),
        Message("assistant", "Un chat et un chien."),
        Message("assistant", ""),  # only thinking: nothing a neutral message holds
    )


def test_tool_choice_and_parallel_calls():
    def read(choice):
        chat = decode_chat({"messages": [], "tools": [WEATHER_TOOL], "tool_choice": choice})
        return chat.tool_choice, chat.parallel_tool_calls

    assert read({"type": "auto"}) == (AUTO, None)
    assert read({"type": "auto", "disable_parallel_tool_use": False}) == (AUTO, None)  # the default
    assert read({"type": "any", "disable_parallel_tool_use": True}) == (REQUIRED, False)
    assert read({"type": "none"}) == (NONE, None)
    assert read({"type": "tool", "name": "get_weather"}) == (ToolChoice("tool", "get_weather"), None)
    for choice in ({"type": "tool"}, {"type": "sometimes"}, "auto", 5):
        assert read(choice) == (Malformed(choice), None)
    assert read(None) == (None, None)


@pytest.mark.parametrize(("body", "field", "expected"), [
    ({"messages": [{"role": "user", "content": 5}]}, "messages", (Message("user", Malformed(5)),)),
    ({"messages": ["hi"]}, "messages", (Message(None, Malformed("hi")),)),
    ({"messages": {"role": "user"}}, "messages", (Message(None, Malformed({"role": "user"})),)),
    ({"messages": [], "system": 5}, "messages", (Message("system", Malformed(5)),)),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]},
     "messages", (Message("tool", Malformed(5), tool_call_id="t"),)),
    ({"messages": [], "stop_sequences": "END"}, "stop", Malformed("END")),
    ({"messages": [], "stop_sequences": ["a", 1]}, "stop", Malformed(["a", 1])),
    ({"messages": [], "tools": [5, {"type": "bash_20250124", "name": "bash"}]}, "tools",
     (UnsupportedTool(None), UnsupportedTool("bash_20250124"))),
    ({"messages": [], "tools": "all"}, "tools", (UnsupportedTool(None),)),
    ({"messages": [], "output_config": {"format": {"type": "xml"}}}, "response_format", Malformed({"type": "xml"})),
    ({"messages": [], "metadata": "u-1"}, "user", None),
])
def test_decode_carries_what_it_cannot_read_for_the_encoders_to_refuse(body, field, expected):
    assert getattr(decode_chat(body), field) == expected


def test_unreadable_tool_use_input_is_a_malformed_call():
    deep: dict = {}
    for _ in range(300):  # deeper than orjson writes
        deep = {"a": deep}
    chat = decode_chat({"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": deep}]}]})
    assert isinstance(chat.messages[0].tool_calls[0], Malformed)


# --- written again for Anthropic ----------------------------------------------------------------

def anthropic_round_trip(body: dict) -> dict:
    return orjson.loads(encode_chat(decode_chat(body), MODEL))


def test_a_tool_conversation_round_trips_to_anthropic():
    assert anthropic_round_trip(TOOL_CONVERSATION) == {**TOOL_CONVERSATION, "model": MODEL}


def test_everything_both_model_round_trips_to_anthropic():
    body = {
        "model": "alias", "max_tokens": 300, "system": "Be brief.", "temperature": 0.5, "top_p": 0.9,
        "stop_sequences": ["END"], "stream": True, "metadata": {"user_id": "u-1"},
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": "A cat."},
        ],
    }
    assert anthropic_round_trip(body) == {**body, "model": MODEL}


def test_anthropic_round_trip_leaves_out_what_the_neutral_request_does_not_hold():
    body = {
        "model": "alias", "max_tokens": 100, "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "A. ", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "B."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Greet back.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": "Hello"}, {"type": "text", "text": "!"},
                {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon",
                                          "is_error": True}]},
            {"role": "user", "content": "Thanks"},  # Anthropic merges consecutive turns of a role too
        ],
        "tools": [{"type": "custom", "name": "now", "description": "", "input_schema": {}, "strict": True}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    }
    assert anthropic_round_trip(body) == {
        "model": MODEL, "max_tokens": 100, "system": "A. B.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"},
                                         {"type": "text", "text": "Thanks"}]},
        ],
        "tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"},
    }


# hypothesis: well-formed Anthropic bodies, and what Anthropic's encoder writes of them (the
# documented exceptions to "the same body": see the module's docstring)
TEXTS = st.sampled_from(["Hi", "two words", "ünïcode ✓", "line\nbreak"])
CACHE = st.fixed_dictionaries({}, optional={"cache_control": st.just({"type": "ephemeral"})})
TEXT_BLOCKS = st.builds(lambda text, cache: {"type": "text", "text": text, **cache}, TEXTS, CACHE)
IMAGE_BLOCKS = st.sampled_from([
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
])
CALL_IDS = st.sampled_from(["toolu_01A09q90qw90lq917835lq9", "toolu_2", "call_abc"])
INPUTS = st.sampled_from([{}, {"location": "Paris"}, {"location": "Oslo", "unit": "celsius"}, {"n": [1, {"x": None}]}])
TOOL_USES = st.builds(lambda id_, name, input_: {"type": "tool_use", "id": id_, "name": name, "input": input_},
                      CALL_IDS, st.sampled_from(["get_weather", "now"]), INPUTS)
THINKING = st.sampled_from([{"type": "thinking", "thinking": "Let me see.", "signature": "EqQBCgIYAhIM"},
                            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}])
RESULT_CONTENT = st.one_of(TEXTS, st.lists(st.one_of(TEXT_BLOCKS, IMAGE_BLOCKS), min_size=1, max_size=2),
                           st.sampled_from(["", []]))
TOOL_RESULTS = st.builds(
    lambda id_, content, error: {"type": "tool_result", "tool_use_id": id_, **content, **error},
    CALL_IDS, st.fixed_dictionaries({}, optional={"content": RESULT_CONTENT}),
    st.fixed_dictionaries({}, optional={"is_error": st.booleans()}))
USER_CONTENT = st.one_of(TEXTS, st.builds(
    lambda results, parts: results + parts,
    st.lists(TOOL_RESULTS, max_size=2), st.lists(st.one_of(TEXT_BLOCKS, IMAGE_BLOCKS), max_size=3),
).filter(bool))
ASSISTANT_CONTENT = st.one_of(TEXTS, st.builds(
    lambda thinking, texts, calls: thinking + texts + calls,
    st.lists(THINKING, max_size=1), st.lists(TEXT_BLOCKS, max_size=2), st.lists(TOOL_USES, max_size=2),
).filter(lambda blocks: any(block["type"] in ("text", "tool_use") for block in blocks)))
TURNS = st.lists(st.tuples(USER_CONTENT, ASSISTANT_CONTENT), min_size=1, max_size=3).flatmap(
    lambda pairs: st.booleans().map(lambda ends_with_user: [
        {"role": role, "content": content}
        for pair in pairs for role, content in zip(("user", "assistant"), pair, strict=True)
    ][:-1 if ends_with_user else None]))
CUSTOM_TOOLS = st.builds(
    lambda name, extra: {"name": name, **extra}, st.sampled_from(["get_weather", "now"]),
    st.fixed_dictionaries({"input_schema": st.sampled_from([WEATHER_SCHEMA, {"type": "object"}])}, optional={
        "description": st.sampled_from(["", "Weather."]), "type": st.just("custom"), "strict": st.booleans(),
        "cache_control": st.just({"type": "ephemeral"})}))
TOOL_CHOICES = st.builds(
    lambda choice, parallel: {**choice, **parallel},
    st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "now"}]),
    st.fixed_dictionaries({}, optional={"disable_parallel_tool_use": st.booleans()}))
ANTHROPIC_BODIES = st.fixed_dictionaries(
    {"model": st.just("alias"), "max_tokens": st.integers(1, 64_000), "messages": TURNS},
    optional={
        "system": st.one_of(TEXTS, st.lists(TEXT_BLOCKS, min_size=1, max_size=2)),
        "temperature": st.floats(0, 1), "top_p": st.floats(0, 1), "top_k": st.integers(1, 500),
        "stop_sequences": st.lists(TEXTS, max_size=3), "stream": st.booleans(),
        "metadata": st.builds(lambda user: {"user_id": user}, st.sampled_from(["u-1", ""])),
        "tools": st.lists(CUSTOM_TOOLS, min_size=1, max_size=2), "tool_choice": TOOL_CHOICES,
        "thinking": st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}]),
        "service_tier": st.just("auto"),
    },
)


def without(block: dict, *keys: str) -> dict:
    return {key: value for key, value in block.items() if key not in keys}


def expected_turn(role: str, content) -> list[dict]:
    """A turn's blocks as Anthropic's encoder writes them again."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = [without(block, "cache_control", "is_error") for block in content
              if block["type"] not in ("thinking", "redacted_thinking")]
    for block in blocks:
        if block["type"] == "tool_result":
            inner = block.get("content")
            if not inner:
                block.pop("content", None)
            elif isinstance(inner, list):
                block["content"] = [without(part, "cache_control") for part in inner]
    if role == "assistant":  # its text, joined, then its tool calls
        text = "".join(block["text"] for block in blocks if block["type"] == "text")
        calls = [block for block in blocks if block["type"] == "tool_use"]
        blocks = ([{"type": "text", "text": text}] if text else []) + calls
    return blocks


def expected_anthropic(body: dict) -> dict:
    out: dict = {"model": MODEL, "max_tokens": body["max_tokens"], "messages": []}
    for message in body["messages"]:
        blocks = expected_turn(message["role"], message["content"])
        if out["messages"] and out["messages"][-1]["role"] == message["role"]:
            out["messages"][-1]["content"] += blocks
        elif blocks:
            out["messages"].append({"role": message["role"], "content": blocks})
    for turn in out["messages"]:
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    system = body.get("system")
    if system:
        out["system"] = system if isinstance(system, str) else "".join(block["text"] for block in system)
    for key in ("temperature", "top_p"):
        if key in body:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop_sequences"] = body["stop_sequences"]
    if body.get("stream"):
        out["stream"] = True
    if body.get("metadata", {}).get("user_id"):
        out["metadata"] = body["metadata"]
    if body.get("tools"):
        out["tools"] = [{"name": tool["name"], **({"description": tool["description"]} if tool.get("description")
                                                  else {}), "input_schema": tool["input_schema"]}
                        for tool in body["tools"]]
        choice = body.get("tool_choice")
        parallel = bool(choice and choice.get("disable_parallel_tool_use"))
        if choice is not None or parallel:
            written = without(choice, "disable_parallel_tool_use")
            if parallel and choice["type"] != "none":
                written["disable_parallel_tool_use"] = True
            out["tool_choice"] = written
    return out


@settings(max_examples=300, deadline=None)
@given(ANTHROPIC_BODIES)
def test_any_well_formed_body_round_trips_to_anthropic(body):
    before = copy.deepcopy(body)
    assert anthropic_round_trip(body) == expected_anthropic(body)
    assert body == before


# --- written for OpenAI ----------------------------------------------------------------------

def to_openai(body: dict) -> dict:
    return orjson.loads(openai_codec.encode_chat(decode_chat(body), "gpt-4o"))


def test_a_tool_conversation_becomes_the_openai_request_an_openai_user_would_write():
    assert to_openai({**TOOL_CONVERSATION, "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
                      "system": "You are a weather bot.", "stop_sequences": ["END"], "temperature": 0.3,
                      "metadata": {"user_id": "u-1"}, "top_k": 5, "thinking": {"type": "disabled"}}) == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {"role": "assistant", "content": "I'll check the current weather in San Francisco for you.",
             "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                 "name": "get_weather", "arguments": '{"location":"San Francisco, CA","unit":"celsius"}'}}]},
            {"role": "tool", "content": "15 degrees", "tool_call_id": "toolu_01A09q90qw90lq917835lq9"},
        ],
        "max_completion_tokens": 1024, "temperature": 0.3, "stop": ["END"], "user": "u-1",
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather in a given location",
            "parameters": WEATHER_SCHEMA}}],
        "tool_choice": "required", "parallel_tool_calls": False,
    }


def test_images_results_and_user_text_for_openai():
    assert to_openai({"model": "alias", "max_tokens": 50, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare these."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "So?"},
        ]},
    ], "tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "now"}}) == {
        "model": "gpt-4o", "max_completion_tokens": 50,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "content": [{"type": "text", "text": "noon"}], "tool_call_id": "toolu_1"},
            {"role": "user", "content": [{"type": "text", "text": "So?"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "now",
                                                    "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "now"}},
    }


def test_structured_output_becomes_openais_json_schema():
    out = to_openai({"model": "alias", "max_tokens": 10, "messages": [{"role": "user", "content": "A person?"}],
                     "output_config": {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}}})
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"schema": WEATHER_SCHEMA}}


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "content part type 'document' cannot be sent to provider type openai"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "s"}]},
     "tools of type 'web_search_20250305' cannot be sent to provider type openai"),
    ({"messages": [{"role": "user", "content": "x"}], "stop_sequences": "END"},
     "stop must be a string or an array of strings"),
])
def test_what_openai_cannot_be_sent_is_the_clients_400(body, message):
    with pytest.raises(UpstreamError) as caught:
        openai_codec.encode_chat(decode_chat(body), "gpt-4o")
    assert (caught.value.failure, caught.value.status) == (FailureClass.CLIENT, 400)
    assert message in caught.value.message


BODIES_MADE_UP = st.fixed_dictionaries({"messages": st.one_of(
    st.lists(st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"])}, optional={
            "content": st.one_of(st.none(), TEXTS, st.integers(), st.lists(st.one_of(
                TEXT_BLOCKS, IMAGE_BLOCKS, TOOL_USES, TOOL_RESULTS, THINKING,
                st.sampled_from([{"type": "image", "source": "x"}, {"type": "tool_use", "input": "x"},
                                 {"type": "tool_result", "content": {"a": 1}}, {"type": "text", "text": 5},
                                 {"type": "document"}, {}, 5, None])), max_size=4))}),
        st.sampled_from([5, "hi", None])), max_size=4),
    st.sampled_from([None, "hi", {}]))}, optional={
    "system": st.one_of(TEXTS, st.lists(st.one_of(TEXT_BLOCKS, st.just({"type": "image"})), max_size=2), st.just(5)),
    "stop_sequences": st.sampled_from([["a"], "a", [1], None]), "metadata": st.sampled_from([{"user_id": "u"}, "u"]),
    "tools": st.one_of(st.lists(st.one_of(CUSTOM_TOOLS, st.sampled_from([5, {"type": "bash_20250124"}])),
                                max_size=2), st.just("x")),
    "tool_choice": st.one_of(TOOL_CHOICES, st.sampled_from([5, "auto", {"type": "tool"}])),
    "output_config": st.sampled_from([{"format": {"type": "json_schema", "schema": {}}}, {"format": 5}, 5]),
    "max_tokens": st.one_of(st.integers(1, 100), st.just("many")), "stream": st.sampled_from([True, "yes"]),
})


@settings(max_examples=300, deadline=None)
@given(BODIES_MADE_UP)
def test_any_body_decodes_and_becomes_a_request_or_a_clients_400(body):
    chat = decode_chat(body)
    for encode in (encode_chat, openai_codec.encode_chat):
        try:
            out = encode(chat, MODEL)
        except UpstreamError as error:
            assert (error.failure, error.status) == (FailureClass.CLIENT, 400)
        else:
            assert isinstance(orjson.loads(out), dict)


# === answers =================================================================================

def test_an_openai_upstreams_answer_as_anthropics_message():
    answer = Answer("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "gpt-4o-2024-08-06", CREATED, "Hello! How can I help?",
                    "stop", Usage(prompt_tokens=1200, completion_tokens=12, cached_tokens=1024))
    assert encode_answer(answer) == (
        b'{"id":"msg_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","type":"message","role":"assistant",'
        b'"model":"gpt-4o-2024-08-06","content":[{"type":"text","text":"Hello! How can I help?"}],'
        b'"stop_reason":"end_turn","stop_sequence":null,'
        b'"usage":{"input_tokens":176,"output_tokens":12,"cache_read_input_tokens":1024}}')
    message = sdk_create(encode_answer(answer))
    assert MESSAGE.validate_json(encode_answer(answer)) == message
    assert (message.id, message.content[0].text, message.usage.input_tokens, message.usage.cache_read_input_tokens) \
        == ("msg_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "Hello! How can I help?", 176, 1024)


def test_tool_calls_and_reasoning_as_blocks():
    answer = Answer("msg_01", "qwen3", CREATED, "Let me check both.", "tool_calls", Usage(50, 30), (
        ToolCall("call_1", "get_weather", '{"location": "Paris"}'),
        ToolCall("call_2", "now", ""),
        ToolCall("call_3", "get_weather", '{"location": "Par'),  # the model cut it short
        ToolCall("call_4", "get_weather", "[1, 2]"),
    ), reasoning="Two cities.")
    out = orjson.loads(encode_answer(answer))
    assert out == {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "qwen3",
        "content": [
            {"type": "thinking", "thinking": "Two cities.", "signature": ""},
            {"type": "text", "text": "Let me check both."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            {"type": "tool_use", "id": "call_3", "name": "get_weather", "input": {}},
            {"type": "tool_use", "id": "call_4", "name": "get_weather", "input": {}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 50, "output_tokens": 30},
    }
    assert MESSAGE.validate_python(out).content[2].input == {"location": "Paris"}


@pytest.mark.parametrize(("finish", "calls", "stop_reason"), [
    ("stop", False, "end_turn"), ("length", False, "max_tokens"), ("tool_calls", True, "tool_use"),
    ("content_filter", False, "refusal"), ("something_new", False, "end_turn"),
    ("stop", True, "tool_use"),  # a server that ends a turn of tool calls with "stop"
    ("length", True, "max_tokens"),
])
def test_every_finish_reason(finish, calls, stop_reason):
    answer = Answer("x", "m", CREATED, None if calls else "", finish, Usage(),
                    (ToolCall("c", "now", "{}"),) if calls else ())
    out = orjson.loads(encode_answer(answer))
    assert (out["stop_reason"], out["stop_sequence"]) == (stop_reason, None)
    assert out["content"] == ([{"type": "tool_use", "id": "c", "name": "now", "input": {}}] if calls else [])
    MESSAGE.validate_python(out)


# === streams ================================================================================

def test_an_openai_style_stream_as_anthropics_events():
    events = [
        Start(id="chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", model="gpt-4o-2024-08-06", created=CREATED, text=""),
        Delta(reasoning="The user wants weather."),
        Delta(reasoning=" One call."),
        Delta(text="Let me check."),
        Delta(tool_calls=(ToolCallDelta(0, "", "call_1", "get_weather"),)),
        Delta(tool_calls=(ToolCallDelta(0, '{"location":'),)),
        Delta(tool_calls=(ToolCallDelta(0, ' "Paris"}'),)),
        Delta(tool_calls=(ToolCallDelta(1, '{"tz": "CET"}', "call_2", "now"),)),
        Finish("tool_calls"),
    ]
    encoder = StreamEncoder({"model": "alias", "stream": True})
    pieces = [encoder.encode(event) for event in events] + [encoder.end(Usage(100, 20, 30))]

    def block(index, delta):
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def start(index, block_):
        return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block_})

    def stop(index):
        return ("content_block_stop", {"type": "content_block_stop", "index": index})

    assert [written_events(piece) for piece in pieces] == [
        [("message_start", {"type": "message_start", "message": {
            "id": "msg_chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "type": "message", "role": "assistant",
            "model": "gpt-4o-2024-08-06", "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})],
        [start(0, {"type": "thinking", "thinking": "", "signature": ""}),
         block(0, {"type": "thinking_delta", "thinking": "The user wants weather."})],
        [block(0, {"type": "thinking_delta", "thinking": " One call."})],
        [stop(0), start(1, {"type": "text", "text": ""}), block(1, {"type": "text_delta", "text": "Let me check."})],
        [stop(1), start(2, {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})],
        [block(2, {"type": "input_json_delta", "partial_json": '{"location":'})],
        [block(2, {"type": "input_json_delta", "partial_json": ' "Paris"}'})],
        [stop(2), start(3, {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}),
         block(3, {"type": "input_json_delta", "partial_json": '{"tz": "CET"}'})],
        [stop(3)],
        [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                            "usage": {"input_tokens": 70, "output_tokens": 20, "cache_read_input_tokens": 30}}),
         ("message_stop", {"type": "message_stop"})],
    ]
    assert pieces[1].startswith(b'event: content_block_start\ndata: {"type":"content_block_start","index":0,')

    _, message = sdk_stream(b"".join(pieces))
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "thinking", "thinking": "The user wants weather. One call.", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {"tz": "CET"}},
    ]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens,
            message.usage.cache_read_input_tokens) == ("tool_use", 70, 20, 30)


def test_a_start_with_content_several_calls_in_one_event_and_an_end_without_finish():
    # Ollama's shape: the first line may already hold text, a line whole tool calls
    raw = encoded([
        Start("Hi", id="chatcmpl-1", model="llama3", created=CREATED),
        Delta(tool_calls=(ToolCallDelta(0, '{"a": 1}', "call_0", "f"), ToolCallDelta(1, "{}", "call_1", "g"))),
    ])
    assert [name for name, _ in written_events(raw)] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    _, message = sdk_stream(raw)
    assert seen(message) == {
        "id": "msg_chatcmpl-1", "model": "llama3", "stop_sequence": None, "usage": (0, 0, 0),
        "content": [("text", "Hi"), ("tool_use", "call_0", "f", {"a": 1}), ("tool_use", "call_1", "g", {})],
        "stop_reason": "tool_use",  # no Finish came, and the turn called tools
    }


def test_an_empty_answer_a_stream_without_start_and_interleaved_calls():
    assert written_events(encoded([Start(id="msg_x", model="m"), Finish("length")], Usage(3, 1))) == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_x", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                           "usage": {"input_tokens": 3, "output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    # no Start: the message still starts, with the client's model and no usage known
    events = written_events(encoded([Delta("Hi")], None, {"model": "alias"}))
    assert events[0][1]["message"]["model"] == "alias" and events[0][1]["message"]["id"] == "msg_"
    assert events[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    # a piece of a call whose block has stopped goes to that block's index
    raw = encoded([Start(id="1", model="m"), Delta(tool_calls=(ToolCallDelta(0, '{"a":', "c0", "f"),)),
                   Delta(tool_calls=(ToolCallDelta(1, '{"b": 2}', "c1", "g"),)),
                   Delta(tool_calls=(ToolCallDelta(0, " 1}"),)), Finish("tool_calls")])
    assert written_events(raw)[6] == ("content_block_delta", {
        "type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " 1}"}})
    assert seen(sdk_stream(raw)[1])["content"] == [
        ("tool_use", "c0", "f", {"a": 1}), ("tool_use", "c1", "g", {"b": 2})]


def test_end_before_any_event_still_writes_a_whole_message():
    encoder = StreamEncoder({"model": 5})
    assert [name for name, _ in written_events(encoder.end(None))] == ["message_start", "message_delta", "message_stop"]


# --- recorded Anthropic streams: through the neutral vocabulary and back ----------------------

@pytest.mark.parametrize("name", [
    "docs_text_stream.sse", "docs_tool_use_stream.sse", "sdk_tool_use_stream.sse", "sdk_refusal_stream.sse",
])
def test_a_recorded_stream_reads_the_same_through_the_gateway(name):
    events = fixture_events(name)
    raw = through_gateway(events)
    written_events(raw)  # each event well formed and valid for the SDK
    _, direct = sdk_stream(fixture_bytes(name))
    sdk_events, translated = sdk_stream(raw)
    assert seen(translated) == seen(direct)
    assert sdk_events[-1].type == "message_stop"


def test_the_docs_tool_use_stream_exactly():
    raw = through_gateway(fixture_events("docs_tool_use_stream.sse"))
    events = written_events(raw)
    assert [name for name, _ in events] == (
        ["message_start", "content_block_start"] + ["content_block_delta"] * 13 + ["content_block_stop"]
        + ["content_block_start"] + ["content_block_delta"] * 5 + ["content_block_stop", "message_delta",
                                                                     "message_stop"])
    assert events[0][1]["message"]["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U"
    assert events[16][1]["content_block"] == {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                              "name": "get_weather", "input": {}}
    # the empty first piece Anthropic sends says nothing, and is not written
    assert [data["delta"]["partial_json"] for _, data in events[17:22]] == [
        '{"location":', ' "San', " Francisc", "o,", ' CA"}']
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 472, "output_tokens": 89}}


def test_the_docs_thinking_stream_keeps_its_text():
    # thinking has no neutral counterpart (the upstream side's StreamDecoder drops it), and this
    # documented stream gives no usage at all
    events, message = sdk_stream(through_gateway(fixture_events("docs_thinking_stream.sse")))
    assert seen(message) == {
        "id": "msg_01...", "model": "claude-opus-4-8", "stop_reason": "end_turn", "stop_sequence": None,
        "content": [("text", "The greatest common divisor of 1071 and 462 is **21**.")], "usage": (0, 0, 0),
    }


# hypothesis: any neutral stream becomes one the SDK reads back as the same answer
SEGMENTS = st.lists(st.one_of(
    st.tuples(st.just("thinking"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("text"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("tool_use"), st.sampled_from(["get_weather", "now"]),
              st.dictionaries(st.sampled_from(["a", "b", "ünï"]),
                              st.one_of(st.integers(-2**53, 2**53), st.text(max_size=5), st.booleans()), max_size=3)),
), max_size=6)


@settings(max_examples=150, deadline=None)
@given(SEGMENTS, st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]),
       st.integers(0, 10_000), st.integers(0, 10_000), st.data())
def test_any_neutral_stream_reads_back_as_the_same_answer(segments, finish, prompt, completion, data):
    events: list = [Start(id="chatcmpl-x", model="m", created=CREATED)]
    expected: list[dict] = []
    calls = 0
    for segment in segments:
        if segment[0] == "tool_use":
            arguments = orjson.dumps(segment[2]).decode()
            first, *rest = pieces_of(data, arguments)
            events.append(Delta(tool_calls=(ToolCallDelta(calls, first, f"call_{calls}", segment[1]),)))
            events += [Delta(tool_calls=(ToolCallDelta(calls, piece),)) for piece in rest]
            expected.append({"type": "tool_use", "id": f"call_{calls}", "name": segment[1], "input": segment[2]})
            calls += 1
            continue
        kind, text = segment
        events += [Delta(**{"reasoning" if kind == "thinking" else "text": piece}) for piece in pieces_of(data, text)]
        if expected and expected[-1]["type"] == kind:  # a block of that kind is still open
            expected[-1][kind] += text
        else:
            expected.append({"type": kind, kind: text, **({"signature": ""} if kind == "thinking" else {})})
    if finish is not None:
        events.append(Finish(finish))
    cached = data.draw(st.integers(0, prompt))
    raw = encoded(events, Usage(prompt, completion, cached))
    names = [name for name, _ in written_events(raw)]
    assert names.count("content_block_start") == names.count("content_block_stop") == len(expected)
    _, message = sdk_stream(raw)
    assert [block.model_dump(exclude_none=True) for block in message.content] == expected
    reason = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
              None: "end_turn"}[finish]
    assert message.stop_reason == ("tool_use" if calls and reason == "end_turn" else reason)
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (
        prompt - cached, completion, cached or None)


# === errors ===================================================================================

@pytest.mark.parametrize(("kind", "type_"), [
    ("invalid_request", "invalid_request_error"), ("authentication", "authentication_error"),
    ("permission", "permission_error"), ("billing", "billing_error"), ("not_found", "not_found_error"),
    ("rate_limit", "rate_limit_error"), ("server", "api_error"), ("overloaded", "overloaded_error"),
    ("timeout", "timeout_error"), ("upstream", "api_error"), ("unavailable", "overloaded_error"),
    ("a_kind_added_later", "api_error"),
])
def test_error_body_per_kind(kind, type_):
    body = error_body("model 'x' is not served here", kind, "model_not_found", "model")
    assert body == orjson.dumps({"type": "error", "error": {"type": type_, "message": "model 'x' is not served here"}})
    assert ERROR.validate_json(body).error.type == type_  # a type the SDK knows


def test_every_neutral_kind_has_an_anthropic_type():
    assert set(codec.ERROR_NAMES) == ERROR_KINDS


def test_the_sdk_reads_an_error_body():
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk_create(error_body("model 'x' is not served here", "not_found"), status=404)
    assert caught.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                            "message": "model 'x' is not served here"}}


def test_upstream_error_body():
    raw = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"},"request_id":"r"}'
    from_anthropic = codec.decode_error(400, orjson.loads(raw), raw=raw)
    assert upstream_error_body(from_anthropic) is raw  # as it came
    from_openai = UpstreamError(FailureClass.CLIENT, "context_length_exceeded: too long", status=400,
                                code="context_length_exceeded", param="messages",
                                body=b'{"error":{"message":"too long"}}', body_format=WireFormat.OPENAI)
    assert upstream_error_body(from_openai) == (
        b'{"type":"error","error":{"type":"invalid_request_error","message":"context_length_exceeded: too long"}}')
    assert upstream_error_body(UpstreamError(FailureClass.RATE_LIMIT, "slow down", status=429)) == (
        b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}')


@pytest.mark.parametrize(("failure", "type_"), [
    (FailureClass.OVERLOADED, "overloaded_error"), (FailureClass.SERVER, "api_error"),
    (FailureClass.TIMEOUT, "api_error"), (FailureClass.PROTOCOL, "api_error"), (FailureClass.CONNECT, "api_error"),
])
def test_stream_error(failure, type_):
    event = stream_error(UpstreamError(failure, "Overloaded"))
    assert event == (b'event: error\ndata: {"type":"error","error":{"type":"' + type_.encode()
                     + b'","message":"the upstream stream failed: Overloaded"}}\n\n')
    # a stream cut so: the SDK raises it, with no complete message
    encoder = StreamEncoder({"model": "alias"})
    raw = encoder.encode(Start("Partial", id="chatcmpl-1", model="m")) + event
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(raw)
    assert caught.value.body == {"type": "error", "error": {"type": type_,
                                                            "message": "the upstream stream failed: Overloaded"}}
