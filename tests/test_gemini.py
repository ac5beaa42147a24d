"""The `gemini` provider: its translation with literal fixtures (tests/fixtures/gemini/), then the
real gateway, in front of a fake Gemini API speaking its wire format (tests/fakes_gemini.py),
with the official `openai` and `anthropic` SDKs as clients, and once the real daemon."""

from __future__ import annotations

import json
import re

import anthropic
import openai
import orjson
import pytest

from gatewayd.adapters.gemini_codec import (
    StreamDecoder,
    decode_answer,
    decode_embeddings,
    decode_error,
    encode_chat,
    encode_embed,
    joined_id,
    split_id,
)
from gatewayd.adapters.registry import PROVIDER_TYPES
from gatewayd.daemon.core.conversation import Embed
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Delta, Finish, Start, ToolCallDelta
from gatewayd.daemon.formats import anthropic as anthropic_format
from gatewayd.daemon.formats.openai import decode_chat
from tests.daemon_proc import Daemon, config_dir, free_port
from tests.fakes_gemini import (
    GEMINI_KEY,
    FakeGemini,
    GeminiError,
    call,
    fixture,
    recorded,
    rpc_error,
    split,
    text,
)
from tests.fakes_native import BoundedGateways, serve
from tests.wire import answer_json, error_json

BOUND = 10.0
MODEL = "gemini-2.5-flash"
CREATED = 1_700_000_000
SIGNATURE = "CikBcsjafFK168IbtVtoxVV0Tsn8O+eU45rzJahzwuKGmMbdMdfpmNpgBwplAXLI2g=="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


def up(body: dict) -> dict:
    """An OpenAI client's chat body as the Gemini request the adapter sends."""
    return orjson.loads(encode_chat(decode_chat(body), MODEL))


def refused(body: dict) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        encode_chat(decode_chat(body), MODEL)
    assert caught.value.failure is FailureClass.CLIENT and caught.value.status == 400
    return caught.value


def events_of(stream: bytes, model: str = MODEL) -> tuple[list, StreamDecoder]:
    decoder = StreamDecoder(model, created=CREATED)
    out = []
    for chunk in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        if chunk:
            out += decoder.feed(b"", chunk.removeprefix(b"data: "))
    return out, decoder


# --- requests --------------------------------------------------------------------------------

def test_system_instruction_multi_turn_sampling_and_stop():
    body = {"model": "alias", "max_tokens": 200, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
            "presence_penalty": 0.5, "frequency_penalty": 0.25, "user": "u-1", "messages": [
                {"role": "system", "content": "You are a geography tutor."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! Ask me anything."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "user", "content": [{"type": "text", "text": "And of Spain?"}]}]}
    assert up(body) == {
        "systemInstruction": {"parts": [{"text": "You are a geography tutor."}, {"text": "Answer briefly."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello! Ask me anything."}]},
            {"role": "user", "parts": [{"text": "What is the capital of France?"}, {"text": "And of Spain?"}]}],
        "generationConfig": {"maxOutputTokens": 200, "temperature": 0.2, "topP": 0.9, "stopSequences": ["\n\n"],
                             "seed": 7, "presencePenalty": 0.5, "frequencyPenalty": 0.25},
    }


def test_inline_images_from_data_urls():
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%2F%3E"}}]}]}
    assert up(body)["contents"] == [{"role": "user", "parts": [
        {"text": "Compare these."},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "image/svg+xml", "data": "PHN2Zy8+"}}]}]


@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "data:,nothing", "file:///etc/passwd"])
def test_images_gemini_cannot_take_are_client_errors(url):
    error = refused({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert error_json(error)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("choice", "config"), [
    (None, None),
    ("auto", {"mode": "AUTO"}),
    ("required", {"mode": "ANY"}),
    ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_function_declarations_and_calling_config(choice, config):
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER, {"type": "function", "function": {"name": "now"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    out = up(body)
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Current weather for a city",
         "parametersJsonSchema": WEATHER["function"]["parameters"]},
        {"name": "now"}]}]
    assert out.get("toolConfig") == (None if config is None else {"functionCallingConfig": config})


def test_function_calls_and_responses_in_history_keep_names_and_signatures():
    signed = joined_id("call_1", SIGNATURE)
    body = {"messages": [
        {"role": "user", "content": "Weather in Oslo and Paris?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": signed, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": signed, "content": '{"celsius": -3, "sky": "snow"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "18 C, sun"}]},
        {"role": "user", "content": "Which is warmer?"}]}
    assert up(body)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Oslo and Paris?"}]},
        {"role": "model", "parts": [
            {"text": "Checking both."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIGNATURE},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"celsius": -3, "sky": "snow"}}},
            {"functionResponse": {"name": "get_weather", "response": {"output": "18 C, sun"}}},
            {"text": "Which is warmer?"}]},
    ]


