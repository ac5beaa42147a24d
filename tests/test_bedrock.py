"""The bedrock provider: Converse and ConverseStream signed with SigV4 (adapters/bedrock.py,
adapters/bedrock_codec.py).

Pure parts first (the request written from a client's body, recorded answers and streams read
back, errors classified, the signature against botocore's own client for a fixed clock), then
the real daemon in front of tests/fakes_bedrock.py, a fake Bedrock that recomputes every
request's signature, with the official openai and anthropic SDKs as clients.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import anthropic
import botocore.auth
import botocore.session
import openai
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatewayd.adapters.bedrock import BedrockAdapter
from gatewayd.adapters.bedrock_codec import StreamDecoder, decode_answer, decode_error, encode_chat
from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.core.replies import Delta, Finish, Start
from gatewayd.daemon.routing.retry import Action, decide
from tests.compiling import compiled, errors, in_tmp  # noqa: F401  (in_tmp: autouse)
from tests.daemon_proc import Daemon, config_dir, free_port
from tests.fakes_bedrock import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    BedrockError,
    FakeBedrock,
    Recorded,
    canonical_request,
    event,
    expected_signature,
    frame,
    parse_authorization,
    text,
    tool_use,
)
from tests.wire import chat_request

FIXTURES = Path(__file__).parent / "fixtures" / "bedrock"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
BOUND = 15.0
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FIXED_CLOCK = datetime.datetime(2025, 3, 14, 15, 9, 26, tzinfo=datetime.timezone.utc)


def bedrock_provider(extra: str = "", base_url: str | None = None):
    url = f'base_url: "{base_url}", ' if base_url else ""
    graph = compiled(f"""
        version: 1
        providers:
          aws: {{type: bedrock, {url}region: {REGION}, access_key_id: {ACCESS_KEY_ID},
                 secret_access_key: "{SECRET_ACCESS_KEY}", session_token: "{SESSION_TOKEN}"{extra}}}
        """)
    return graph.providers["aws"]


def converse_body(body: dict) -> dict:
    return orjson.loads(encode_chat(chat_request(body).chat(), MODEL))


def messages_of(path: Path) -> list[tuple[str, str, bytes]]:
    """A recorded stream's messages as (message type, event or exception type, payload)."""
    buffer = EventStreamBuffer()
    buffer.add_data(path.read_bytes())
    return [(m.headers[":message-type"], m.headers.get(":event-type") or m.headers.get(":exception-type"), m.payload)
            for m in buffer]


def decoded(pairs) -> tuple[list, StreamDecoder]:
    decoder = StreamDecoder("claude")
    out = [neutral for kind, payload in pairs for neutral in decoder.feed(kind.encode(), payload)]
    return out, decoder


# --- the request -------------------------------------------------------------------------------

def test_a_chat_request_is_written_as_a_converse_body():
    body = converse_body({
        "model": "chat", "max_tokens": 300, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\nHuman:"],
        "seed": 7, "user": "u-1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "user", "content": "Be brief."},
            {"role": "assistant", "content": "Un chat."},
            {"role": "user", "content": "Merci"},
        ]})
    assert body == {
        "system": [{"text": "You are terse."}, {"text": "Answer in French."}],
        "messages": [
            {"role": "user", "content": [
                {"text": "What is in this picture?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                {"text": "Be brief."}]},
            {"role": "assistant", "content": [{"text": "Un chat."}]},
            {"role": "user", "content": [{"text": "Merci"}]},
        ],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.3, "topP": 0.9, "stopSequences": ["\n\nHuman:"]},
    }


def test_tools_tool_calls_and_results_are_written_as_tool_config_tool_use_and_tool_result():
    body = converse_body({
        "model": "chat", "tools": [WEATHER_TOOL], "tool_choice": "required",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Lyon?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tooluse_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "tooluse_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "tooluse_2", "content": ""},
        ]})
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "Current weather for a city",
                                "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]}}}],
        "toolChoice": {"any": {}}}
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {"city": "Lyon"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "18C"}]}},
            {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "(empty)"}]}}]},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"auto": {}}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
])
def test_tool_choice(choice, expected):
    body = converse_body({"model": "chat", "tools": [WEATHER_TOOL], "tool_choice": choice,
                          "messages": [{"role": "user", "content": "hi"}]})
    assert body["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_leaves_the_tools_out_unless_the_conversation_holds_tool_blocks():
    plain = converse_body({"model": "chat", "tools": [WEATHER_TOOL], "tool_choice": "none",
                           "messages": [{"role": "user", "content": "hi"}]})
    assert "toolConfig" not in plain
    history = converse_body({"model": "chat", "tools": [WEATHER_TOOL], "tool_choice": "none", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"}]})
    assert "toolChoice" not in history["toolConfig"] and len(history["toolConfig"]["tools"]) == 1


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
     None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                  "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}, None),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]}, None),
    ({"stop": {"not": "a list"}}, "stop"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "t", "type": "function",
                                                         "function": {"name": "f", "arguments": "[1]"}}]}]}, None),
])
def test_what_converse_cannot_take_is_the_clients_400(body, param):
    request = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(Exception) as info:
        converse_body(request)
    error = info.value
    assert error.failure is FailureClass.CLIENT and error.status == 400
    assert error.param == param


