"""The Anthropic adapter: literal translation fixtures, then the adapter against a real server."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from gatewayd.adapters.anthropic import AnthropicAdapter
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import (
    Backoff,
    CooldownPolicy,
    Deployment,
    Policy,
    Provider,
    RetryPolicy,
    Secret,
    Timeouts,
)
from gatewayd.daemon.formats.anthropic import StreamDecoder, decode_answer, decode_error, encode_chat
from gatewayd.daemon.formats.openai import DONE_EVENT, decode_chat
from tests.wire import (
    answer_json,
    chat_request,
    embeddings_request,
    error_bytes,
    error_json,
    relayed,
    reply_bytes,
    reply_json,
    sse_events,
    stream_request,
)

MODEL = "claude-haiku-4-5"
KEY = "sk-ant-canary-123456"
CREATED = 1700000000


def to_upstream(body: dict, model: str) -> bytes:
    """An OpenAI client's chat body as the Anthropic request the adapter sends."""
    return encode_chat(decode_chat(body), model)


def up(body: dict) -> dict:
    return orjson.loads(to_upstream(body, MODEL))


def client_error_of(body: dict) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        to_upstream(body, MODEL)
    error = caught.value
    assert error.failure is FailureClass.CLIENT and error.status == 400
    assert error_json(error)["error"]["type"] == "invalid_request_error"
    return error


# --- request ---------------------------------------------------------------------------------

def test_minimal_request_gets_the_default_max_tokens():
    assert up({"model": "alias", "messages": [{"role": "user", "content": "Hi"}]}) == {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096,
    }


def test_system_messages_are_hoisted_and_joined():
    body = {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "developer", "content": "Never apologise."},
        {"role": "user", "content": "Again"},
    ]}
    assert up(body) == {
        "model": MODEL,
        "system": "You are terse.\n\nAnswer in French.\n\nNever apologise.",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello"}, {"type": "text", "text": "Again"},
        ]}],
        "max_tokens": 4096,
    }


def test_multi_turn_merges_consecutive_same_role_messages():
    body = {"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}], "name": "bot"},
        {"role": "user", "content": "five"},
        {"role": "assistant", "content": "six"},
    ]}
    assert up(body)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"},
        {"role": "assistant", "content": "six"},
    ]


def test_images_data_url_and_http_url():
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]}
    assert up(body)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]


@pytest.mark.parametrize("url", ["data:image/png,notbase64", "ftp://example.com/a.png", "file:///etc/passwd"])
def test_unusable_image_urls_are_client_errors(url):
    client_error_of({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})


def test_unsupported_content_parts_and_roles_are_client_errors():
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    assert "input_audio" in client_error_of({"messages": [{"role": "user", "content": [audio]}]}).message
    client_error_of({"messages": [{"role": "function", "name": "f", "content": "x"}]})
    client_error_of({"messages": []})
    client_error_of({"messages": [{"role": "user", "content": "x"}], "n": 2})


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }},
    {"type": "function", "function": {"name": "now"}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "now", "input_schema": {"type": "object", "properties": {}}},
]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    (None, None, None),
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "now"}}, False,
     {"type": "tool", "name": "now", "disable_parallel_tool_use": True}),
    ("auto", True, {"type": "auto"}),
])
def test_tools_and_tool_choice(choice, parallel, expected):
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = up(body)
    assert out["tools"] == ANTHROPIC_TOOLS
    assert out.get("tool_choice") == expected


def test_bad_tools_and_tool_choice_are_client_errors():
    messages = [{"role": "user", "content": "x"}]
    client_error_of({"messages": messages, "tools": [{"type": "code_interpreter"}]})
    client_error_of({"messages": messages, "tools": TOOLS, "tool_choice": "sometimes"})


def test_tool_calls_in_history_and_tool_results():
    body = {"messages": [
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
    ]}
    assert up(body)["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C, snow"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "18 C, sun"}]},
            {"type": "text", "text": "Which is warmer?"},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_3", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3", "content": "12:00"}]},
    ]


@pytest.mark.parametrize("arguments", ['{"city": "Oslo"', "[1, 2]", "not json"])
def test_invalid_tool_call_arguments_are_a_400(arguments):
    body = {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
    ]}
    error = client_error_of(body)
    assert error_json(error)["error"]["message"].startswith("messages[1]")