def test_a_signature_survives_the_trip_through_a_client_id():
    assert split_id(joined_id("call_ab", SIGNATURE)) == ("call_ab", SIGNATURE)
    # only the characters Anthropic's tool_use ids may hold
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", joined_id("call_ab", SIGNATURE))
    assert split_id("toolu_01") == ("toolu_01", None)
    assert joined_id("call_ab", None) == "call_ab"


def test_json_output_and_an_anthropic_clients_top_k():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}}
    assert up(body)["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    body["response_format"] = {"type": "json_object"}
    assert up(body)["generationConfig"] == {"responseMimeType": "application/json"}
    messages = anthropic_format.decode_chat({"model": "m", "max_tokens": 50, "top_k": 40, "system": "Be terse.",
                                             "stop_sequences": ["END"],
                                             "messages": [{"role": "user", "content": "Hi"}]})
    assert orjson.loads(encode_chat(messages, MODEL)) == {
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 50, "topK": 40, "stopSequences": ["END"]}}


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}], "n": 2},
    {"messages": []},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "critic", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                "input_audio": {"data": "AA", "format": "wav"}}]}]},
    {"messages": [{"role": "tool", "tool_call_id": "nobody", "content": "x"}]},
    {"messages": [{"role": "user", "content": "x"},
                  {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                        "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
    {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code_interpreter"}]},
    {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "sometimes"},
    {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
])
def test_what_gemini_cannot_be_sent_is_a_400(body):
    refused(body)


# --- answers ---------------------------------------------------------------------------------

def test_a_text_answer_with_cached_and_thinking_tokens():
    assert answer_json(decode_answer(fixture("answer_text.json"), MODEL, created=CREATED)) == {
        "id": "2w1GaOayA5Wdz7IPi7_8wQQ", "object": "chat.completion", "created": CREATED, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "The capital of France is **Paris**."}}],
        # thinking is output the deployment bills; cached tokens are part of the prompt's
        "usage": {"prompt_tokens": 1043, "completion_tokens": 9 + 58, "total_tokens": 1043 + 67,
                  "prompt_tokens_details": {"cached_tokens": 1016}},
    }


def test_a_function_call_answer_carries_its_signature_in_the_id():
    answer = decode_answer(fixture("answer_function_call.json"), MODEL)
    assert answer.finish == "tool_calls" and answer.text is None
    (called,) = answer.tool_calls
    assert called.name == "get_weather" and json.loads(called.arguments) == {"city": "Paris", "unit": "celsius"}
    assert called.id.startswith("call_") and split_id(called.id)[1] == SIGNATURE
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (83, 14 + 104)


def test_thought_parts_are_the_reasoning():
    payload = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "**Checking primes**", "thought": True}, {"text": "13."}]}, "finishReason": "STOP"}]}
    answer = decode_answer(payload, MODEL)
    assert (answer.text, answer.reasoning, answer.model) == ("13.", "**Checking primes**", MODEL)


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("LANGUAGE", "stop"), ("OTHER", "stop"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("FINISH_REASON_UNSPECIFIED", "stop"),
])
def test_every_finish_reason(reason, finish):
    payload = {**fixture("answer_text.json")}
    payload["candidates"] = [{**payload["candidates"][0], "finishReason": reason}]
    assert decode_answer(payload, MODEL).finish == finish