# --- answers and streams ---------------------------------------------------------------------

def test_a_recorded_text_answer_is_read_with_its_usage():
    answer = decode_answer(json.loads((FIXTURES / "text_answer.json").read_text()), "chat")
    assert answer.text.startswith("Hello! How can I assist you today?")
    assert (answer.finish, answer.model, answer.tool_calls) == ("stop", "chat", ())
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 30)


def test_a_recorded_tool_use_answer_is_read_with_its_reasoning():
    answer = decode_answer(json.loads((FIXTURES / "tool_use_answer.json").read_text()), "chat")
    (call,) = answer.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("functions.get_temperature:0", "get_temperature",
                                                                {"city": "London"})
    assert answer.text is None and answer.finish == "tool_calls"
    assert answer.reasoning.strip().startswith("The user is asking for the current temperature in London.")


def test_cache_reads_and_writes_count_in_the_prompt():
    answer = decode_answer({"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                            "stopReason": "max_tokens", "usage": {"inputTokens": 10, "outputTokens": 2,
                                                                   "cacheReadInputTokens": 100,
                                                                   "cacheWriteInputTokens": 5}}, "m")
    assert (answer.usage.prompt_tokens, answer.usage.cached_tokens, answer.finish) == (115, 100, "length")


def test_the_test_encoder_writes_the_recorded_frames_byte_for_byte():
    raw = (FIXTURES / "tool_use_stream.eventstream").read_bytes()
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    assert b"".join(frame(message.headers, message.payload) for message in buffer) == raw


def test_a_recorded_text_stream_becomes_start_deltas_finish_and_usage():
    out, decoder = decoded(pair for _, *pair in messages_of(FIXTURES / "text_stream.eventstream"))
    assert isinstance(out[0], Start) and out[0].model == "claude" and out[0].text == "The"  # with its first piece
    assert [type(e) for e in out].count(Start) == 1 and out[-1] == Finish("stop")
    text_ = "".join(e.text for e in out if isinstance(e, Delta))
    assert text_.startswith("The capital of France is Paris.") and text_.endswith('"The City of Love."')
    assert decoder.done and (decoder.usage.prompt_tokens, decoder.usage.completion_tokens) == (13, 82)


def test_a_recorded_tool_use_stream_becomes_one_tool_call():
    out, decoder = decoded(pair for _, *pair in messages_of(FIXTURES / "tool_use_stream.eventstream"))
    calls = [call for e in out if isinstance(e, Delta) for call in e.tool_calls]
    assert (calls[0].index, calls[0].id, calls[0].name) == (0, "tooluse_lAG_zP8QRHmSYOwZzzaCqA", "get_temperature")
    assert json.loads("".join(call.arguments for call in calls)) == {"city": "Paris"}
    assert out[-1] == Finish("tool_calls") and decoder.done


