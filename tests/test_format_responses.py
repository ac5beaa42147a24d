"""The Responses codec (daemon/formats/responses.py): an OpenAI Responses client's body read as a
neutral `Chat` and written for OpenAI-compatible and Anthropic upstreams; neutral answers,
streams and errors written in the Responses API's words and read back with the official
`openai` SDK. The answers and streams in tests/fixtures/responses/ (its README names their
sources) are recordings of the live API: read as neutral values and written again, they must
read the same through the SDK, for what the neutral vocabulary carries.
"""

from __future__ import annotations

import copy
from pathlib import Path

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gatewayd.adapters import ollama as ollama_adapter
from gatewayd.daemon.core.conversation import (
    AUTO,
    NONE,
    REQUIRED,
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
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import ERROR_KINDS, FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Answer, Delta, Finish, Start, ToolCallDelta, Usage
from gatewayd.daemon.formats import anthropic as anthropic_codec
from gatewayd.daemon.formats import openai as openai_codec
from gatewayd.daemon.formats.responses import (
    FORMAT,
    StreamEncoder,
    decode_chat,
    encode_answer,
    error_body,
    stateful_fields,
    stream_error,
    upstream_error_body,
)
from tests.wire import pieces_of, recorded_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
MODEL = "upstream-model"
CREATED = 1_700_000_000
EVENTS = TypeAdapter(ResponseStreamEvent)

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string", "description": "City and country e.g. Bogotá, Colombia"}},
    "required": ["location"],
    "additionalProperties": False,
}
# a function tool as OpenAI's function-calling guide writes one for the Responses API
WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "description": "Get current temperature for a given location.", "parameters": WEATHER_SCHEMA,
                "strict": True}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

# what the Response echoes of a body that sets none of its settings (OpenAI's defaults)
DEFAULT_SETTINGS = {
    "background": False, "instructions": None, "max_output_tokens": None, "max_tool_calls": None,
    "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None}, "safety_identifier": None, "store": False, "temperature": None,
    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": None, "truncation": "disabled",
    "user": None, "metadata": {},
}


# --- helpers -----------------------------------------------------------------------------------

def fixture_events(name: str) -> list[tuple[str, dict]]:
    """A recorded SSE stream's (event, data) pairs; `:` lines are comments (the source)."""
    return [(event.decode(), orjson.loads(data)) for event, data in recorded_pairs(FIXTURES / name)]


def fixture_bytes(name: str) -> bytes:
    return b"".join(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
                    for event, data in fixture_events(name))


def written_events(raw: bytes, first: int = 0) -> list[tuple[str, dict]]:
    """The encoder's bytes as (event, data) pairs, each checked: exactly `event: X` then `data:
    {...}` then a blank line, X the data's type, sequence numbers consecutive from `first`, the
    data a valid SDK stream event."""
    assert raw.endswith(b"\n\n") or raw == b""
    out = []
    for chunk in raw.split(b"\n\n")[:-1]:
        event, data = chunk.split(b"\n")
        name, payload = event.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))
        assert event.startswith(b"event: ") and data.startswith(b"data: ") and payload["type"] == name
        assert payload["sequence_number"] == first + len(out)
        EVENTS.validate_python(payload)
        out.append((name, payload))
    return out


def written_pieces(pieces: list[bytes]) -> list[list[tuple[str, dict]]]:
    """Each piece's events, checked as `written_events` does, numbered on from the piece before."""
    out: list[list[tuple[str, dict]]] = []
    for piece in pieces:
        out.append(written_events(piece, sum(map(len, out))))
    return out


def encoded(events, usage: Usage | None = None, body: dict | None = None) -> bytes:
    encoder = StreamEncoder(body or {"model": "alias"})
    return b"".join(map(encoder.encode, events)) + encoder.end(usage)


def sdk_client(respond) -> tuple[httpx2.Client, openai.OpenAI]:
    http = httpx2.Client(transport=httpx2.MockTransport(respond))
    return http, openai.OpenAI(api_key="key", base_url="http://gateway.test/v1", http_client=http, max_retries=0)


def sdk_stream(raw: bytes):
    """What the official SDK makes of a stream: its events, and the response it ends with (the
    accumulated final response after response.completed; the response.incomplete event's)."""
    http, client = sdk_client(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=raw))
    with http, client.responses.stream(model="alias", input="Hi") as stream:
        events = list(stream)
        if events[-1].type == "response.completed":
            return events, stream.get_final_response()
        return events, events[-1].response


def sdk_create(raw: bytes, status: int = 200):
    http, client = sdk_client(lambda request: httpx2.Response(
        status, headers={"content-type": "application/json"}, content=raw))
    with http:
        return client.responses.create(model="alias", input="Hi")


def seen(response) -> dict:
    """What a client reads of a response, in what the neutral vocabulary carries (item ids are
    the gateway's own, reasoning token counts and OpenAI's obfuscation no neutral value holds)."""
    items = []
    for item in response.output:
        if item.type == "message":
            items.append(("message", item.status, [(part.type, part.text) for part in item.content]))
        elif item.type == "function_call":
            items.append(("function_call", item.status, item.call_id, item.name, item.arguments))
        elif item.type == "reasoning":
            items.append(("reasoning", [part.text for part in item.content or ()]))
    usage = response.usage
    return {"id": response.id, "model": response.model, "created_at": response.created_at,
            "status": response.status, "output": items, "output_text": response.output_text,
            "incomplete": response.incomplete_details and response.incomplete_details.reason,
            "usage": usage and (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens,
                                usage.total_tokens)}