def test_safety_stops_and_blocked_prompts_are_content_filter_stops():
    stopped = decode_answer(fixture("answer_safety.json"), MODEL)
    assert (stopped.text, stopped.finish, stopped.usage.prompt_tokens) == ("", "content_filter", 12)
    blocked = decode_answer(fixture("answer_prompt_blocked.json"), MODEL)
    assert (blocked.text, blocked.finish, blocked.usage.prompt_tokens) == ("", "content_filter", 9)


@pytest.mark.parametrize("payload", [[], {}, {"candidates": []}, {"candidates": ["x"]},
                                     {"candidates": [{"content": {"parts": [{"functionCall": {}}]}}]}])
def test_malformed_answers_are_protocol_failures(payload):
    with pytest.raises(UpstreamError) as caught:
        decode_answer(payload, MODEL)
    assert caught.value.failure is FailureClass.PROTOCOL


# --- streams ---------------------------------------------------------------------------------

def test_a_recorded_text_stream():
    events, decoder = events_of(recorded("text_stream.sse"))
    assert events == [
        Start("The sky looks blue because", id="IZI2acSKMoWl0-kPmYj2yQc", model=MODEL, created=CREATED),
        Delta(" air molecules scatter short (blue) wavelengths of sunlight far more"),
        Delta(" than long (red) ones, so blue light reaches your eyes from every direction."),
        Finish("stop"),
    ]
    assert decoder.done
    assert (decoder.usage.prompt_tokens, decoder.usage.completion_tokens) == (8, 34 + 211)


def test_a_recorded_thinking_stream():
    events, decoder = events_of(recorded("thinking_stream.sse"))
    assert [(type(e).__name__, getattr(e, "text", ""), getattr(e, "reasoning", "")) for e in events] == [
        ("Start", "", "**Weighing the question**\n\nThe user asks for a prime between 10 and 20."),
        ("Delta", "13 is a prime number between 10 and 20.", ""),
        ("Finish", "", "")]
    assert decoder.usage.completion_tokens == 12 + 180


def test_a_recorded_function_call_stream():
    events, decoder = events_of(recorded("function_call_stream.sse"))
    start, finish = events
    (piece,) = start.tool_calls
    assert isinstance(piece, ToolCallDelta) and (piece.index, piece.name) == (0, "get_weather")
    assert json.loads(piece.arguments) == {"city": "Tokyo"}
    assert split_id(piece.id)[1].startswith("CikBcsjafFK168Ibt")
    assert finish == Finish("tool_calls") and decoder.done


def test_a_stream_without_a_finish_reason_is_not_done():
    stream = recorded("text_stream.sse").split(b"\r\n\r\n")
    events, decoder = events_of(b"\r\n\r\n".join(stream[:2]))
    assert len(events) == 2 and not decoder.done


def test_a_blocked_prompt_in_a_stream_ends_it_with_content_filter():
    events, decoder = events_of(b"data: " + json.dumps(fixture("answer_prompt_blocked.json")).encode())
    assert events[-1] == Finish("content_filter") and decoder.done