def test_a_recorded_reasoning_stream_keeps_reasoning_apart_from_text():
    out, _ = decoded(pair for _, *pair in messages_of(FIXTURES / "reasoning_stream.eventstream"))
    deltas = [e for e in out if isinstance(e, Delta)]
    assert "".join(e.reasoning for e in deltas).startswith("The user has greeted me")
    assert "".join(e.text for e in deltas) == "Hello! It's nice to meet you. How can I help you today?"


def test_an_exception_in_the_stream_is_an_error_of_its_class():
    decoder = StreamDecoder("m")
    assert decoder.feed(b"messageStart", b'{"role":"assistant"}') == []  # nothing for the client yet
    with pytest.raises(Exception) as info:
        decoder.feed(b"throttlingException", b'{"message":"Too many tokens, please wait before trying again."}')
    assert info.value.failure is FailureClass.RATE_LIMIT
    assert "Too many tokens" in info.value.message


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "error_type", "failure", "retried"), [
    (429, "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", FailureClass.RATE_LIMIT, True),
    (429, "ModelNotReadyException", FailureClass.RATE_LIMIT, True),
    (503, "ServiceUnavailableException", FailureClass.OVERLOADED, True),
    (500, "InternalServerException", FailureClass.SERVER, True),
    (408, "ModelTimeoutException", FailureClass.TIMEOUT, True),
    (403, "AccessDeniedException", FailureClass.AUTH, False),
    (403, "UnrecognizedClientException", FailureClass.AUTH, False),
    (404, "ResourceNotFoundException", FailureClass.NOT_FOUND, False),
    (400, "ValidationException", FailureClass.CLIENT, False),
    (502, None, FailureClass.SERVER, True),
])
def test_errors_are_classified_by_their_type(status, error_type, failure, retried):
    graph = compiled("version: 1\n")
    error = decode_error(status, error_type, {"message": "it went wrong"})
    assert error.failure is failure and "it went wrong" in error.message
    action = decide(error, graph.default_policy.retry, 1).action
    assert (action is Action.RETRY) is retried


def test_the_recorded_invalid_model_answer_is_the_clients_400():
    payload = json.loads((FIXTURES / "invalid_model_error.json").read_text())
    error = decode_error(400, "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/", payload)
    assert (error.failure, error.status, error.kind) == (FailureClass.CLIENT, 400, "invalid_request")
    assert error.message == "ValidationException: The provided model identifier is invalid."


# --- config ------------------------------------------------------------------------------------

def test_the_default_base_url_is_the_regions_and_credentials_are_secrets():
    provider = bedrock_provider()
    assert provider.base_url == f"https://bedrock-runtime.{REGION}.amazonaws.com"
    assert provider.disabled is None
    for name, value in (("access_key_id", ACCESS_KEY_ID), ("secret_access_key", SECRET_ACCESS_KEY),
                        ("session_token", SESSION_TOKEN)):
        assert provider.options[name].reveal() == value
        assert value not in repr(provider)


def test_a_bedrock_provider_without_credentials_is_disabled_with_a_warning():
    graph = compiled("""
        version: 1
        providers:
          nokeys: {type: bedrock}
          empty: {type: bedrock, access_key_id: "${AWS_ACCESS_KEY_ID:-}", secret_access_key: x, session_token: ""}
        """)
    assert graph.providers["nokeys"].disabled == "it has no access_key_id"
    assert graph.providers["nokeys"].base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert graph.providers["empty"].disabled == "its access_key_id resolved to an empty value"
    assert any("provider 'nokeys' is disabled" in warning for warning in graph.warnings)


def test_a_secret_access_key_file_is_read_through_the_loaders_secrets():
    from gatewayd.daemon.config.compile import compile_graph, secret_name
    from gatewayd.daemon.config.yamldoc import load_document

    Path("gateway.yaml").write_text("version: 1\nproviders:\n  aws: {type: bedrock, access_key_id: AKIDFILE, "
                                    "secret_access_key_file: aws-secret, session_token_file: aws-token}\n")
    document = load_document("gateway.yaml", {})
    graph = compile_graph(document, {secret_name("aws", "secret_access_key"): "from-the-file",
                                     secret_name("aws", "session_token"): "token-from-file"})
    options = graph.providers["aws"].options
    assert options["secret_access_key"].reveal() == "from-the-file"
    assert options["session_token"].reveal() == "token-from-file"
    assert compile_graph(document, {}).providers["aws"].disabled == \
        "its secret_access_key_file resolved to an empty value"