def neutral_of(events: list[tuple[str, dict]]) -> tuple[list, Usage | None]:
    """A recorded Responses stream as an upstream decoder would read it in neutral events (text,
    function calls, the finish and the usage)."""
    out: list = []
    usage = None
    calls: dict[int, int] = {}  # output index -> tool call index
    for name, data in events:
        if name == "response.created":
            response = data["response"]
            out.append(Start(id=response["id"], model=response["model"], created=response["created_at"]))
        elif name == "response.output_text.delta":
            out.append(Delta(data["delta"]))
        elif name == "response.output_item.added" and data["item"]["type"] == "function_call":
            item = data["item"]
            calls[data["output_index"]] = len(calls)
            out.append(Delta(tool_calls=(ToolCallDelta(len(calls) - 1, item["arguments"], item["call_id"],
                                                       item["name"]),)))
        elif name == "response.function_call_arguments.delta":
            out.append(Delta(tool_calls=(ToolCallDelta(calls[data["output_index"]], data["delta"]),)))
        elif name in ("response.completed", "response.incomplete"):
            counted = data["response"]["usage"]
            usage = Usage(counted["input_tokens"], counted["output_tokens"],
                          counted["input_tokens_details"]["cached_tokens"])
            out.append(Finish("length" if name == "response.incomplete" else "tool_calls" if calls else "stop"))
    return out, usage


def shape(events: list[tuple[str, dict]]) -> list[dict]:
    """Events as the neutral vocabulary can say them again: ids of items (which the gateway
    names itself), OpenAI's obfuscation padding and the response objects left out."""
    out = []
    for _, data in events:
        data = {key: value for key, value in data.items() if key not in ("item_id", "obfuscation", "response")}
        if "item" in data:
            data["item"] = {key: value for key, value in data["item"].items() if key != "id"}
        out.append(data)
    return out


# === requests ==================================================================================

# --- decode_chat: literal bodies ---------------------------------------------------------------

def test_decode_reads_every_field():
    body = {
        "model": "alias", "instructions": "Be brief.", "input": "Hi", "stream": True, "max_output_tokens": 512,
        "temperature": 0.2, "top_p": 0.9, "user": "u-old", "safety_identifier": "u-1",
        "tools": [WEATHER_TOOL, {"type": "function", "name": "now", "parameters": {"type": "object"}},
                  {"type": "web_search"}, {"type": "custom", "name": "grammar"}],
        "tool_choice": "required", "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "weather", "description": "A forecast",
                            "schema": WEATHER_SCHEMA, "strict": True}, "verbosity": "low"},
        "reasoning": {"effort": "low"}, "store": False, "include": ["reasoning.encrypted_content"],
        "metadata": {"k": "v"}, "truncation": "auto", "service_tier": "flex",
    }
    chat = decode_chat(body)
    assert chat.model == "alias" and chat.client_format is FORMAT is WireFormat.RESPONSES
    assert chat.messages == (Message("system", "Be brief."), Message("user", "Hi"))
    assert (chat.stream, chat.max_tokens, chat.temperature, chat.top_p, chat.user) == (True, 512, 0.2, 0.9, "u-1")
    assert chat.tools == (
        Tool("get_weather", "Get current temperature for a given location.", WEATHER_SCHEMA, True),
        Tool("now", None, {"type": "object"}, None),  # strict as sent: OpenAI's default is OpenAI's
        UnsupportedTool("web_search"), UnsupportedTool("custom"),
    )
    assert (chat.tool_choice, chat.parallel_tool_calls) == (REQUIRED, False)
    assert chat.response_format == ResponseFormat("json_schema", "weather", "A forecast", WEATHER_SCHEMA, True)
    assert dict(chat.extra) == {"text": body["text"], "reasoning": {"effort": "low"}, "store": False,
                                "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"},
                                "truncation": "auto", "service_tier": "flex"}
    assert (chat.stop, chat.seed, chat.n, chat.presence_penalty, chat.frequency_penalty) == ((), None, None, None, None)
    assert decode_chat({"input": "x", "user": "u-old"}).user == "u-old"


def test_decode_shares_the_clients_values_rather_than_copying_them():
    body = {"model": "alias", "input": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL],
            "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER_SCHEMA}},
            "reasoning": {"effort": "low"}}
    before = copy.deepcopy(body)
    chat = decode_chat(body)
    assert chat.tools[0].parameters is WEATHER_SCHEMA
    assert chat.response_format.schema is WEATHER_SCHEMA
    assert chat.extra["reasoning"] is body["reasoning"]
    assert chat.messages[0].content is body["input"][0]["content"]
    assert body == before  # decoding reads the client's body, never changes it


CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"location":"Paris, France"}', "status": "completed"}
CALL_2 = {"type": "function_call", "call_id": "call_2", "name": "now", "arguments": "{}"}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two calls."}],
             "encrypted_content": "gAAAAAB..."}