@pytest.mark.parametrize(("chunk", "failure"), [
    (b'{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}',
     FailureClass.OVERLOADED),
    (b'{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}', FailureClass.PROTOCOL),
    (b"not json", FailureClass.PROTOCOL),
    (b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}', FailureClass.PROTOCOL),
])
def test_in_band_errors_and_malformed_chunks(chunk, failure):
    with pytest.raises(UpstreamError) as caught:
        StreamDecoder(MODEL).feed(b"", chunk)
    assert caught.value.failure is failure


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "status", "failure", "openai_type", "code"), [
    ("error_400_invalid_argument.json", 400, FailureClass.CLIENT, "invalid_request_error", None),
    ("error_400_api_key.json", 400, FailureClass.AUTH, "authentication_error", "invalid_api_key"),
    ("error_404.json", 404, FailureClass.NOT_FOUND, "invalid_request_error", "model_not_found"),
    ("error_429.json", 429, FailureClass.RATE_LIMIT, "rate_limit_error", "rate_limit_exceeded"),
    ("error_503.json", 503, FailureClass.OVERLOADED, "server_error", "overloaded"),
])
def test_error_bodies_by_status(name, status, failure, openai_type, code):
    body = fixture(name)
    error = decode_error(status, body)
    assert (error.failure, error.status, error.message) == (failure, status, body["error"]["message"])
    told = error_json(error)["error"]
    assert (told["type"], told["code"], told["message"]) == (openai_type, code, body["error"]["message"])


def test_retry_info_is_the_retry_after_unless_a_header_said_one():
    assert decode_error(429, fixture("error_429.json")).retry_after == 47.0
    assert decode_error(429, fixture("error_429.json"), 3.0).retry_after == 3.0
    fractional = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}
    assert decode_error(429, fractional).retry_after == 1.5


@pytest.mark.parametrize(("status", "rpc", "failure"), [
    (403, "PERMISSION_DENIED", FailureClass.AUTH), (400, "FAILED_PRECONDITION", FailureClass.AUTH),
    (500, "INTERNAL", FailureClass.SERVER), (504, "DEADLINE_EXCEEDED", FailureClass.SERVER),
    (502, None, FailureClass.SERVER), (418, "SOMETHING_NEW", FailureClass.CLIENT),
])
def test_other_statuses(status, rpc, failure):
    assert decode_error(status, {"error": {"code": status, "message": "m", "status": rpc}}).failure is failure
    assert decode_error(status, b"<html>").message == f"upstream answered HTTP {status}"


# --- embeddings ------------------------------------------------------------------------------

def test_embeddings_requests_and_answers():
    method, body = encode_embed(Embed("alias", "hello", 5), "gemini-embedding-001")
    assert method == "embedContent"
    assert orjson.loads(body) == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 5}
    method, body = encode_embed(Embed("alias", ["a", "b"]), "gemini-embedding-001")
    assert method == "batchEmbedContents"
    assert orjson.loads(body) == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}]}
    assert decode_embeddings(fixture("embed_content.json"), "m").vectors == [[0.0086, -0.0128, -0.0392, 0.0157, 0.0219]]
    assert len(decode_embeddings(fixture("batch_embed_contents.json"), "m").vectors) == 2
    for wrong in ([[1, 2, 3]], [], 7):
        with pytest.raises(UpstreamError) as caught:
            encode_embed(Embed("alias", wrong), "gemini-embedding-001")
        assert caught.value.failure is FailureClass.CLIENT
    with pytest.raises(UpstreamError) as caught:
        decode_embeddings({"embedding": {}}, "m")
    assert caught.value.failure is FailureClass.PROTOCOL


# --- through the gateway ---------------------------------------------------------------------

@pytest.fixture
async def gateway(gateway):
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


@pytest.fixture
async def gemini(aiohttp_server):
    return await serve(aiohttp_server, FakeGemini())


async def gemini_gateway(gateway, fake: FakeGemini, *, key: str = GEMINI_KEY, retry: str = "", extra: str = "",
                         name: str = "gateway.yaml"):
    return await gateway(f"""
        version: 1
        providers:
          google: {{type: gemini, base_url: "{fake.base_url}", api_key: "{key}", {retry or "retry: {attempts: 1}"}}}
          demo: {{type: mock}}
        models:
          flash: {{provider: google, model: {MODEL}, pricing: {{input_per_mtok: 0.3, output_per_mtok: 2.5}}}}
          embed: {{provider: google, model: gemini-embedding-001}}
          echo: {{provider: demo, model: echo}}
        aliases:
          smart: {{targets: [flash], fallbacks: [echo]}}
        {extra}
    """, name=name)


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