def test_config_mistakes_are_located():
    (region,) = errors("""
        version: 1
        providers:
          aws: {type: bedrock, region: "us-east-1.evil.test/", access_key_id: a, secret_access_key: b}
        """)
    assert region.startswith("gateway.yaml:4:32: providers.aws.region: ") and "AWS region name" in region
    Path("c").write_text("from-a-file\n")
    both, elsewhere = errors("""
        version: 1
        providers:
          aws: {type: bedrock, access_key_id: a, secret_access_key: b, secret_access_key_file: c}
          other: {type: openai, session_token: x}
        """)
    assert both == "gateway.yaml:4:64: give either secret_access_key or secret_access_key_file, not both"
    assert elsewhere == ("gateway.yaml:5:25: key 'session_token' applies only to bedrock providers, "
                         "and 'other' is openai")



def test_credentials_from_files_are_read_beside_the_config_and_their_absence_is_located():
    Path("aws-secret").write_text("secret-from-a-file\n")
    Path("aws-token").write_text("token-from-a-file")
    graph = compiled("""
        version: 1
        providers:
          aws: {type: bedrock, access_key_id: AKIDEXAMPLE, secret_access_key_file: aws-secret,
                session_token_file: aws-token}
        """)
    options = graph.providers["aws"].options
    assert options["secret_access_key"].reveal() == "secret-from-a-file"
    assert options["session_token"].reveal() == "token-from-a-file"
    assert "secret-from-a-file" in graph.providers["aws"].redactions  # scrubbed from logs as api keys are
    (missing,) = errors("""
        version: 1
        providers:
          aws: {type: bedrock, access_key_id: AKIDEXAMPLE, secret_access_key_file: nowhere}
        """)
    assert missing.startswith("gateway.yaml:4:76: ") and "nowhere" in missing and "does not exist" in missing


# --- Signature Version 4 -----------------------------------------------------------------------