@pytest.mark.parametrize(("input_", "expected"), [
    ("Hi", (Message("user", "Hi"),)),
    (None, ()),
    ([], ()),
    ([{"role": "user", "content": "Hi"}, {"type": "message", "role": "developer", "content": "Be brief."}],
     (Message("user", "Hi"), Message("developer", "Be brief."))),
    # parts: a user's kept as parts; a system's, a developer's and an assistant's all-text parts as one string
    ([{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is in these?"},
        {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "high"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
        {"type": "input_image", "file_id": "file-abc123", "detail": "auto"},
        {"type": "input_image"},
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
        "text",
    ]}], (Message("user", (
        Text("What is in these?"), Image("https://example.com/cat.jpg", "high"),
        Image(f"data:image/png;base64,{PNG}", "auto"), UnsupportedPart("input_image with a file_id"),
        UnsupportedPart("input_image without an image_url"), UnsupportedPart("input_file"),
        UnsupportedPart("input_audio"), UnsupportedPart(None),
    )),)),
    ([{"role": "system", "content": [{"type": "input_text", "text": "A. "}, {"type": "input_text", "text": "B."}]},
      {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [
          {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []},
          {"type": "output_text", "text": " there", "annotations": []}]},
      {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
      {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
     (Message("system", "A. B."), Message("assistant", "Hello there"), Message("assistant", (Refusal("I can't."),)),
      Message("user", (Text("Hi"),)))),
    # function calls: consecutive ones are one assistant message, which takes the assistant
    # message right before them (reasoning between them says nothing to other deployments)
    ([{"role": "user", "content": "Weather in Paris? And the time?"},
      REASONING,
      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
      REASONING, CALL, REASONING, CALL_2,
      {"type": "function_call_output", "call_id": "call_1", "output": '{"temperature": 25}'},
      {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
      {"role": "assistant", "content": "25 degrees at noon."}],
     (Message("user", "Weather in Paris? And the time?"),
      Message("assistant", "Checking.", (ToolCall("call_1", "get_weather", '{"location":"Paris, France"}'),
                                         ToolCall("call_2", "now", "{}"))),
      Message("tool", '{"temperature": 25}', tool_call_id="call_1"),
      Message("tool", "noon", tool_call_id="call_2"),
      Message("assistant", "25 degrees at noon."))),
    # calls after anything but an assistant message start one of their own
    ([{"role": "user", "content": "Hi"}, CALL, {"type": "function_call_output", "call_id": "call_1", "output": "25"},
      CALL_2],
     (Message("user", "Hi"), Message("assistant", None, (ToolCall("call_1", "get_weather", CALL["arguments"]),)),
      Message("tool", "25", tool_call_id="call_1"), Message("assistant", None, (ToolCall("call_2", "now", "{}"),)))),
    ([{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": "https://example.com/a.png"}]},
      {"type": "function_call_output", "call_id": "d", "output": 5},
      {"type": "function_call_output", "call_id": "e"},
      {"type": "function_call", "name": "f"}],
     (Message("tool", (Text("see"), Image("https://example.com/a.png")), tool_call_id="c"),
      Message("tool", Malformed(5), tool_call_id="d"), Message("tool", None, tool_call_id="e"),
      Message("assistant", None, (ToolCall(None, "f", ""),)))),
    # items of other kinds: one unsupported part each, for the encoder to refuse
    ([{"type": "web_search_call", "id": "ws_1", "status": "completed"},
      {"type": "custom_tool_call_output", "call_id": "c", "output": "x"},
      {"type": "item_reference", "id": "msg_1"}],
     (Message("assistant", (UnsupportedPart("web_search_call"),)),
      Message("user", (UnsupportedPart("custom_tool_call_output"),)),
      Message("user", (UnsupportedPart("item_reference"),)))),
    ([REASONING], ()),
    ([5, {"content": "no role"}, {"role": "user", "content": 5}, {"type": "message", "content": "x"}],
     (Message(None, Malformed(5)), Message(None, Malformed({"content": "no role"})), Message("user", Malformed(5)),
      Message(None, "x"))),
    ({"role": "user"}, (Message(None, Malformed({"role": "user"})),)),
    (5, (Message(None, Malformed(5)),)),
])
def test_input_items(input_, expected):
    assert decode_chat({"input": input_}).messages == expected


@pytest.mark.parametrize(("instructions", "expected"), [
    ("Be brief.", (Message("system", "Be brief."), Message("user", "Hi"))),
    ("", (Message("user", "Hi"),)),
    (None, (Message("user", "Hi"),)),
    (["Be brief."], (Message("system", Malformed(["Be brief."])), Message("user", "Hi"))),
])
def test_instructions_are_a_first_system_message(instructions, expected):
    assert decode_chat({"instructions": instructions, "input": "Hi"}).messages == expected


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", AUTO), ("required", REQUIRED), ("none", NONE), (None, None),
    ({"type": "function", "name": "get_weather"}, ToolChoice("tool", "get_weather")),
    ({"type": "function"}, Malformed({"type": "function"})),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]},
     Malformed({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]})),
    ({"type": "web_search_preview"}, Malformed({"type": "web_search_preview"})),
    ("sometimes", Malformed("sometimes")), (5, Malformed(5)),
])
def test_tool_choice(choice, expected):
    assert decode_chat({"input": "x", "tools": [WEATHER_TOOL], "tool_choice": choice}).tool_choice == expected


@pytest.mark.parametrize(("tools", "expected"), [
    ([WEATHER_TOOL], (Tool("get_weather", WEATHER_TOOL["description"], WEATHER_SCHEMA, True),)),
    ([{"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "mcp", "server_label": "x"}, 5],
     (UnsupportedTool("file_search"), UnsupportedTool("mcp"), UnsupportedTool(None))),
    # chat completions' nested shape: a function without a name, which every upstream refuses
    ([{"type": "function", "function": {"name": "f"}}], (Tool(None),)),
    ("all", (UnsupportedTool(None),)), (None, ()), ([], ()),
])
def test_tools(tools, expected):
    assert decode_chat({"input": "x", "tools": tools}).tools == expected


@pytest.mark.parametrize(("text", "expected"), [
    (None, None),
    ({"format": {"type": "text"}}, ResponseFormat("text")),
    ({"format": {"type": "json_object"}}, ResponseFormat("json_object")),
    ({"format": {"type": "json_schema", "name": "w", "schema": WEATHER_SCHEMA, "strict": True}},
     ResponseFormat("json_schema", "w", None, WEATHER_SCHEMA, True)),
    ({"verbosity": "low"}, None),
    ({"format": "json"}, Malformed("json")),
    ("json", Malformed("json")),
])
def test_text_format(text, expected):
    assert decode_chat({"input": "x", "text": text}).response_format == expected


# --- stateful fields ---------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"input": "Hi"}, None),
    ({"input": "Hi", "store": True}, None),  # a create is served; nothing is kept
    ({"input": "Hi", "store": False, "include": ["reasoning.encrypted_content"]}, None),
    ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "Hi", "previous_response_id": None, "conversation": None, "prompt": None}, None),
    ({"input": "Hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "Hi", "conversation": {"id": "conv_1"}}, "conversation"),
    ({"prompt": {"id": "pmpt_1", "version": "2", "variables": {"city": "Paris"}}}, "prompt"),
    ({"input": "Hi", "background": True}, "background"),
    ({"input": "Hi", "background": False}, None),
    ({"input": [{"role": "user", "content": "Hi"}, {"type": "item_reference", "id": "msg_1"}]}, "input[1]"),
    ({"input": "Hi", "background": True, "previous_response_id": "resp_1"}, "previous_response_id"),
])
def test_stateful_fields(body, field):
    assert stateful_fields(body) == field


# --- written for OpenAI-compatible and Anthropic upstreams -------------------------------------

# a function-calling round as OpenAI's function-calling guide writes one: the model's call is
# appended to the input, then the call's output
TOOL_ROUND = {
    "model": "alias",
    "instructions": "Answer in one sentence.",
    "tools": [WEATHER_TOOL],
    "input": [
        {"role": "user", "content": "What's the weather like in Paris today?"},
        {"type": "function_call", "id": "fc_12345xyz", "call_id": "call_12345xyz", "name": "get_weather",
         "arguments": '{"location":"Paris, France"}', "status": "completed"},
        {"type": "function_call_output", "call_id": "call_12345xyz", "output": '{"temperature": 25}'},
    ],
    "max_output_tokens": 300,
    "stream": True,
}