def test_tool_ids_are_required_and_empty_tool_results_have_no_content():
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    client_error_of({"messages": [{"role": "assistant", "tool_calls": [call]}]})
    client_error_of({"messages": [{"role": "tool", "content": "x"}]})
    body = {"messages": [{"role": "assistant", "tool_calls": [{**call, "id": "c"}]},
                         {"role": "tool", "tool_call_id": "c", "content": ""}]}
    assert up(body)["messages"][1] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c"}]}


def test_sampling_stop_user_and_dropped_fields():
    body = {
        "model": "alias", "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "stream": True,
        "user": "user-42", "n": 1, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logprobs": True,
        "top_logprobs": 2, "logit_bias": {"1": 2}, "response_format": {"type": "json_object"}, "seed": 7,
        "stream_options": {"include_usage": True}, "store": True, "metadata": {"a": "b"},
    }
    assert up(body) == {
        "model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 100,
        "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"], "stream": True,
        "metadata": {"user_id": "user-42"},
    }


def test_stop_list_and_max_completion_tokens():
    body = {"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"],
            "max_tokens": 10, "max_completion_tokens": 20, "stream": False}
    assert up(body) == {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                        "max_tokens": 20, "stop_sequences": ["a", "b"]}


# --- answer ----------------------------------------------------------------------------------

MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me check "},
        {"type": "text", "text": "the weather."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"city": "Oslo", "unit": "celsius"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300,
              "output_tokens": 42, "service_tier": "standard"},
}


def test_from_upstream_text_tool_use_and_cache_usage():
    assert answer_json(decode_answer(MESSAGE, created=CREATED)) == {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "object": "chat.completion", "created": CREATED,
        "model": "claude-haiku-4-5-20251001",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
            "role": "assistant", "content": "Let me check the weather.",
            "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Oslo","unit":"celsius"}'}}],
        }}],
        "usage": {"prompt_tokens": 420, "completion_tokens": 42, "total_tokens": 462,
                  "prompt_tokens_details": {"cached_tokens": 300}},
    }


def test_from_upstream_tool_calls_only_has_null_content():
    payload = {**MESSAGE, "content": [MESSAGE["content"][3]], "usage": {"input_tokens": 5, "output_tokens": 6}}
    answer = answer_json(decode_answer(payload))
    assert answer["choices"][0]["message"]["content"] is None
    assert len(answer["choices"][0]["message"]["tool_calls"]) == 1
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert isinstance(answer["created"], int)


def test_from_upstream_empty_content_is_an_empty_string():
    answer = answer_json(decode_answer({**MESSAGE, "content": [], "stop_reason": "max_tokens"}))
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("pause_turn", "stop"), ("refusal", "content_filter"),
    ("model_context_window_exceeded", "length"), ("something_new", "stop"), (None, "stop"),
])
def test_every_stop_reason(stop_reason, finish_reason):
    payload = {**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    assert answer_json(decode_answer(payload))["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize("payload", [
    [], {"type": "message"}, {"type": "error", "error": {"type": "api_error", "message": "boom"}},
])
def test_from_upstream_malformed_is_protocol(payload):
    with pytest.raises(UpstreamError) as caught:
        decode_answer(payload)
    assert caught.value.failure is FailureClass.PROTOCOL