async def test_openai_chat_reaches_gemini_with_its_key_url_and_body(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(fixture("answer_text.json"))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="flash", max_tokens=100, messages=[
            {"role": "system", "content": "You are a geography tutor."},
            {"role": "user", "content": "Capital of France?"}])
    completion = raw.parse()
    assert raw.headers["x-gatewayd-deployment"] == "flash"
    assert completion.choices[0].message.content == "The capital of France is **Paris**."
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1043, 67)
    assert completion.usage.prompt_tokens_details.cached_tokens == 1016
    (seen,) = gemini.requests
    assert seen["path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert seen["headers"]["x-goog-api-key"] == GEMINI_KEY and "Authorization" not in seen["headers"]
    assert seen["json"] == {"contents": [{"role": "user", "parts": [{"text": "Capital of France?"}]}],
                            "systemInstruction": {"parts": [{"text": "You are a geography tutor."}]},
                            "generationConfig": {"maxOutputTokens": 100}}


async def test_openai_stream_of_a_recorded_gemini_stream(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(recorded("text_stream.sse"), text("one two three four five six", pieces=3, output_tokens=6))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="flash", messages=user("Why is the sky blue?"),
                                                      stream=True, stream_options={"include_usage": True})
        pieces, finishes, usage = [], [], None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                pieces += [choice.delta.content] if choice.delta.content else []
                finishes += [choice.finish_reason] if choice.finish_reason else []
        stream = await client.chat.completions.create(model="flash", messages=user("count"), stream=True)
        counted = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces).startswith("The sky looks blue because air molecules") and len(pieces) == 3
    assert finishes == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (8, 245)
    assert counted == split("one two three four five six", 3)
    assert gemini.requests[0]["path"] == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert gemini.requests[0]["query"] == {"alt": "sse"}