def test_a_function_calling_round_becomes_the_chat_completions_request():
    assert orjson.loads(openai_codec.encode_chat(decode_chat(TOOL_ROUND), MODEL)) == {
        "model": MODEL, "stream": True, "max_completion_tokens": 300,
        "messages": [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "What's the weather like in Paris today?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_12345xyz", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location":"Paris, France"}'}}]},
            {"role": "tool", "content": '{"temperature": 25}', "tool_call_id": "call_12345xyz"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": WEATHER_TOOL["description"],
                                                    "parameters": WEATHER_SCHEMA, "strict": True}}],
        # the gateway books the usage, and a Responses stream ends with it
        "stream_options": {"include_usage": True},
    }


def test_a_function_calling_round_becomes_the_anthropic_request():
    assert orjson.loads(anthropic_codec.encode_chat(decode_chat(TOOL_ROUND), MODEL)) == {
        "model": MODEL, "max_tokens": 300, "stream": True, "system": "Answer in one sentence.",
        "messages": [
            {"role": "user", "content": "What's the weather like in Paris today?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_12345xyz", "name": "get_weather",
                                               "input": {"location": "Paris, France"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_12345xyz",
                                          "content": '{"temperature": 25}'}]},
        ],
        "tools": [{"name": "get_weather", "description": WEATHER_TOOL["description"], "input_schema": WEATHER_SCHEMA}],
    }


def test_structured_output_and_settings_for_openai():
    body = {"model": "alias", "input": "A person?", "temperature": 0.3, "top_p": 0.5, "safety_identifier": "u-1",
            "tool_choice": {"type": "function", "name": "get_weather"}, "tools": [WEATHER_TOOL],
            "parallel_tool_calls": False, "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "person", "schema": {"type": "object"},
                                "strict": True}}}
    out = orjson.loads(openai_codec.encode_chat(decode_chat(body), MODEL))
    assert {key: value for key, value in out.items() if key not in ("messages", "tools")} == {
        "model": MODEL, "temperature": 0.3, "top_p": 0.5, "user": "u-1",
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "object"},
                                                                    "strict": True}},
    }  # the Responses-only fields (reasoning) are not chat completions' words: left out


@pytest.mark.parametrize(("body", "message"), [
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "content part type 'input_file' cannot be sent to provider type openai"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "content part type 'input_image with a file_id' cannot be sent to provider type openai"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]},
     "content part type 'web_search_call' cannot be sent to provider type openai"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools of type 'web_search' cannot be sent"),
    ({"input": "x", "tool_choice": {"type": "allowed_tools"}}, "tool_choice must be auto, required, none"),
    ({"input": "x", "text": {"format": 5}}, "response_format must be an object"),
])
def test_what_openai_cannot_be_sent_is_the_clients_400(body, message):
    with pytest.raises(UpstreamError) as caught:
        openai_codec.encode_chat(decode_chat(body), MODEL)
    assert (caught.value.failure, caught.value.status) == (FailureClass.CLIENT, 400)
    assert message in caught.value.message


TEXTS = st.sampled_from(["Hi", "two words", "ünïcode ✓", ""])
PARTS = st.one_of(
    st.builds(lambda text: {"type": "input_text", "text": text}, TEXTS),
    st.builds(lambda text: {"type": "output_text", "text": text, "annotations": []}, TEXTS),
    st.sampled_from([{"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "auto"},
                     {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                     {"type": "input_image", "file_id": "file-1"}, {"type": "input_file", "file_data": "x"},
                     {"type": "refusal", "refusal": "no"}, {"type": "input_text", "text": 5}, {}, 5, None]),
)
CONTENT = st.one_of(st.none(), TEXTS, st.integers(), st.lists(PARTS, max_size=3))
ITEMS = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "critic"])},
                          optional={"type": st.just("message"), "content": CONTENT}),
    st.fixed_dictionaries({"type": st.just("function_call")}, optional={
        "call_id": st.sampled_from(["call_1", "call_2", "", 5]), "name": st.sampled_from(["get_weather", "", None]),
        "arguments": st.sampled_from(['{"location": "Paris"}', "{}", "", "[1]", "{bad", {"a": 1}])}),
    st.fixed_dictionaries({"type": st.just("function_call_output")}, optional={
        "call_id": st.sampled_from(["call_1", None]), "output": CONTENT}),
    st.sampled_from([REASONING, {"type": "item_reference", "id": "x"}, {"type": "web_search_call"}, {}, 5, "hi"]),
)
BODIES_MADE_UP = st.fixed_dictionaries({"input": st.one_of(st.lists(ITEMS, max_size=5), TEXTS,
                                                           st.sampled_from([None, 5, {}]))}, optional={
    "instructions": st.sampled_from(["Be brief.", "", 5]),
    "tools": st.one_of(st.lists(st.sampled_from([WEATHER_TOOL, {"type": "function", "name": "f"},
                                                 {"type": "web_search"}, {"type": "function"}, 5]), max_size=2),
                       st.just("x")),
    "tool_choice": st.sampled_from(["auto", "required", "none", "any", {"type": "function", "name": "f"},
                                    {"type": "function"}, 5]),
    "text": st.sampled_from([{"format": {"type": "json_schema", "name": "x", "schema": {}}}, {"format": 5},
                             {"format": {"type": "json_object"}}, 5]),
    "max_output_tokens": st.one_of(st.integers(1, 100), st.just("many")), "stream": st.sampled_from([True, "yes"]),
    "temperature": st.sampled_from([0.5, "hot"]), "parallel_tool_calls": st.sampled_from([False, "no"]),
})


@settings(max_examples=300, deadline=None)
@given(BODIES_MADE_UP)
def test_any_body_decodes_and_becomes_a_request_or_a_clients_400(body):
    chat = decode_chat(body)
    for encode in (openai_codec.encode_chat, anthropic_codec.encode_chat, ollama_adapter.encode_chat):
        try:
            out = encode(chat, MODEL)
        except UpstreamError as error:
            assert (error.failure, error.status) == (FailureClass.CLIENT, 400)
        else:
            assert isinstance(orjson.loads(out), dict)