@pytest.mark.parametrize(("status", "type_", "failure", "openai_type", "code"), [
    (400, "invalid_request_error", FailureClass.CLIENT, "invalid_request_error", None),
    (401, "authentication_error", FailureClass.AUTH, "authentication_error", "invalid_api_key"),
    (402, "billing_error", FailureClass.AUTH, "billing_error", None),
    (403, "permission_error", FailureClass.AUTH, "permission_error", None),
    (404, "not_found_error", FailureClass.NOT_FOUND, "invalid_request_error", "model_not_found"),
    (413, "request_too_large", FailureClass.CLIENT, "invalid_request_error", "request_too_large"),
    (429, "rate_limit_error", FailureClass.RATE_LIMIT, "rate_limit_error", "rate_limit_exceeded"),
    (500, "api_error", FailureClass.SERVER, "server_error", None),
    (504, "timeout_error", FailureClass.SERVER, "server_error", "timeout"),
    (529, "overloaded_error", FailureClass.OVERLOADED, "server_error", "overloaded"),
])
def test_error_body_per_type(status, type_, failure, openai_type, code):
    payload = {"type": "error", "error": {"type": type_, "message": f"about {type_}"},
               "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    error = decode_error(status, payload, 3.0)
    assert (error.failure, error.status, error.retry_after) == (failure, status, 3.0)
    assert error.message == f"about {type_}"
    assert error_json(error) == {"error": {
        "message": f"about {type_}", "type": openai_type, "param": None, "code": code}}


def test_error_without_an_anthropic_body_is_classified_by_status():
    error = decode_error(413, None)
    assert error.failure is FailureClass.CLIENT
    assert error_json(error)["error"]["message"] == "upstream answered HTTP 413"
    assert decode_error(503, {"error": "nope"}).failure is FailureClass.OVERLOADED
    assert decode_error(418, {"type": "error", "error": {"type": "teapot_error"}}).failure is FailureClass.CLIENT


# --- stream ----------------------------------------------------------------------------------

STREAM = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 8,
                  "output_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Okay, let's check"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": " the weather."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": " \"San Fra"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": "ncisco, CA\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_02", "name": "now", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
]


def chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk", "created": CREATED,
            "model": "claude-haiku-4-5-20251001",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


EXPECTED_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Okay, let's check"}),
    chunk({"content": " the weather."}),
    chunk({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Fra"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ncisco, CA\"}"}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function",
                           "function": {"name": "now", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
]


def feed_all(translator: StreamDecoder, events, body: dict | None = None) -> list[bytes]:
    """The events as an OpenAI client receives them, the end included once the stream is done."""
    out = []
    for name, data in events:
        out += translator.feed(name.encode(), orjson.dumps(data))
    return sse_events(out, body, usage=translator.usage, ended=translator.done)


def test_recorded_stream_becomes_exact_openai_chunks():
    translator = StreamDecoder(created=CREATED)
    out = feed_all(translator, STREAM)
    assert out[-1] == DONE_EVENT
    assert [orjson.loads(event.removeprefix(b"data: ")) for event in out[:-1]] == EXPECTED_CHUNKS
    assert all(event.startswith(b"data: {") and event.endswith(b"\n\n") for event in out[:-1])
    assert translator.done
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (480, 89)
    assert translator.feed(b"message_stop", b'{"type":"message_stop"}') == []


def test_stream_include_usage_adds_a_final_usage_chunk():
    translator = StreamDecoder(created=CREATED)
    out = feed_all(translator, STREAM, {"stream_options": {"include_usage": True}})
    assert out[-1] == DONE_EVENT
    assert orjson.loads(out[-2].removeprefix(b"data: ")) == {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk", "created": CREATED,
        "model": "claude-haiku-4-5-20251001", "choices": [],
        "usage": {"prompt_tokens": 480, "completion_tokens": 89, "total_tokens": 569,
                  "prompt_tokens_details": {"cached_tokens": 8}},
    }


def test_stream_event_type_comes_from_data_when_the_event_line_is_missing():
    translator = StreamDecoder(created=CREATED)
    started = sse_events(translator.feed(b"", orjson.dumps(STREAM[0][1])), ended=False)
    assert [orjson.loads(event.removeprefix(b"data: ")) for event in started] == [EXPECTED_CHUNKS[0]]
    assert translator.feed(b"", b'{"type":"some_future_event"}') == []


def test_stream_thinking_and_server_tool_blocks_are_skipped():
    translator = StreamDecoder(created=CREATED)
    events = [
        STREAM[0],
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Let me think"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"query\": \"x\"}"}}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "text_delta", "text": "Done."}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "refusal"},
                           "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    out = feed_all(translator, events)
    assert [orjson.loads(e.removeprefix(b"data: ")) for e in out[:-1]] == [
        EXPECTED_CHUNKS[0], chunk({"content": "Done."}), chunk({}, "content_filter")]
    assert out[-1] == DONE_EVENT


