"""The Ollama adapter: translation fixtures both ways, and the adapter against a
real aiohttp server on 127.0.0.1 speaking Ollama's native wire format."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from aiohttp import web

from gatewayd.adapters.ollama import (
    OllamaAdapter,
    OllamaStreamTranslator,
    embed_from_upstream,
    encode_chat,
    encode_embed,
    from_upstream,
)
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
from gatewayd.daemon.formats.openai import DONE_EVENT, decode_chat, decode_embed, encode_embeddings
from tests.wire import (
    answer_json,
    chat_request,
    embeddings_request,
    error_json,
    relayed,
    reply_json,
    sse_events,
    stream_request,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
            "required": ["location", "format"],
        },
    },
}



def embed_to_upstream(body: dict, model: str) -> bytes:
    """An OpenAI client's embeddings body as the Ollama request the adapter sends."""
    return encode_embed(decode_embed(body), model)


def to_upstream(body: dict, model: str) -> bytes:
    """An OpenAI client's chat body as the Ollama request the adapter sends."""
    return encode_chat(decode_chat(body), model)

def upstream(body: dict, model: str = "llama3.1:8b") -> dict:
    return orjson.loads(to_upstream(body, model))


def ids_normalised(chunks: list[dict]) -> list[dict]:
    """Tool call ids are random: check their shape, then pin them for comparison."""
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                assert call["id"].startswith("call_") and len(call["id"]) > 10
                call["id"] = "call_X"
    return chunks


# -- requests ----------------------------------------------------------------

def test_options_mapping_and_dropped_fields():
    body = {
        "model": "llama",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": "\n\n", "max_tokens": 64,
        "presence_penalty": 0.5, "frequency_penalty": 0.3,
        "n": 1, "user": "u-1", "tool_choice": "auto", "logit_bias": {"1": 2},
    }
    assert upstream(body) == {
        "model": "llama3.1:8b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": False,
        "options": {"temperature": 0.2, "top_p": 0.9, "seed": 7, "presence_penalty": 0.5,
                    "frequency_penalty": 0.3, "num_predict": 64, "stop": ["\n\n"]},
    }


def test_max_completion_tokens_stop_list_stream_and_extensions():
    body = {
        "model": "llama", "messages": [{"role": "developer", "content": "Rules."}],
        "max_tokens": 10, "max_completion_tokens": 20, "stop": ["END", "###"], "stream": True,
        "options": {"num_ctx": 8192, "temperature": 1.0}, "temperature": 0,
        "keep_alive": "10m", "think": False,
    }
    assert upstream(body) == {
        "model": "llama3.1:8b",
        "messages": [{"role": "system", "content": "Rules."}],
        "stream": True,
        "options": {"num_ctx": 8192, "temperature": 0, "num_predict": 20, "stop": ["END", "###"]},
        "keep_alive": "10m", "think": False,
    }


def test_content_parts_and_data_url_images():
    body = {"model": "llava", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "Answer briefly."},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%21"}},
    ]}]}
    assert upstream(body, "llava:7b")["messages"] == [{
        "role": "user",
        "content": "What is in this picture?\nAnswer briefly.",
        "images": ["iVBORw0KGgo=", "aGkh"],
    }]


def test_remote_image_url_is_a_client_error():
    body = {"model": "llava", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    with pytest.raises(UpstreamError) as info:
        to_upstream(body, "llava:7b")
    assert info.value.failure is FailureClass.CLIENT and info.value.status == 400
    error = error_json(info.value)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert "data: URL" in error["message"]


def test_tools_tool_calls_and_tool_results():
    body = {
        "model": "llama",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "What is the weather today in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_abc", "type": "function",
                "function": {"name": "get_current_weather",
                             "arguments": "{\"location\": \"Paris, FR\", \"format\": \"celsius\"}"},
            }]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "22 degrees"},
        ],
    }
    assert upstream(body) == {
        "model": "llama3.1:8b",
        "messages": [
            {"role": "user", "content": "What is the weather today in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {
                "name": "get_current_weather",
                "arguments": {"location": "Paris, FR", "format": "celsius"}}}]},
            {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"},
        ],
        "stream": False,
        "tools": [WEATHER_TOOL],
    }