# === answers =================================================================================

def test_a_text_answer_exactly():
    answer = Answer("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "gpt-4o-2024-08-06", CREATED, "Hello! How can I help?",
                    "stop", Usage(prompt_tokens=1200, completion_tokens=12, cached_tokens=1024))
    out = encode_answer(answer, {"model": "alias", "input": "Hi"})
    assert orjson.loads(out) == {
        "id": "resp_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "response", "created_at": CREATED,
        "status": "completed", "error": None, "incomplete_details": None, "model": "gpt-4o-2024-08-06",
        "output": [{"id": "msg_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT_0", "type": "message", "status": "completed",
                    "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                 "text": "Hello! How can I help?"}],
                    "role": "assistant"}],
        **DEFAULT_SETTINGS,
        "usage": {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
                  "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1212},
    }
    response = sdk_create(out)
    assert Response.model_validate_json(out) == response
    assert (response.output_text, response.usage.input_tokens_details.cached_tokens) == ("Hello! How can I help?", 1024)


def test_the_request_settings_are_echoed():
    body = {**TOOL_ROUND, "temperature": 0.3, "top_p": 0.5, "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False, "text": {"format": {"type": "json_object"}, "verbosity": "low"},
            "reasoning": {"effort": "low", "summary": "auto"}, "truncation": "auto", "metadata": {"k": "v"},
            "user": "u-old", "safety_identifier": "u-1", "prompt_cache_key": "k-1", "max_tool_calls": 3,
            "store": True}
    out = orjson.loads(encode_answer(Answer("resp_1", "m", CREATED, "Hi", "stop", Usage()), body))
    assert {key: out[key] for key in DEFAULT_SETTINGS} == {
        "background": False, "instructions": "Answer in one sentence.", "max_output_tokens": 300, "max_tool_calls": 3,
        "parallel_tool_calls": False, "previous_response_id": None, "prompt_cache_key": "k-1",
        "reasoning": {"effort": "low", "summary": "auto"}, "safety_identifier": "u-1",
        "store": False,  # whatever was asked: nothing is kept
        "temperature": 0.3, "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "tool_choice": {"type": "function", "name": "get_weather"}, "tools": [WEATHER_TOOL], "top_p": 0.5,
        "truncation": "auto", "user": "u-old", "metadata": {"k": "v"},
    }
    assert out["id"] == "resp_1"  # already a response id
    Response.model_validate(out)


def test_settings_too_deep_to_write_are_echoed_as_defaults():
    deep: dict = {}
    for _ in range(300):  # deeper than orjson writes
        deep = {"a": deep}
    body = {"model": "alias", "input": "Hi", "metadata": {"k": deep}, "temperature": 0.3}
    answer = orjson.loads(encode_answer(Answer("resp_1", "m", CREATED, "Hi", "stop", Usage()), body))
    assert {key: answer[key] for key in DEFAULT_SETTINGS} == DEFAULT_SETTINGS
    events = written_events(encoded([Start(id="resp_1", model="m", created=CREATED), Delta("Hi"), Finish("stop")],
                                    None, body))
    assert all({key: data["response"][key] for key in DEFAULT_SETTINGS} == DEFAULT_SETTINGS
               for name, data in events if "response" in data)
    assert sdk_stream(encoded([Delta("Hi")], None, body))[1].output_text == "Hi"


def test_reasoning_text_and_calls_as_items():
    answer = Answer("chatcmpl-1", "qwen3", CREATED, "Let me check both.", "tool_calls", Usage(50, 30), (
        ToolCall("call_1", "get_weather", '{"location": "Paris"}'),
        ToolCall("", "now", ""),  # a server that gives no id: the client matches its output by one
    ), reasoning="Two cities.")
    out = orjson.loads(encode_answer(answer, {"model": "alias", "tools": [WEATHER_TOOL]}))
    assert out["output"] == [
        {"id": "rs_chatcmpl-1_0", "type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Two cities."}], "status": "completed"},
        {"id": "msg_chatcmpl-1_1", "type": "message", "status": "completed",
         "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Let me check both."}],
         "role": "assistant"},
        {"id": "fc_chatcmpl-1_2", "type": "function_call", "status": "completed",
         "arguments": '{"location": "Paris"}', "call_id": "call_1", "name": "get_weather"},
        {"id": "fc_chatcmpl-1_3", "type": "function_call", "status": "completed", "arguments": "",
         "call_id": "call_chatcmpl-1_3", "name": "now"},
    ]
    assert out["status"] == "completed"
    response = sdk_create(orjson.dumps(out))
    assert seen(response)["output"] == [
        ("reasoning", ["Two cities."]), ("message", "completed", [("output_text", "Let me check both.")]),
        ("function_call", "completed", "call_1", "get_weather", '{"location": "Paris"}'),
        ("function_call", "completed", "call_chatcmpl-1_3", "now", ""),
    ]


@pytest.mark.parametrize(("finish", "text", "calls", "status", "reason", "items"), [
    ("stop", "Hi", False, "completed", None, [("message", "completed")]),
    ("length", "Hi", False, "incomplete", "max_output_tokens", [("message", "incomplete")]),
    ("content_filter", "", False, "incomplete", "content_filter", [("message", "incomplete")]),
    ("tool_calls", None, True, "completed", None, [("function_call", "completed")]),
    ("stop", None, True, "completed", None, [("function_call", "completed")]),
    ("length", "Hi", True, "incomplete", "max_output_tokens",
     [("message", "completed"), ("function_call", "incomplete")]),
    ("something_new", None, False, "completed", None, [("message", "completed")]),  # an empty answer: one empty message
])
def test_every_finish(finish, text, calls, status, reason, items):
    answer = Answer("x", "m", CREATED, text, finish, Usage(), (ToolCall("c", "now", "{}"),) if calls else ())
    out = orjson.loads(encode_answer(answer, {}))
    assert (out["status"], out["incomplete_details"]) == (status, reason and {"reason": reason})
    assert [(item["type"], item["status"]) for item in out["output"]] == items
    Response.model_validate(out)