@pytest.mark.parametrize(("type_", "failure"), [
    ("overloaded_error", FailureClass.OVERLOADED),
    ("api_error", FailureClass.SERVER),
    ("invalid_request_error", FailureClass.PROTOCOL),
])
def test_in_band_error_mid_stream(type_, failure):
    translator = StreamDecoder(created=CREATED)
    feed_all(translator, STREAM[:4])
    with pytest.raises(UpstreamError) as caught:
        translator.feed(b"error", orjson.dumps({"type": "error", "error": {"type": type_, "message": "Overloaded"}}))
    assert caught.value.failure is failure
    assert caught.value.message == "Overloaded"
    assert not translator.done


@pytest.mark.parametrize("data", [
    b"{not json", b"[1]",
    b'{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":"{"}}',
    b'{"type":"message_start"}',
])
def test_malformed_stream_events_are_protocol_errors(data):
    translator = StreamDecoder(created=CREATED)
    with pytest.raises(UpstreamError) as caught:
        translator.feed(b"x", data)
    assert caught.value.failure is FailureClass.PROTOCOL


# --- the adapter against a real server --------------------------------------------------------

def make_deployment(server, options=None) -> Deployment:
    provider = Provider(
        name="a", type="anthropic", base_url=str(server.make_url("")).rstrip("/"), api_key=Secret(KEY),
        headers=(), max_connections=10, options=options or {},
    )
    policy = Policy(Timeouts(5, 5, 5, 30), RetryPolicy(1, Backoff(0.01, 0.1, 2, "full"), frozenset(), False, False, 30),
                    CooldownPolicy(3, 30, 2, 600))
    return Deployment(name="claude", provider=provider, model=MODEL, policy=policy)


@pytest.fixture
def upstream(aiohttp_server):
    """Start a fake Anthropic API answering with `handler`; records what it was sent."""
    seen: list[dict] = []

    async def start(handler):
        async def record(request: web.Request):
            seen.append({"path": request.path, "headers": dict(request.headers), "body": await request.json()})
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return await aiohttp_server(app)

    start.seen = seen
    return start


def sse(events) -> bytes:
    return b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events)


async def test_chat_sends_anthropic_wire_format(upstream):
    async def handler(request):
        return web.json_response(MESSAGE)

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        reply = await adapter.chat(deployment, chat_request({"model": "alias", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]}))
    finally:
        await adapter.close()
    seen = upstream.seen[0]
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == KEY
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in seen["headers"]
    assert seen["body"] == {"model": MODEL, "system": "Be brief.",
                            "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 4096}
    answer = reply_json(reply)
    expected = answer_json(decode_answer(MESSAGE, created=answer["created"]))
    assert answer == expected
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (420, 42)


async def test_anthropic_version_option(upstream):
    async def handler(request):
        return web.json_response(MESSAGE)

    server = await upstream(handler)
    deployment = make_deployment(server, {"anthropic_version": "2024-10-22"})
    adapter = AnthropicAdapter(deployment.provider)
    try:
        await adapter.chat(deployment, chat_request({"messages": [{"role": "user", "content": "x"}]}))
    finally:
        await adapter.close()
    assert upstream.seen[0]["headers"]["anthropic-version"] == "2024-10-22"


async def test_stream_over_sse(upstream):
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        payload = sse(STREAM)
        for i in range(0, len(payload), 97):  # arbitrary cuts, as TCP would
            await response.write(payload[i:i + 97])
        await response.write_eof()
        return response

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS,
                "stream_options": {"include_usage": True}}
        stream = await adapter.stream(deployment, stream_request(body))
        try:
            events = await relayed(stream, body)
        finally:
            await stream.aclose()
    finally:
        await adapter.close()
    assert upstream.seen[0]["body"]["stream"] is True
    assert "stream_options" not in upstream.seen[0]["body"]
    assert events[-1] == DONE_EVENT
    chunks = [orjson.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    created = chunks[0]["created"]
    assert chunks[:-1] == [{**c, "created": created} for c in EXPECTED_CHUNKS]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 569
    assert stream.done
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (480, 89)


async def test_stream_cut_before_message_stop_is_not_done(upstream):
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(STREAM[:5]))
        await response.write_eof()
        return response

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        stream = await adapter.stream(deployment, stream_request({"messages": [{"role": "user", "content": "x"}]}))
        try:
            events = await relayed(stream)
        finally:
            await stream.aclose()
    finally:
        await adapter.close()
    assert len(events) == 3 and DONE_EVENT not in events
    assert not stream.done