def text_of(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Captured(Exception):
    """Raised from botocore's before-send hook: the signed request goes no further."""


def boto3_signed_converse(monkeypatch, model: str):
    """The request botocore's own Bedrock Runtime client signs for Converse, at FIXED_CLOCK."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED_CLOCK)
    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY, aws_session_token=SESSION_TOKEN)
    seen = []

    def capture(request, **kwargs):
        seen.append(request)
        raise Captured

    client.meta.events.register("before-send.bedrock-runtime.Converse", capture)
    with pytest.raises(Captured):
        client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "Hello!"}]}],
                        inferenceConfig={"maxTokens": 64})
    client.close()
    return seen[0]


@pytest.mark.parametrize("model", [
    MODEL, "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.amazon.nova-micro-v1:0"])
def test_the_signature_is_botocores_own_for_a_fixed_clock(monkeypatch, model):
    reference = boto3_signed_converse(monkeypatch, model)
    adapter = BedrockAdapter(bedrock_provider())
    assert adapter.urls(model)[0] == reference.url  # the model id in the path, encoded as AWS's SDK encodes it
    signed = parse_authorization(reference.headers["Authorization"].decode())["SignedHeaders"].split(";")
    unsigned = {"host", "x-amz-date", "x-amz-security-token"}
    headers = CIMultiDict((name, text_of(reference.headers[name])) for name in signed if name not in unsigned)
    ours = adapter.sign("POST", adapter._urls[reference.url], CIMultiDictProxy(headers), reference.body)
    assert ours["Authorization"] == reference.headers["Authorization"].decode()
    assert ours["X-Amz-Date"] == "20250314T150926Z"
    assert ours["X-Amz-Security-Token"] == SESSION_TOKEN


def test_the_fakes_own_check_accepts_botocores_signature_and_refuses_a_changed_body(monkeypatch):
    reference = boto3_signed_converse(monkeypatch, MODEL)
    fields = parse_authorization(reference.headers["Authorization"].decode())
    url = URL(reference.url, encoded=True)
    headers = CIMultiDict((name, text_of(value)) for name, value in reference.headers.items())
    headers["Host"] = url.host
    signed = fields["SignedHeaders"].split(";")
    date = headers["X-Amz-Date"]

    def signature(body: bytes) -> str:
        return expected_signature(SECRET_ACCESS_KEY, date, fields["Credential"].partition("/")[2],
                                  canonical_request("POST", url.raw_path, "", headers, signed, body))

    assert signature(reference.body) == fields["Signature"]
    assert signature(reference.body.replace(b"Hello!", b"Hello?")) != fields["Signature"]


# --- through the real daemon ------------------------------------------------------------------

@pytest.fixture
async def fake(aiohttp_server):
    fake = FakeBedrock()
    fake.server = await aiohttp_server(fake.app)
    fake.base_url = str(fake.server.make_url("")).rstrip("/")
    return fake


def daemon(tmp_path: Path, fake: FakeBedrock, *, secret: str = SECRET_ACCESS_KEY, extra: str = "") -> Daemon:
    """The real gatewayd with one bedrock provider in front of `fake` (alias `claude` -> model
    `haiku`), and the mock `echo` as the alias `safe`'s fallback."""
    port = free_port()
    _, path = config_dir(tmp_path)
    path.write_text(f"""version: 1
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 2s
providers:
  aws:
    type: bedrock
    base_url: "{fake.base_url}"
    region: {REGION}
    access_key_id: {ACCESS_KEY_ID}
    secret_access_key: "{secret}"
    session_token: "{SESSION_TOKEN}"
    retry: {{attempts: 2, backoff: {{initial: 1ms, max: 2ms}}}}
  demo: {{type: mock}}
models:
  haiku:
    provider: aws
    model: "{MODEL}"
    pricing: {{input_per_mtok: 0.8, output_per_mtok: 4}}
  echo: {{provider: demo, model: echo}}
aliases:
  claude:
    targets: [haiku]
  safe:
    targets: [haiku]
    fallbacks: [echo]
{extra}""")
    return Daemon(path, port, tmp_path)


def openai_sdk(gw: Daemon) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


async def test_openai_chat_stream_and_tools_through_the_daemon(tmp_path, fake):
    fake.queue(text("Bonjour from Bedrock.", input_tokens=31, output_tokens=6),
               Recorded((FIXTURES / "text_stream.eventstream").read_bytes()),
               tool_use("get_weather", {"city": "Paris"}, id="tooluse_Paris01", preamble="Checking."),
               text("It is 18C in Paris."),
               tool_use("get_weather", {"city": "Lyon"}, id="tooluse_Lyon01", pieces=4))
    async with daemon(tmp_path, fake) as gw, openai_sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="claude", max_tokens=120, temperature=0.2,
            messages=[{"role": "system", "content": "Answer in French."}, *user("Hello")])
        completion = raw.parse()
        assert raw.headers["x-gatewayd-deployment"] == "haiku"
        assert completion.choices[0].message.content == "Bonjour from Bedrock."
        assert completion.choices[0].finish_reason == "stop"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (31, 6)

        stream = await client.chat.completions.create(model="claude", messages=user("Capital of France?"),
                                                      stream=True, stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(pieces).startswith("The capital of France is Paris. Paris is not only")
        assert finish == "stop" and (usage.prompt_tokens, usage.completion_tokens) == (13, 82)

        messages = user("Weather in Paris?")
        first = await client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER_TOOL])
        choice = first.choices[0]
        (call,) = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
            "tooluse_Paris01", "get_weather", {"city": "Paris"})
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
        second = await client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER_TOOL])
        assert second.choices[0].message.content == "It is 18C in Paris."

        stream = await client.chat.completions.create(model="claude", messages=user("Lyon?"), stream=True,
                                                      tools=[WEATHER_TOOL], tool_choice="required")
        calls, finish = {}, None
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    entry = calls.setdefault(delta.index, {"id": delta.id, "name": delta.function.name,
                                                           "arguments": ""})
                    entry["arguments"] += delta.function.arguments or ""
                finish = choice.finish_reason or finish
        assert calls == {0: {"id": "tooluse_Lyon01", "name": "get_weather", "arguments": '{"city": "Lyon"}'}}
        assert finish == "tool_calls"
    assert fake.refused == [] and fake.verified == fake.calls == 5
    first_request = fake.requests[0]
    assert first_request["path"] == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert first_request["json"] == {"system": [{"text": "Answer in French."}],
                                     "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
                                     "inferenceConfig": {"maxTokens": 120, "temperature": 0.2}}
    assert [r["operation"] for r in fake.requests] == ["converse", "converse-stream", "converse", "converse",
                                                       "converse-stream"]
    assert fake.requests[3]["json"]["messages"][1:] == [
        {"role": "assistant", "content": [{"text": "Checking."}, {"toolUse": {
            "toolUseId": "tooluse_Paris01", "name": "get_weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_Paris01", "content": [{"text": "18C"}]}}]}]
    assert fake.requests[4]["json"]["toolConfig"]["toolChoice"] == {"any": {}}