def test_the_recorded_answer_reads_the_same_through_the_gateway():
    raw = (FIXTURES / "answer_text.json").read_bytes()
    direct = sdk_create(raw)
    recorded = orjson.loads(raw)
    counted = recorded["usage"]
    answer = Answer(recorded["id"], recorded["model"], recorded["created_at"], direct.output_text, "stop",
                    Usage(counted["input_tokens"], counted["output_tokens"],
                          counted["input_tokens_details"]["cached_tokens"]))
    translated = sdk_create(encode_answer(answer, {"model": "gpt-4o-mini", "input": "What's the weather like in SF?"}))
    assert seen(translated) == seen(direct)
    assert seen(direct)["id"] == "resp_689a0b2545288193953c892439b42e2800b2e36c65a1fd4b"


# === streams ================================================================================

def test_a_stream_exactly():
    events = [Start(id="chatcmpl-1", model="gpt-4o-mini", created=CREATED, text=""), Delta("Hel"), Delta("lo"),
              Delta(tool_calls=(ToolCallDelta(0, "", "call_1", "get_weather"),)),
              Delta(tool_calls=(ToolCallDelta(0, '{"location":'),)), Delta(tool_calls=(ToolCallDelta(0, ' "Paris"}'),)),
              Finish("tool_calls")]
    encoder = StreamEncoder({"model": "alias", "input": "Hi", "stream": True})
    pieces = [encoder.encode(event) for event in events] + [encoder.end(Usage(100, 20, 30))]
    message = {"id": "msg_chatcmpl-1_0", "type": "message", "role": "assistant"}
    call = {"id": "fc_chatcmpl-1_1", "type": "function_call", "call_id": "call_1", "name": "get_weather"}
    part = {"type": "output_text", "annotations": [], "logprobs": []}
    at = {"item_id": "msg_chatcmpl-1_0", "output_index": 0, "content_index": 0}
    in_progress = {"id": "resp_chatcmpl-1", "object": "response", "created_at": CREATED, "status": "in_progress",
                   "error": None, "incomplete_details": None, "model": "gpt-4o-mini", "output": [],
                   **DEFAULT_SETTINGS, "usage": None}
    done_message = {**message, "status": "completed", "content": [{**part, "text": "Hello"}]}
    done_call = {**call, "status": "completed", "arguments": '{"location": "Paris"}'}

    def event(kind, seq, **fields):
        return (kind, {"type": kind, "sequence_number": seq, **fields})

    assert written_pieces(pieces) == [
        [event("response.created", 0, response=in_progress), event("response.in_progress", 1, response=in_progress)],
        [event("response.output_item.added", 2, output_index=0, item={**message, "status": "in_progress",
                                                                       "content": []}),
         event("response.content_part.added", 3, **at, part={**part, "text": ""}),
         event("response.output_text.delta", 4, **at, delta="Hel", logprobs=[])],
        [event("response.output_text.delta", 5, **at, delta="lo", logprobs=[])],
        [event("response.output_text.done", 6, **at, text="Hello", logprobs=[]),
         event("response.content_part.done", 7, **at, part={**part, "text": "Hello"}),
         event("response.output_item.done", 8, output_index=0, item=done_message),
         event("response.output_item.added", 9, output_index=1, item={**call, "status": "in_progress",
                                                                       "arguments": ""})],
        [event("response.function_call_arguments.delta", 10, item_id=call["id"], output_index=1,
               delta='{"location":')],
        [event("response.function_call_arguments.delta", 11, item_id=call["id"], output_index=1,
               delta=' "Paris"}')],
        [event("response.function_call_arguments.done", 12, item_id=call["id"], output_index=1,
               arguments='{"location": "Paris"}'),
         event("response.output_item.done", 13, output_index=1, item=done_call)],
        [event("response.completed", 14, response={
            **in_progress, "status": "completed", "output": [done_message, done_call],
            "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 0},
                      "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 120}})],
    ]
    assert pieces[2] == (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                         b'"sequence_number":5,"item_id":"msg_chatcmpl-1_0","output_index":0,"content_index":0,'
                         b'"delta":"lo","logprobs":[]}\n\n')
    sdk_events, response = sdk_stream(b"".join(pieces))
    assert [e.type for e in sdk_events][-1] == "response.completed"
    assert seen(response) == {
        "id": "resp_chatcmpl-1", "model": "gpt-4o-mini", "created_at": CREATED, "status": "completed",
        "output": [("message", "completed", [("output_text", "Hello")]),
                   ("function_call", "completed", "call_1", "get_weather", '{"location": "Paris"}')],
        "output_text": "Hello", "incomplete": None, "usage": (100, 30, 20, 120),
    }


def test_reasoning_then_text_and_a_cut_answer():
    raw = encoded([Start(id="chatcmpl-2", model="qwen3", created=CREATED), Delta(reasoning="Think"),
                   Delta("Par", reasoning="ing."), Delta("tial"), Finish("length")], Usage(5, 7))
    events = written_events(raw)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.incomplete"]
    assert events[8][1]["item"] == {"id": "rs_chatcmpl-2_0", "type": "reasoning", "summary": [],
                                    "content": [{"type": "reasoning_text", "text": "Thinking."}],
                                    "status": "completed"}
    assert events[15][1]["item"]["status"] == "incomplete"  # the item the answer was cut in
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    sdk_events, response = sdk_stream(raw)
    assert sdk_events[-1].type == "response.incomplete"
    assert seen(response)["output"] == [("reasoning", ["Thinking."]), ("message", "incomplete",
                                                                        [("output_text", "Partial")])]
    assert (response.status, response.output_text) == ("incomplete", "Partial")


def test_a_start_with_content_calls_in_one_event_and_an_end_without_finish():
    # Ollama's shape: the first line may already hold text, a line whole tool calls
    raw = encoded([Start("Hi", id="chatcmpl-3", model="llama3", created=CREATED),
                   Delta(tool_calls=(ToolCallDelta(0, '{"a": 1}', "call_0", "f"), ToolCallDelta(1, "{}", None, "g")))])
    names = [name for name, _ in written_events(raw)]
    assert names.count("response.output_item.added") == names.count("response.output_item.done") == 3
    assert names[-1] == "response.completed"
    _, response = sdk_stream(raw)
    assert seen(response)["output"] == [
        ("message", "completed", [("output_text", "Hi")]),
        ("function_call", "completed", "call_0", "f", '{"a": 1}'),
        ("function_call", "completed", "call_chatcmpl-3_2", "g", "{}"),  # no id came: one of its own
    ]
    assert seen(response)["usage"] is None  # no usage came


def test_no_start_an_empty_stream_and_interleaved_calls():
    # no Start: the response still starts, with the client's model and an id of its own
    events = written_events(encoded([Delta("Hi")], None, {"model": "alias"}))
    created = events[0][1]["response"]
    assert created["model"] == "alias" and created["id"].startswith("resp_") and len(created["id"]) == 37
    assert events[-1][1]["response"]["id"] == created["id"]
    # nothing at all: a whole, empty response
    encoder = StreamEncoder({"model": 5})
    assert [name for name, _ in written_events(encoder.end(None))] == [
        "response.created", "response.in_progress", "response.completed"]
    # a piece of a call whose item is done goes to that item's output index, and is in the final response
    raw = encoded([Start(id="1", model="m", created=CREATED), Delta(tool_calls=(ToolCallDelta(0, '{"a":', "c0", "f"),)),
                   Delta(tool_calls=(ToolCallDelta(1, '{"b": 2}', "c1", "g"),)),
                   Delta(tool_calls=(ToolCallDelta(0, " 1}"),)), Finish("tool_calls")])
    events = written_events(raw)
    late = [data for name, data in events if name == "response.function_call_arguments.delta"][-1]
    assert (late["output_index"], late["delta"]) == (0, " 1}")
    assert [item["arguments"] for item in events[-1][1]["response"]["output"]] == ['{"a": 1}', '{"b": 2}']
    assert seen(sdk_stream(raw)[1])["output"] == [("function_call", "completed", "c0", "f", '{"a": 1}'),
                                                  ("function_call", "completed", "c1", "g", '{"b": 2}')]
    # text after a call: a second message item
    raw = encoded([Start("A", id="2", model="m", created=CREATED),
                   Delta(tool_calls=(ToolCallDelta(0, "{}", "c", "f"),)), Delta("B"), Finish("stop")])
    assert [item["id"] for item in written_events(raw)[-1][1]["response"]["output"]] == ["msg_2_0", "fc_2_1", "msg_2_2"]
    assert sdk_stream(raw)[1].output_text == "AB"


async def test_the_async_client_reads_a_stream_created_with_stream_true():
    raw = encoded([Start(id="chatcmpl-4", model="m", created=CREATED), Delta("Hi"), Finish("stop")], Usage(1, 1))
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=raw)))
    client = openai.AsyncOpenAI(api_key="key", base_url="http://gateway.test/v1", http_client=http, max_retries=0)
    async with http:
        stream = await client.responses.create(model="alias", input="Hi", stream=True)
        events = [event async for event in stream]
        async with client.responses.stream(model="alias", input="Hi") as stream:
            final = await stream.get_final_response()
    assert [event.type for event in events][-1] == "response.completed"
    assert events[-1].response.output_text == "Hi"
    assert (final.output_text, final.usage.total_tokens) == ("Hi", 2)