async def test_stream_in_band_error(upstream):
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        await response.write(sse([*STREAM[:4], ("error", error)]))
        await response.write_eof()
        return response

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    events = []
    try:
        stream = await adapter.stream(deployment, stream_request({"messages": [{"role": "user", "content": "x"}]}))
        try:
            with pytest.raises(UpstreamError) as caught:
                async for event in stream:
                    events.append(event)
        finally:
            await stream.aclose()
    finally:
        await adapter.close()
    assert caught.value.failure is FailureClass.OVERLOADED
    assert len(events) == 2


async def test_stream_without_event_stream_content_type_is_protocol(upstream):
    async def handler(request):
        return web.json_response(MESSAGE)

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        with pytest.raises(UpstreamError) as caught:
            await adapter.stream(deployment, stream_request({"messages": [{"role": "user", "content": "x"}]}))
    finally:
        await adapter.close()
    assert caught.value.failure is FailureClass.PROTOCOL


def error_handler(status: int, type_: str, message: str, headers=None):
    async def handler(request):
        body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}
        return web.json_response(body, status=status, headers=headers)
    return handler


async def call_failing(upstream, handler) -> UpstreamError:
    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        with pytest.raises(UpstreamError) as caught:
            await adapter.chat(deployment, chat_request({"messages": [{"role": "user", "content": "x"}]}))
    finally:
        await adapter.close()
    return caught.value


async def test_529_overloaded(upstream):
    error = await call_failing(upstream, error_handler(529, "overloaded_error", "Overloaded"))
    assert (error.failure, error.status, error.message) == (FailureClass.OVERLOADED, 529, "Overloaded")


async def test_429_retry_after(upstream):
    handler = error_handler(429, "rate_limit_error", "Number of request tokens has exceeded your limit",
                            {"Retry-After": "7"})
    error = await call_failing(upstream, handler)
    assert (error.failure, error.status, error.retry_after) == (FailureClass.RATE_LIMIT, 429, 7.0)


async def test_400_is_a_client_error_with_an_openai_body(upstream):
    error = await call_failing(upstream, error_handler(400, "invalid_request_error", "max_tokens: too big"))
    assert (error.failure, error.status) == (FailureClass.CLIENT, 400)
    assert error_json(error) == {"error": {
        "message": "max_tokens: too big", "type": "invalid_request_error", "param": None, "code": None}}


async def test_echoed_key_never_leaks(upstream):
    error = await call_failing(upstream, error_handler(401, "authentication_error", f"invalid x-api-key {KEY}"))
    assert error.failure is FailureClass.AUTH
    assert KEY not in error.message and KEY.encode() not in error_bytes(error) and KEY not in error.describe()
    assert KEY.encode() not in error.body  # what an Anthropic client would be told
    assert "[redacted]" in error.message


async def test_echoed_key_in_a_200_answer_is_scrubbed(upstream):
    async def handler(request):
        return web.json_response({**MESSAGE, "content": [{"type": "text", "text": f"your key is {KEY}"}]})

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        reply = await adapter.chat(deployment, chat_request({"messages": [{"role": "user", "content": "x"}]}))
    finally:
        await adapter.close()
    assert KEY.encode() not in reply_bytes(reply)


async def test_invalid_request_never_reaches_upstream(upstream):
    async def handler(request):
        raise AssertionError("must not be called")

    server = await upstream(handler)
    deployment = make_deployment(server)
    adapter = AnthropicAdapter(deployment.provider)
    try:
        with pytest.raises(UpstreamError) as caught:
            await adapter.chat(deployment, chat_request({"messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}]}))
        with pytest.raises(UpstreamError) as no_embeddings:
            await adapter.embeddings(deployment, embeddings_request({"input": "x"}))
    finally:
        await adapter.close()
    assert caught.value.failure is FailureClass.CLIENT and caught.value.status == 400
    assert upstream.seen == []
    assert no_embeddings.value.failure is FailureClass.CLIENT and no_embeddings.value.status == 400
    assert error_json(no_embeddings.value)["error"]["code"] == "unsupported_operation"
    assert AnthropicAdapter.capabilities == frozenset({"chat", "stream"})