async def test_anthropic_messages_and_the_responses_api_through_the_daemon(tmp_path, fake):
    fake.queue(text("Hi from Converse.", input_tokens=12, output_tokens=5),
               text("Streamed from Converse.", pieces=4, input_tokens=9, output_tokens=4),
               Recorded((FIXTURES / "reasoning_stream.eventstream").read_bytes()),
               text("A Responses answer."))
    async with daemon(tmp_path, fake) as gw:
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=BOUND) as client:
            message = await client.messages.create(model="claude", max_tokens=100, system="Be kind.",
                                                   messages=user("Hello"))
            assert message.content[0].text == "Hi from Converse."
            assert message.stop_reason == "end_turn"
            assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
            async with client.messages.stream(model="claude", max_tokens=100, messages=user("Stream")) as stream:
                streamed = [piece async for piece in stream.text_stream]
                final = await stream.get_final_message()
            assert "".join(streamed) == "Streamed from Converse." and len(streamed) == 4
            assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4
            async with client.messages.stream(model="claude", max_tokens=100, messages=user("Hello")) as stream:
                final = await stream.get_final_message()
            kinds = [block.type for block in final.content]
            assert kinds == ["thinking", "text"]
            assert final.content[0].thinking.startswith("The user has greeted me")
            assert final.content[1].text == "Hello! It's nice to meet you. How can I help you today?"
        async with openai_sdk(gw) as client:
            response = await client.responses.create(model="claude", input="Hello", instructions="Be brief.",
                                                     max_output_tokens=50)
            assert response.output_text == "A Responses answer."
            assert response.status == "completed"
    assert fake.refused == [] and fake.verified == 4
    assert fake.requests[0]["json"]["system"] == [{"text": "Be kind."}]
    assert fake.requests[3]["json"] == {"system": [{"text": "Be brief."}],
                                        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
                                        "inferenceConfig": {"maxTokens": 50}}