# --- recorded Responses streams: read as neutral events and written again ---------------------

@pytest.mark.parametrize("name", ["text_stream.sse", "function_call_stream.sse"])
def test_a_recorded_stream_reads_the_same_through_the_gateway(name):
    recorded = fixture_events(name)
    events, usage = neutral_of(recorded)
    raw = encoded(events, usage, {"model": "alias"})
    written = written_events(raw)
    # the same events in the same order and numbering, the same indexes, deltas, parts and items
    assert shape(written) == shape(recorded)
    _, direct = sdk_stream(fixture_bytes(name))
    _, translated = sdk_stream(raw)
    assert seen(translated) == seen(direct)


def test_the_recorded_text_stream_as_the_client_reads_it():
    _, response = sdk_stream(encoded(*neutral_of(fixture_events("text_stream.sse"))))
    assert seen(response) == {
        "id": "resp_68c0ad6493cc8190a0e8c76c5184504b0c149fc0da51351e", "model": "gpt-4o-2024-08-06",
        "created_at": 1757457764, "status": "completed", "incomplete": None,
        "output": [("message", "completed", [("output_text", "Hey! Not much, just here to help. What about you?")])],
        "output_text": "Hey! Not much, just here to help. What about you?", "usage": (305, 0, 16, 321),
    }


def test_a_recorded_failure_and_the_gateways_read_alike():
    recorded = fixture_events("error_stream.sse")
    assert [name for name, _ in recorded] == ["response.created", "response.in_progress", "error", "response.failed"]
    encoder = StreamEncoder({"model": "alias"})
    start = recorded[0][1]["response"]
    raw = (encoder.encode(Start(id=start["id"], model=start["model"], created=start["created_at"]))
           + stream_error(UpstreamError(FailureClass.RATE_LIMIT, "You exceeded your current quota"), encoder))
    written = written_events(raw)
    assert [name for name, _ in written] == [name for name, _ in recorded]
    # OpenAI's live `error` event nests its fields in `error`; the SDK raises it as an APIError
    for stream, message in ((fixture_bytes("error_stream.sse"), recorded[2][1]["error"]["message"]),
                            (raw, "the upstream stream failed: You exceeded your current quota")):
        with pytest.raises(openai.APIError) as caught:
            sdk_stream(stream)
        assert caught.value.message == message
    assert written[3][1]["response"]["error"] == {
        "code": "rate_limit_exceeded", "message": "the upstream stream failed: You exceeded your current quota"}
    assert written[3][1]["response"]["id"] == start["id"]


# hypothesis: any neutral stream becomes one the SDK reads back as the same answer
SEGMENTS = st.lists(st.one_of(
    st.tuples(st.just("reasoning"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("text"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("function_call"), st.sampled_from(["get_weather", "now"]),
              st.dictionaries(st.sampled_from(["a", "b", "ünï"]),
                              st.one_of(st.integers(-2**53, 2**53), st.text(max_size=5), st.booleans()), max_size=3)),
), max_size=6)


@settings(max_examples=150, deadline=None)
@given(SEGMENTS, st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]),
       st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(0, 10_000))), st.data())