def test_tool_call_arguments_that_are_not_an_object_are_refused():
    body = {"model": "llama", "messages": [{"role": "assistant", "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}]}]}
    with pytest.raises(UpstreamError) as info:
        to_upstream(body, "llama3.1:8b")
    assert info.value.failure is FailureClass.CLIENT


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "person", "schema": {
        "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}},
     {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}),
    ({"type": "text"}, None),
])
def test_response_format(response_format, expected):
    body = {"model": "llama", "messages": [], "response_format": response_format}
    assert upstream(body).get("format") == expected


# -- answers -----------------------------------------------------------------

def test_plain_answer():
    payload = {
        "model": "llama3.1:8b", "created_at": "2024-12-06T00:46:58.265747Z",
        "message": {"role": "assistant", "content": "Hello! How are you today?"},
        "done_reason": "stop", "done": True, "total_duration": 5191566416,
        "load_duration": 2154458, "prompt_eval_count": 26, "prompt_eval_duration": 383809000,
        "eval_count": 298, "eval_duration": 4799921000,
    }
    answer = answer_json(from_upstream(payload, "llama"))
    assert answer.pop("id").startswith("chatcmpl-")
    assert answer == {
        "object": "chat.completion", "created": 1733446018, "model": "llama",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello! How are you today?"}}],
        "usage": {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324},
    }


def test_answer_cut_by_length_with_nanosecond_offset_timestamp():
    payload = {"model": "llama3.1:8b", "created_at": "2023-08-04T08:52:19.385406455-07:00",
               "message": {"role": "assistant", "content": "The sky is"},
               "done_reason": "length", "done": True, "prompt_eval_count": 5, "eval_count": 3}
    answer = answer_json(from_upstream(payload, "llama"))
    assert answer["created"] == 1691164339
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_answer_with_tool_calls_and_thinking():
    payload = {
        "model": "llama3.1:8b", "created_at": "2024-07-22T20:33:28.123648456Z",
        "message": {"role": "assistant", "content": "", "thinking": "Need the weather.",
                    "tool_calls": [{"function": {"name": "get_current_weather",
                                                 "arguments": {"format": "celsius",
                                                               "location": "Paris, FR"}}}]},
        "done_reason": "stop", "done": True, "prompt_eval_count": 122, "eval_count": 33,
    }
    answer = answer_json(from_upstream(payload, "llama"))
    choice = answer["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert call.pop("id").startswith("call_")
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant", "content": None, "reasoning_content": "Need the weather.",
        "tool_calls": [{"type": "function", "function": {
            "name": "get_current_weather",
            "arguments": "{\"format\":\"celsius\",\"location\":\"Paris, FR\"}"}}],
    }
    assert answer["created"] == 1721680408


def test_missing_or_bad_timestamp_falls_back_to_now():
    import time
    answer = answer_json(from_upstream({"message": {"role": "assistant", "content": "x"}, "done": True}, "m"))
    assert abs(answer["created"] - time.time()) < 5
    assert answer["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_error_in_a_200_body_is_a_protocol_failure():
    with pytest.raises(UpstreamError) as info:
        from_upstream({"error": "unexpected server status"}, "llama")
    assert info.value.failure is FailureClass.PROTOCOL


# -- stream translation ------------------------------------------------------

STREAM = [
    (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.123648456Z",'
     b'"message":{"role":"assistant","content":"The"},"done":false}\n'),
    (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.2Z",'
     b'"message":{"role":"assistant","content":" sky"},"done":false}\n'),
    (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.3Z",'
     b'"message":{"role":"assistant","content":" is blue."},"done":false}\n'),
    (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.4Z",'
     b'"message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
     b'"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
     b'"prompt_eval_duration":342546000,"eval_count":4,"eval_duration":4535599000}\n'),
]


def expected_chunk(translator, delta, finish=None):
    return {"id": translator.id, "object": "chat.completion.chunk", "created": 1721680408,
            "model": "llama", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}


def chunks_of(translator: OllamaStreamTranslator, lines, body: dict | None = None) -> list[dict]:
    """The lines' events as the OpenAI chunks a client receives, [DONE] left out."""
    events = [event for line in lines for event in translator.feed(b"", line)]
    out = sse_events(events, body, usage=translator.usage, ended=translator.done)
    return [orjson.loads(event.removeprefix(b"data: ")) for event in out if event != DONE_EVENT]


def test_stream_translation_content_and_done():
    translator = OllamaStreamTranslator("llama")
    chunks = chunks_of(translator, STREAM)
    assert translator.id.startswith("chatcmpl-")
    assert chunks == [
        expected_chunk(translator, {"role": "assistant", "content": "The"}),
        expected_chunk(translator, {"content": " sky"}),
        expected_chunk(translator, {"content": " is blue."}),
        expected_chunk(translator, {}, "stop"),
    ]
    assert translator.done
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (26, 4)
    assert translator.feed(b"", b'{"model":"late"}\n') == []


def test_stream_usage_chunk_when_asked():
    translator = OllamaStreamTranslator("llama")
    chunks = chunks_of(translator, STREAM, {"stream_options": {"include_usage": True}})
    assert chunks[-1] == {
        "id": translator.id, "object": "chat.completion.chunk", "created": 1721680408,
        "model": "llama", "choices": [],
        "usage": {"prompt_tokens": 26, "completion_tokens": 4, "total_tokens": 30},
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_length_stop_and_blank_lines():
    translator = OllamaStreamTranslator("llama")
    assert translator.feed(b"", b"\n") == []
    chunks = chunks_of(translator, [b'{"created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant",'
                                    b'"content":"Hi"},"done":true,"done_reason":"length","eval_count":1}'])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]


def test_stream_tool_call():
    translator = OllamaStreamTranslator("llama")
    lines = [
        (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.123648Z","message":'
         b'{"role":"assistant","content":"","tool_calls":[{"function":'
         b'{"name":"get_current_weather",'
         b'"arguments":{"format":"celsius","location":"Paris, FR"}}}]},"done":false}\n'),
        (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.2Z","message":'
         b'{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_time",'
         b'"arguments":{}}}]},"done":false}\n'),
        (b'{"model":"llama3.1:8b","created_at":"2024-07-22T20:33:28.3Z","message":'
         b'{"role":"assistant","content":""},"done_reason":"stop","done":true,'
         b'"prompt_eval_count":122,"eval_count":33}\n'),
    ]
    chunks = ids_normalised(chunks_of(translator, lines))
    assert chunks == [
        expected_chunk(translator, {"role": "assistant", "content": "", "tool_calls": [{
            "index": 0, "id": "call_X", "type": "function",
            "function": {"name": "get_current_weather",
                         "arguments": "{\"format\":\"celsius\",\"location\":\"Paris, FR\"}"}}]}),
        expected_chunk(translator, {"tool_calls": [{
            "index": 1, "id": "call_X", "type": "function",
            "function": {"name": "get_time", "arguments": "{}"}}]}),
        expected_chunk(translator, {}, "tool_calls"),
    ]


def test_stream_in_band_error_before_and_after_output():
    with pytest.raises(UpstreamError) as info:
        OllamaStreamTranslator("llama").feed(b"", b'{"error":"llama runner process has terminated"}\n')
    assert info.value.failure is FailureClass.SERVER
    assert "llama runner process has terminated" in info.value.message
    translator = OllamaStreamTranslator("llama")
    translator.feed(b"", STREAM[0])
    with pytest.raises(UpstreamError) as info:
        translator.feed(b"", b'{"error":"an error was encountered while running the model"}\n')
    assert info.value.failure is FailureClass.PROTOCOL


@pytest.mark.parametrize("line", [b'{"model": "llama3.1:8b", "mess', b"[1, 2]", b"data: {}"])
def test_stream_malformed_line(line):
    with pytest.raises(UpstreamError) as info:
        OllamaStreamTranslator("llama").feed(b"", line)
    assert info.value.failure is FailureClass.PROTOCOL


# -- embeddings --------------------------------------------------------------

def test_embeddings_request():
    body = {"model": "e", "input": "Why is the sky blue?"}
    assert orjson.loads(embed_to_upstream(body, "all-minilm")) == {
        "model": "all-minilm", "input": "Why is the sky blue?", "truncate": True}
    body = {"model": "e", "input": ["a", "b"], "dimensions": 256, "encoding_format": "float"}
    assert orjson.loads(embed_to_upstream(body, "nomic-embed-text")) == {
        "model": "nomic-embed-text", "input": ["a", "b"], "truncate": True, "dimensions": 256}


@pytest.mark.parametrize("text", [[1, 2, 3], [[1, 2], [3]], [], None])
def test_embeddings_token_arrays_are_refused(text):
    with pytest.raises(UpstreamError) as info:
        embed_to_upstream({"model": "e", "input": text}, "all-minilm")
    assert info.value.failure is FailureClass.CLIENT and info.value.status == 400
    assert error_json(info.value)["error"]["param"] == "input"


def test_embeddings_answer():
    payload = {"model": "all-minilm", "embeddings": [[0.010071029, -0.0017594862], [0.5, -1.0]],
               "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8}
    assert orjson.loads(encode_embeddings(embed_from_upstream(payload, "embedder"), None)) == {
        "object": "list", "model": "embedder",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.010071029, -0.0017594862]},
                 {"object": "embedding", "index": 1, "embedding": [0.5, -1.0]}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    encoded = orjson.loads(encode_embeddings(embed_from_upstream(payload, "embedder"), "base64"))
    assert encoded["data"][1]["embedding"] == "AAAAPwAAgL8="


# -- the adapter against a real server ---------------------------------------

@pytest.fixture
def deployment():
    def build(server, api_key: str | None = None, headers: tuple = ()) -> Deployment:
        provider = Provider(name="local", type="ollama",
                            base_url=str(server.make_url("")).rstrip("/"),
                            api_key=Secret(api_key) if api_key else None, headers=headers,
                            max_connections=10, options={})
        return Deployment(name="llama", provider=provider, model="llama3.1:8b", policy=Policy(
            Timeouts(5, 5, 5, 30), RetryPolicy(1, Backoff(0.01, 0.1, 2, "full"), frozenset(),
                                               False, False, 30),
            CooldownPolicy(3, 30, 2, 600)))
    return build


def recording_server(seen: list, handler):
    async def record(request: web.Request):
        seen.append((request.path, dict(request.headers), await request.json()))
        return await handler(request)
    app = web.Application()
    app.router.add_post("/api/chat", record)
    app.router.add_post("/api/embed", record)
    return app


async def test_chat(aiohttp_server, deployment):
    seen: list = []

    async def answer(request):
        return web.json_response({
            "model": "llama3.1:8b", "created_at": "2024-12-12T14:13:43.416799Z",
            "message": {"role": "assistant", "content": "Hello! How are you today?"},
            "done_reason": "stop", "done": True, "prompt_eval_count": 26, "eval_count": 298})

    server = await aiohttp_server(recording_server(seen, answer))
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        reply = await adapter.chat(deployment(server), chat_request({
            "model": "llama", "messages": [{"role": "user", "content": "Hello!"}],
            "temperature": 0, "seed": 101}))
    finally:
        await adapter.close()
    path, headers, body = seen[0]
    assert path == "/api/chat" and "Authorization" not in headers
    assert body == {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hello!"}],
                    "stream": False, "options": {"temperature": 0, "seed": 101}}
    answer_ = reply_json(reply)
    assert answer_["choices"][0]["message"] == {"role": "assistant",
                                                "content": "Hello! How are you today?"}
    assert answer_["model"] == "llama" and answer_["created"] == 1734012823
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (26, 298)


async def test_stream(aiohttp_server, deployment):
    seen: list = []

    async def stream(request):
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        data = b"".join(STREAM)
        for start, end in ((0, 40), (40, 170), (170, 171), (171, 400), (400, len(data))):
            await response.write(data[start:end])
        return response

    server = await aiohttp_server(recording_server(seen, stream))
    adapter = OllamaAdapter(deployment(server, api_key="sk-proxy-0001").provider)
    try:
        asked = {"model": "llama", "messages": [{"role": "user", "content": "why is the sky blue?"}],
                 "stream": True, "stream_options": {"include_usage": True}}
        events = await adapter.stream(deployment(server), stream_request(asked))
        received = await relayed(events, asked)
        await events.aclose()
    finally:
        await adapter.close()
    path, headers, body = seen[0]
    assert path == "/api/chat" and headers["Authorization"] == "Bearer sk-proxy-0001"
    assert body["stream"] is True and "stream_options" not in body
    assert received[-1] == b"data: [DONE]\n\n"
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in received)
    chunks = [orjson.loads(event[6:]) for event in received[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) \
        == "The sky is blue."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 26, "completion_tokens": 4, "total_tokens": 30}
    assert events.done and (events.usage.prompt_tokens, events.usage.completion_tokens) == (26, 4)


async def test_stream_error_line_and_cut(aiohttp_server, deployment):
    async def stream(request):
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        await response.write(STREAM[0])
        if request.headers.get("X-Case") == "error":
            await response.write(b'{"error":"an error was encountered while running the model"}\n')
        return response

    server = await aiohttp_server(recording_server([], stream))
    for case, failure in (("error", FailureClass.PROTOCOL), ("cut", None)):
        adapter = OllamaAdapter(deployment(server, headers=(("X-Case", case),)).provider)
        try:
            events = await adapter.stream(deployment(server), stream_request({"model": "llama", "messages": []}))
            received = []
            if failure is None:
                received = [event async for event in events]
            else:
                with pytest.raises(UpstreamError) as info:
                    async for event in events:
                        received.append(event)
                assert info.value.failure is failure
            assert len(received) == 1 and not events.done
            await events.aclose()
        finally:
            await adapter.close()


async def test_a_stream_line_past_max_upstream_body_is_a_protocol_failure(aiohttp_server, deployment):
    limit = 64 * 1024

    async def stream(request):
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        await response.write(STREAM[0])
        await response.write(b'{"message": {"role": "assistant", "content": "' + b"x" * 4 * limit + b'"}}\n')
        return response

    server = await aiohttp_server(recording_server([], stream))
    provider = dataclasses.replace(deployment(server).provider, max_upstream_body=limit)
    adapter = OllamaAdapter(provider)
    try:
        events = await adapter.stream(deployment(server), stream_request({"model": "llama", "messages": []}))
        received = []
        with pytest.raises(UpstreamError) as info:
            async for event in events:
                received.append(event)
        await events.aclose()
    finally:
        await adapter.close()
    assert len(received) == 1  # the line within the bound went on
    assert info.value.failure is FailureClass.PROTOCOL and "max_upstream_body" in info.value.message


async def test_not_ndjson_is_a_protocol_failure(aiohttp_server, deployment):
    async def html(request):
        return web.Response(text="<html>proxy login</html>", content_type="text/html")

    server = await aiohttp_server(recording_server([], html))
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.stream(deployment(server), stream_request({"model": "llama", "messages": []}))
    finally:
        await adapter.close()
    assert info.value.failure is FailureClass.PROTOCOL


async def test_model_not_found(aiohttp_server, deployment):
    async def missing(request):
        return web.json_response({"error": "model 'llama3.1:8b' not found"}, status=404)

    server = await aiohttp_server(recording_server([], missing))
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.chat(deployment(server), chat_request({"model": "llama", "messages": []}))
    finally:
        await adapter.close()
    assert info.value.failure is FailureClass.NOT_FOUND and info.value.status == 404
    assert error_json(info.value) == {"error": {
        "message": "model 'llama3.1:8b' not found", "type": "invalid_request_error",
        "param": None, "code": "model_not_found"}}


async def test_server_error_rate_limit_and_scrubbing(aiohttp_server, deployment):
    async def broken(request):
        if request.path == "/api/embed":
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": "7"})
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response({"error": f"runner crashed (key {key})"}, status=500)

    server = await aiohttp_server(recording_server([], broken))
    adapter = OllamaAdapter(deployment(server, api_key="sk-secret-9999").provider)
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.chat(deployment(server), chat_request({"model": "llama", "messages": []}))
        assert info.value.failure is FailureClass.SERVER and info.value.status == 500
        error = error_json(info.value)["error"]
        assert error == {"message": "runner crashed (key [redacted])", "type": "server_error",
                         "param": None, "code": None}
        with pytest.raises(UpstreamError) as info:
            await adapter.embeddings(deployment(server), embeddings_request({"model": "e", "input": "x"}))
        assert info.value.failure is FailureClass.RATE_LIMIT and info.value.retry_after == 7
        assert error_json(info.value)["error"]["type"] == "rate_limit_error"
    finally:
        await adapter.close()


async def test_non_json_error_body(deployment, aiohttp_server):
    async def proxy(request):
        return web.Response(text="Bad Gateway", status=502)

    server = await aiohttp_server(recording_server([], proxy))
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.chat(deployment(server), chat_request({"model": "llama", "messages": []}))
    finally:
        await adapter.close()
    assert info.value.failure is FailureClass.SERVER
    assert error_json(info.value)["error"]["message"] == "upstream answered HTTP 502"


async def test_embeddings(aiohttp_server, deployment):
    seen: list = []

    async def embed(request):
        return web.json_response({"model": "all-minilm", "embeddings": [[0.1, 0.2], [0.3, 0.4]],
                                  "total_duration": 14143917, "prompt_eval_count": 12})

    server = await aiohttp_server(recording_server(seen, embed))
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        reply = await adapter.embeddings(deployment(server), embeddings_request({
            "model": "embedder", "input": ["Why is the sky blue?", "Why is the grass green?"]}))
    finally:
        await adapter.close()
    assert seen[0][0] == "/api/embed"
    assert seen[0][2] == {"model": "llama3.1:8b", "truncate": True,
                          "input": ["Why is the sky blue?", "Why is the grass green?"]}
    assert reply_json(reply) == {
        "object": "list", "model": "embedder",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
                 {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]}],
        "usage": {"prompt_tokens": 12, "total_tokens": 12},
    }
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 0)


async def test_bad_request_body_is_openai_shaped(deployment, aiohttp_server):
    server = await aiohttp_server(web.Application())
    adapter = OllamaAdapter(deployment(server).provider)
    try:
        error = adapter.error_from_status(
            400, {}, b'{"error":"registry.ollama.ai/library/llama3.1:8b does not support tools"}')
    finally:
        await adapter.close()
    assert error.failure is FailureClass.CLIENT and error.status == 400
    assert error.retry_after is None
    assert error_json(error) == {"error": {
        "message": "registry.ollama.ai/library/llama3.1:8b does not support tools",
        "type": "invalid_request_error", "param": None, "code": None}}