async def test_throttling_and_model_not_ready_are_retried_and_a_broken_stream_ends_with_an_error(tmp_path, fake):
    fake.queue(BedrockError(429, "ThrottlingException", "Too many requests, please wait before trying again."),
               text("after throttling"),
               BedrockError(429, "ModelNotReadyException", "Model is not ready for inference. Wait and try again."),
               text("after warming up"),
               text("never sent", exception_after=0),  # an exception message before any text: retried
               text("Half an answer", pieces=2, exception_after=1,
                    exception=("modelStreamErrorException", "The model stopped.")),
               BedrockError(400, "ValidationException", "A conversation must start with a user message."))
    async with daemon(tmp_path, fake) as gw:
        for expected in ("after throttling", "after warming up"):
            async with gw.session.post(gw.url + "/v1/chat/completions",
                                       json={"model": "claude", "messages": user("hi")}) as response:
                assert response.status == 200
                assert (await response.json())["choices"][0]["message"]["content"] == expected
                assert response.headers["x-gatewayd-attempts"] == "2"
        async with gw.session.post(gw.url + "/v1/chat/completions",
                                   json={"model": "claude", "stream": True, "messages": user("hi")}) as response:
            assert response.status == 200 and response.headers["x-gatewayd-attempts"] == "2"
            raw = (await response.read()).decode()
        # the first try failed before its first piece and was retried; the second broke after one
        assert "Half an" in raw and " answer" not in raw and "The model stopped." in raw
        assert '"error"' in raw and "[DONE]" not in raw
        async with gw.session.post(gw.url + "/v1/chat/completions",
                                   json={"model": "claude", "messages": user("hi")}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert "A conversation must start with a user message." in error["message"]
        status = await gw.status()
    assert fake.calls == 7 and fake.verified == 7
    assert "ValidationException" not in str(status["deployments"]["haiku"]["last_error"] or "")


async def test_a_wrong_secret_is_refused_upstream_and_no_credential_leaks_anywhere(tmp_path, fake):
    wrong = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONGKEY9"
    async with daemon(tmp_path, fake, secret=wrong) as gw:
        async with gw.session.post(gw.url + "/v1/chat/completions",
                                   json={"model": "claude", "messages": user("hi")}) as response:
            assert response.status in (502, 503)
            client_body = await response.text()
        async with gw.session.post(gw.url + "/v1/chat/completions",
                                   json={"model": "safe", "messages": user("fall back")}) as response:
            assert response.status == 200 and response.headers["x-gatewayd-deployment"] == "echo"
        status = await gw.status()
        async with gw.session.get(gw.url + "/admin/explain", params={"model": "safe"}) as response:
            explain = await response.text()
        async with gw.session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
        async with gw.session.get(gw.url + "/admin/requests", params={"limit": "10"}) as response:
            recent = await response.text()
    assert fake.refused == ["InvalidSignatureException"] * 2 and fake.verified == 0
    # AWS's answer quoted the canonical request, session token included: it never goes further
    assert "InvalidSignatureException" in status["deployments"]["haiku"]["last_error"]
    everything = "\n".join([client_body, json.dumps(status), explain, metrics, recent, gw.log()])
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, wrong):
        assert secret not in everything
    assert "[redacted]" in json.dumps(status)


async def test_an_unreadable_frame_is_the_upstreams_protocol_failure(tmp_path, fake):
    good = event("messageStart", {"role": "assistant"})
    corrupt = bytearray(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}))
    corrupt[-1] ^= 0xFF  # the message CRC no longer matches
    fake.queue(Recorded(good + bytes(corrupt)), Recorded(good + bytes(corrupt)))
    async with daemon(tmp_path, fake) as gw:
        async with gw.session.post(gw.url + "/v1/chat/completions",
                                   json={"model": "claude", "stream": True, "messages": user("hi")}) as response:
            body = await response.text()
        status = await gw.status()
    assert "[DONE]" not in body
    assert "malformed event-stream message" in status["deployments"]["haiku"]["last_error"]
    assert fake.calls == 1  # a protocol failure is not retried


@pytest.mark.parametrize(("provider", "imported"), [
    ("demo: {type: mock}", "False"),
    ("demo: {type: bedrock, access_key_id: a, secret_access_key: b}", "True"),
])
def test_botocore_is_imported_only_for_a_bedrock_provider(tmp_path, provider, imported):
    import subprocess
    import sys

    path = tmp_path / "gateway.yaml"
    path.write_text(f"version: 1\nproviders:\n  {provider}\n")
    probe = ("import sys; from gatewayd.daemon.config.load import load; "
             "from gatewayd.daemon.routing.snapshot import AdapterPool; "
             f"AdapterPool().build(load({str(path)!r}, {{}}).graph); "
             "print('botocore' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == imported, result.stderr