def test_any_neutral_stream_reads_back_as_the_same_answer(segments, finish, counts, data):
    events: list = [Start(id="chatcmpl-x", model="m", created=CREATED)]
    expected: list = []
    calls = 0
    for segment in segments:
        if segment[0] == "function_call":
            arguments = orjson.dumps(segment[2]).decode()
            first, *rest = pieces_of(data, arguments)
            events.append(Delta(tool_calls=(ToolCallDelta(calls, first, f"call_{calls}", segment[1]),)))
            events += [Delta(tool_calls=(ToolCallDelta(calls, piece),)) for piece in rest]
            expected.append(["function_call", "completed", f"call_{calls}", segment[1], arguments])
            calls += 1
            continue
        kind, text = segment
        events += [Delta(**{kind: piece}) for piece in pieces_of(data, text)]
        if expected and expected[-1][0] == ("message" if kind == "text" else kind):  # that item is still open
            expected[-1][-1] += text
        else:
            expected.append(["message" if kind == "text" else "reasoning", "completed", text])
    if finish is not None:
        events.append(Finish(finish))
    cut = finish in ("length", "content_filter")
    if cut and expected:
        expected[-1][1] = "incomplete"  # the item the answer was cut in
    usage = None if counts is None else Usage(counts[0], counts[1], data.draw(st.integers(0, counts[0])))
    raw = encoded(events, usage)
    names = [name for name, _ in written_events(raw)]
    assert names.count("response.output_item.added") == names.count("response.output_item.done") == len(expected)
    assert names[-1] == ("response.incomplete" if cut else "response.completed")
    _, response = sdk_stream(raw)
    read = []
    for item in response.output:
        if item.type == "message":
            read.append(["message", item.status, "".join(part.text for part in item.content)])
        elif item.type == "function_call":
            read.append(["function_call", item.status, item.call_id, item.name, item.arguments])
        else:
            read.append(["reasoning", item.status, "".join(part.text for part in item.content)])
    assert read == expected
    assert response.status == ("incomplete" if cut else "completed")
    assert seen(response)["usage"] == (None if usage is None else (
        usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
        usage.prompt_tokens + usage.completion_tokens))


# === errors ===================================================================================

@pytest.mark.parametrize("kind", sorted(ERROR_KINDS) + ["a_kind_added_later"])
def test_error_body_is_openais(kind):
    assert error_body("model 'x' is not served here", kind, "model_not_found", "model") == openai_codec.error_body(
        "model 'x' is not served here", kind, "model_not_found", "model")


def test_the_sdk_reads_an_error_body():
    body = error_body("previous_response_id needs state this deployment does not keep", "invalid_request",
                      "unsupported_parameter", "previous_response_id")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_create(body, status=400)
    assert (caught.value.code, caught.value.param, caught.value.type) == (
        "unsupported_parameter", "previous_response_id", "invalid_request_error")


def test_upstream_error_body():
    raw = (b'{"error":{"message":"Item with id \'rs_1\' not found.","type":"invalid_request_error",'
           b'"param":"input","code":null}}')
    from_responses = UpstreamError(FailureClass.CLIENT, "Item with id 'rs_1' not found.", status=404, body=raw,
                                   body_format=WireFormat.RESPONSES)
    assert upstream_error_body(from_responses) is raw  # as it came
    from_anthropic = UpstreamError(FailureClass.CLIENT, "prompt is too long", status=400, kind="invalid_request",
                                   body=b'{"type":"error"}', body_format=WireFormat.ANTHROPIC)
    assert orjson.loads(upstream_error_body(from_anthropic)) == {"error": {
        "message": "prompt is too long", "type": "invalid_request_error", "code": None, "param": None}}
    assert orjson.loads(upstream_error_body(UpstreamError(FailureClass.RATE_LIMIT, "slow down", status=429,
                                                          code="rate_limit_exceeded"))) == {"error": {
        "message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded", "param": None}}


@pytest.mark.parametrize(("failure", "code", "type_"), [
    (FailureClass.RATE_LIMIT, "rate_limit_exceeded", "rate_limit_error"),
    (FailureClass.OVERLOADED, "server_error", "server_error"), (FailureClass.SERVER, "server_error", "server_error"),
    (FailureClass.TIMEOUT, "server_error", "server_error"), (FailureClass.PROTOCOL, "server_error", "server_error"),
    (FailureClass.CONNECT, "server_error", "server_error"),
])
def test_stream_error_without_the_encoder(failure, code, type_):
    events = written_events(stream_error(UpstreamError(failure, "Overloaded")))
    message = "the upstream stream failed: Overloaded"
    assert events[0] == ("error", {"type": "error", "sequence_number": 0, "code": code, "message": message,
                                   "param": None, "error": {"type": type_, "code": code, "message": message,
                                                            "param": None}})
    failed = events[1][1]["response"]
    assert events[1][0] == "response.failed" and len(events) == 2
    assert (failed["status"], failed["error"], failed["output"], failed["usage"]) == (
        "failed", {"code": code, "message": message}, [], None)


def test_stream_error_goes_on_from_the_stream():
    encoder = StreamEncoder({"model": "alias"})
    raw = encoder.encode(Start("Partial", id="chatcmpl-1", model="m", created=CREATED))
    raw += encoder.encode(Delta(tool_calls=(ToolCallDelta(0, '{"a":', "c0", "f"),)))
    failure = stream_error(UpstreamError(FailureClass.SERVER, "reset"), encoder)
    events = written_events(failure, first=len(written_events(raw)))
    assert [name for name, _ in events] == ["error", "response.failed"]  # no item is done, nothing completes
    failed = events[1][1]["response"]
    assert failed["id"] == "resp_chatcmpl-1"
    assert [(item["type"], item["status"]) for item in failed["output"]] == [("message", "completed"),
                                                                             ("function_call", "incomplete")]
    assert failed["output"][1]["arguments"] == '{"a":'
    with pytest.raises(openai.APIError) as caught:
        sdk_stream(raw + failure)
    assert caught.value.message == "the upstream stream failed: reset"