async def test_openai_tools_round_trip_with_a_signed_call(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(call("get_weather", {"city": "Paris", "unit": "celsius"}, signature=SIGNATURE, preamble="Checking."),
                 text("It is 18 degrees in Paris."))
    async with sdk(gw) as client:
        messages = user("Weather in Paris?")
        first = await client.chat.completions.create(model="flash", messages=messages, tools=[WEATHER],
                                                     tool_choice="required")
        choice = first.choices[0]
        (tool_call,) = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        assert tool_call.function.name == "get_weather"
        assert json.loads(tool_call.function.arguments) == {"city": "Paris", "unit": "celsius"}
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": tool_call.id, "content": '{"celsius": 18}'}]
        second = await client.chat.completions.create(model="flash", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is 18 degrees in Paris."
    sent = gemini.requests[0]["json"]
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER["function"]["parameters"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert gemini.requests[1]["json"]["contents"][1:] == [
        {"role": "model", "parts": [{"text": "Checking."}, {"functionCall": {
            "name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}}, "thoughtSignature": SIGNATURE}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 18}}}]}]


async def test_openai_streamed_tool_call_is_assembled_by_the_sdk(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(recorded("function_call_stream.sse"))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="flash", messages=user("Weather in Tokyo?"),
                                                      tools=[WEATHER], stream=True)
        calls: dict[int, dict] = {}
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for piece in choice.delta.tool_calls or []:
                    entry = calls.setdefault(piece.index, {"id": piece.id, "name": "", "arguments": ""})
                    entry["name"] += piece.function.name or ""
                    entry["arguments"] += piece.function.arguments or ""
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Tokyo"}
    assert split_id(calls[0]["id"])[1].startswith("CikBcsjafFK168Ibt")


async def test_openai_embeddings_one_text_and_several(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    async with sdk(gw) as client:
        one = await client.embeddings.create(model="embed", input="hello", dimensions=4)
        several = await client.embeddings.create(model="embed", input=["hello", "world"])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 4
    assert [item.index for item in several.data] == [0, 1]
    assert several.data[0].embedding[:4] == one.data[0].embedding  # the same text, the same vector
    assert [(r["method"], r["model"]) for r in gemini.requests] == [
        ("embedContent", "gemini-embedding-001"), ("batchEmbedContents", "gemini-embedding-001")]
    assert gemini.requests[0]["json"] == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 4}


async def test_anthropic_messages_to_gemini(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(text("Bonjour !", prompt_tokens=20, output_tokens=4, thoughts_tokens=6),
                 text("Streaming from Gemini to Claude's SDK.", pieces=4))
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=BOUND) as client:
        message = await client.messages.create(model="flash", max_tokens=64, system="Answer in French.",
                                               messages=[{"role": "user", "content": "Hello"}])
        async with client.messages.stream(model="flash", max_tokens=64,
                                          messages=[{"role": "user", "content": "stream"}]) as stream:
            streamed = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert message.content[0].text == "Bonjour !" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 10)
    assert streamed == "Streaming from Gemini to Claude's SDK." and final.stop_reason == "end_turn"
    assert gemini.requests[0]["json"] == {
        "systemInstruction": {"parts": [{"text": "Answer in French."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "generationConfig": {"maxOutputTokens": 64}}


async def test_anthropic_tool_use_through_gemini(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(call("get_weather", {"city": "Oslo"}), text("4 °C in Oslo."))
    tool = {"name": "get_weather", "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=BOUND) as client:
        first = await client.messages.create(model="flash", max_tokens=64, tools=[tool],
                                             messages=[{"role": "user", "content": "Weather in Oslo?"}])
        (use,) = [block for block in first.content if block.type == "tool_use"]
        second = await client.messages.create(model="flash", max_tokens=64, tools=[tool], messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "4 C"}]}])
    assert first.stop_reason == "tool_use" and use.input == {"city": "Oslo"}
    assert second.content[0].text == "4 °C in Oslo."
    assert gemini.requests[1]["json"]["contents"][2] == {
        "role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "4 C"}}}]}


async def test_the_responses_endpoint_to_gemini(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(text("Hello from Gemini via Responses"))
    async with sdk(gw) as client:
        response = await client.responses.create(model="flash", input="hi", instructions="Be kind.",
                                                 max_output_tokens=50)
    assert response.output_text == "Hello from Gemini via Responses" and response.status == "completed"
    assert gemini.requests[0]["json"]["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
    assert gemini.requests[0]["json"]["generationConfig"] == {"maxOutputTokens": 50}


async def test_safety_and_recitation_stops_reach_the_client_as_content_filter(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(fixture("answer_safety.json"), text("Once upon a", finish="RECITATION"))
    async with sdk(gw) as client:
        blocked = await client.chat.completions.create(model="flash", messages=user("x"))
        stream = await client.chat.completions.create(model="flash", messages=user("x"), stream=True)
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
    assert blocked.choices[0].finish_reason == "content_filter"
    assert finishes == ["content_filter"]


async def test_a_rate_limit_honours_retry_info(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini, retry="retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}")
    gemini.queue(GeminiError(429, fixture("error_429.json")))
    async with sdk(gw) as client:
        # 47 s is past retry_after_max (30 s): no second try here, the fallback answers at once
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("rescued"))
        assert raw.headers["x-gatewayd-deployment"] == "echo" and raw.headers["x-gatewayd-attempts"] == "2"
        assert gemini.calls == 1
        short = fixture("error_429.json")
        short["error"]["details"][2]["retryDelay"] = "0.05s"
        gemini.queue(GeminiError(429, short))
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("again"))
        assert raw.headers["x-gatewayd-deployment"] == "flash" and gemini.calls == 3  # retried after 50 ms
    assert "rate_limit 429" in (await gw.status())["deployments"]["flash"]["last_error"]


async def test_unavailable_is_retried_then_falls_back(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini, retry="retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}")
    gemini.default = GeminiError(503, fixture("error_503.json"))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("fallback"))
    assert raw.parse().choices[0].message.content == "fallback"
    assert raw.headers["x-gatewayd-attempts"] == "3" and gemini.calls == 2
    assert "overloaded 503" in (await gw.status())["deployments"]["flash"]["last_error"]


async def test_invalid_argument_goes_back_to_the_client_once(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini, retry="retry: {attempts: 3, backoff: {initial: 1ms, max: 2ms}}")
    gemini.queue(rpc_error(400, "INVALID_ARGUMENT", "* GenerationConfig.stop_sequences: at most 5 stop sequences"))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="smart", messages=user("x"), stop=list("abcdef"))
    assert "at most 5 stop sequences" in caught.value.message
    assert gemini.calls == 1  # a client error: one attempt, no retry, no fallback
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=BOUND) as client:
        gemini.queue(rpc_error(400, "INVALID_ARGUMENT", "* contents: too many images"))
        with pytest.raises(anthropic.BadRequestError) as refused_:
            await client.messages.create(model="flash", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert refused_.value.body["error"]["type"] == "invalid_request_error"
    assert "too many images" in refused_.value.body["error"]["message"]


async def test_a_wrong_key_falls_back_without_retry_and_is_never_shown(gateway, gemini, aiohttp_server):
    echoing = await serve(aiohttp_server, FakeGemini(key="another-key"))
    gw = await gemini_gateway(gateway, echoing, retry="retry: {attempts: 3, backoff: {initial: 1ms, max: 2ms}}")
    leaky = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": f"API key {GEMINI_KEY} not valid.",
                       "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("rescued"))
        assert raw.headers["x-gatewayd-deployment"] == "echo" and echoing.calls == 1  # auth: never retried
        echoing.key = GEMINI_KEY
        echoing.queue(GeminiError(400, leaky))
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="flash", messages=user("x"))
    assert GEMINI_KEY not in caught.value.message and "[redacted]" in caught.value.message
    status = json.dumps(await gw.status())
    assert "auth 400" in status and GEMINI_KEY not in status


async def test_a_stream_cut_or_failed_after_its_first_byte_ends_with_an_error_event(gateway, gemini):
    gw = await gemini_gateway(gateway, gemini)
    gemini.queue(text("This answer will be cut off", pieces=3, cut_after=1),
                 text("This one fails in the middle", pieces=3, error_after=2))
    for _ in range(2):
        async with await gw.chat("flash", stream=True) as response:
            raw = await response.read()
        assert raw.startswith(b"data: ") and b'"content":"This ' in raw
        assert b"[DONE]" not in raw and b'"error"' in raw
    assert (await gw.status())["deployments"]["flash"]["failures"] == 2


def test_the_provider_type_and_its_default_root():
    assert PROVIDER_TYPES["gemini"].base_url == "https://generativelanguage.googleapis.com"


async def test_the_real_daemon_serves_gemini_to_the_openai_sdk(tmp_path, gemini):
    folder, path = config_dir(tmp_path)
    port = free_port()
    path.write_text(f"""version: 1
server: {{listen: 127.0.0.1:{port}}}
providers:
  google: {{type: gemini, base_url: "{gemini.base_url}", api_key: "${{GEMINI_API_KEY}}"}}
models:
  flash: {{provider: google, model: {MODEL}}}
""")
    gemini.queue(text("Hello from the daemon", pieces=2), fixture("answer_function_call.json"))
    async with Daemon(path, port, tmp_path, env={"GEMINI_API_KEY": GEMINI_KEY}) as daemon:
        async with openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                                      timeout=BOUND) as client:
            stream = await client.chat.completions.create(model="flash", messages=user("hi"), stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            called = await client.chat.completions.create(model="flash", messages=user("weather?"), tools=[WEATHER])
        log = daemon.log()
    assert streamed == "Hello from the daemon"
    assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert [r["headers"]["x-goog-api-key"] for r in gemini.requests] == [GEMINI_KEY] * 2
    assert GEMINI_KEY not in log

