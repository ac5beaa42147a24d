"""`POST /v1/messages`: the official `anthropic` SDK -> the gateway -> an Anthropic upstream
(relayed untouched), an OpenAI-compatible one and the mock (translated both ways); errors in
Anthropic's shape, the gateway's own included."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import anthropic
import pytest

from tests.fakes import Ok, Status, Stream, deployment_status, eventually
from tests.fakes_native import (
    ANTHROPIC_KEY,
    AnthropicError,
    BoundedGateways,
    FakeAnthropic,
    FakeOllama,
    serve,
    text,
    tool_use,
)
from tests.fakes_native import Chat as OllamaChat
from tests.wire import recorded_stream

BOUND = 10.0
FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
APP_KEY = "sk-app-messages-0001"
WEATHER = {"name": "get_weather", "description": "Current weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
async def gateway(gateway):
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


@pytest.fixture
async def anthropic_fake(aiohttp_server):
    return await serve(aiohttp_server, FakeAnthropic())


async def messages_gateway(gateway, anthropic_fake=None, openai_fake=None, *, plan: str = "", keys: bool = False):
    providers, models = ["demo: {type: mock}"], ["echo: {provider: demo, model: echo}"]
    if anthropic_fake is not None:
        providers.append(f'claude: {{type: anthropic, base_url: "{anthropic_fake.base_url}", '
                         f'api_key: {ANTHROPIC_KEY}, retry: {{attempts: 1}}}}')
        models.append("haiku: {provider: claude, model: claude-haiku-4-5}")
    if openai_fake is not None:
        providers.append(f'oai: {{type: openai, base_url: "{openai_fake.base_url}", api_key: sk-up, '
                         'retry: {attempts: 1}}')
        models.append("gpt: {provider: oai, model: gpt-4o-mini}")
    indent = "\n          "
    server = f"server: {{auth: {{keys: [{{name: app, key: {APP_KEY}}}]}}}}" if keys else ""
    return await gateway(f"""
        version: 1
        {server}
        providers:
          {indent.join(providers)}
        models:
          {indent.join(models)}
        {plan}
    """)


def client(gw, key: str = "unused") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=BOUND)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


# --- to an Anthropic upstream: relayed -------------------------------------------------------

async def test_an_anthropic_request_reaches_an_anthropic_upstream_as_it_came(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("Paris.", input_tokens=30, output_tokens=3))
    body = {"model": "haiku", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief.",
                                                               "cache_control": {"type": "ephemeral"}}],
            "messages": user("Capital of France?"), "top_k": 5, "metadata": {"user_id": "u-1"}}
    fields = {key: body[key] for key in ("model", "max_tokens", "system", "messages", "metadata")}
    async with client(gw) as sdk:
        raw = await sdk.messages.with_raw_response.create(
            **fields, extra_body={"top_k": 5},
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31", "anthropic-version": "2024-01-01"})
        message = await raw.parse()
    assert message.content[0].text == "Paris." and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 30 and message.usage.output_tokens == 3
    assert raw.headers["x-gatewayd-deployment"] == "haiku"
    (seen,) = anthropic_fake.requests
    assert seen["json"] == {**body, "model": "claude-haiku-4-5"}  # nothing translated, nothing lost
    assert seen["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert seen["headers"]["anthropic-version"] == "2024-01-01"  # the client's, not the provider's default
    assert seen["headers"]["x-api-key"] == ANTHROPIC_KEY  # the provider's key, never the client's


async def test_an_anthropic_stream_is_relayed_byte_for_byte(gateway, anthropic_fake, aiohttp_client):
    gw = await messages_gateway(gateway, anthropic_fake)
    plan = tool_use("get_weather", {"city": "Oslo"}, preamble="Let me check.")
    anthropic_fake.queue(plan, plan)
    body = {"model": "haiku", "max_tokens": 100, "stream": True, "messages": user("Weather in Oslo?"),
            "tools": [WEATHER]}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": ANTHROPIC_KEY}
    async with gw.session.post(anthropic_fake.base_url + "/v1/messages",
                               json={**body, "model": "claude-haiku-4-5"}, headers=headers) as direct:
        expected = await direct.read()
    async with gw.session.post(gw.url + "/v1/messages", json=body, headers=headers) as relayed:
        assert relayed.status == 200 and relayed.headers["Content-Type"].startswith("text/event-stream")
        received = await relayed.read()
    assert received == expected
    assert anthropic_fake.requests[1]["json"]["model"] == "claude-haiku-4-5"


async def test_the_sdk_streams_through_the_gateway(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("The sky is blue because of Rayleigh scattering.", output_tokens=11))
    async with client(gw) as sdk:
        async with sdk.messages.stream(model="haiku", max_tokens=100, messages=user("Why blue?")) as stream:
            pieces = [piece async for piece in stream.text_stream]
            message = await stream.get_final_message()
    assert "".join(pieces) == "The sky is blue because of Rayleigh scattering."
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 11


async def test_an_anthropic_upstreams_refusal_reaches_the_client_as_it_said_it(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(AnthropicError(400, "invalid_request_error", "max_tokens: 100000 > 64000"))
    async with client(gw) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk.messages.create(model="haiku", max_tokens=100000, messages=user("x"))
    assert caught.value.body["error"] == {"type": "invalid_request_error", "message": "max_tokens: 100000 > 64000"}
    assert caught.value.body["request_id"] == "req_011CFakeFake"  # the upstream's own body


# --- to other upstreams: translated ----------------------------------------------------------

async def test_an_anthropic_client_reaches_the_mock(gateway):
    gw = await messages_gateway(gateway)
    async with client(gw) as sdk:
        message = await sdk.messages.create(model="echo", max_tokens=50, messages=user("hello there"))
        async with sdk.messages.stream(model="echo", max_tokens=50, messages=user("one two three")) as stream:
            streamed = await stream.get_final_message()
    assert message.content[0].text == "hello there" and message.role == "assistant"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 2
    assert streamed.content[0].text == "one two three" and streamed.stop_reason == "end_turn"


async def test_an_anthropic_client_reaches_an_openai_upstream(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await messages_gateway(gateway, openai_fake=upstream)
    upstream.queue(Ok("Bonjour."), Stream(pieces=("Bon", "jour", ".")))
    async with client(gw) as sdk:
        message = await sdk.messages.create(model="gpt", max_tokens=50, system="Answer in French.",
                                            messages=user("Hello"), stop_sequences=["END"],
                                            extra_body={"temperature": 0.3})
        async with sdk.messages.stream(model="gpt", max_tokens=50, messages=user("Hello")) as stream:
            pieces = [piece async for piece in stream.text_stream]
            streamed = await stream.get_final_message()
    assert message.content[0].text == "Bonjour." and message.stop_reason == "end_turn"
    assert "".join(pieces) == "Bonjour." and streamed.stop_reason == "end_turn"
    sent = upstream.requests[0]["json"]
    assert sent["model"] == "gpt-4o-mini" and sent["temperature"] == 0.3 and sent["stop"] == ["END"]
    assert sent["messages"] == [{"role": "system", "content": "Answer in French."},
                                {"role": "user", "content": "Hello"}]
    assert upstream.requests[1]["json"]["stream"] is True
    assert upstream.requests[1]["json"]["stream_options"] == {"include_usage": True}


async def test_a_failing_anthropic_deployment_falls_back_to_an_openai_one(gateway, anthropic_fake, fake_openai):
    upstream = await fake_openai("oai")
    plan = """aliases:
          smart: {targets: [haiku], fallbacks: [gpt]}"""
    gw = await messages_gateway(gateway, anthropic_fake, upstream, plan=plan)
    anthropic_fake.queue(AnthropicError(529, "overloaded_error", "Overloaded"))
    upstream.queue(Ok("from the fallback"))
    async with client(gw) as sdk:
        raw = await sdk.messages.with_raw_response.create(model="smart", max_tokens=50, messages=user("hi"))
        message = await raw.parse()
    assert message.content[0].text == "from the fallback"
    assert raw.headers["x-gatewayd-deployment"] == "gpt" and raw.headers["x-gatewayd-attempts"] == "2"


# --- errors, the gateway's own included, in Anthropic's shape --------------------------------

async def test_the_gateways_own_errors_are_anthropic_shaped(gateway):
    gw = await messages_gateway(gateway, keys=True)
    async with client(gw, key="wrong") as sdk:
        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            await sdk.messages.create(model="echo", max_tokens=5, messages=user("x"))
    async with client(gw, key=APP_KEY) as sdk:
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await sdk.messages.create(model="no-such-model", max_tokens=5, messages=user("x"))
    assert unauthenticated.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "the app key is not valid"},
        "request_id": unauthenticated.value.response.headers["x-request-id"]}  # where Anthropic puts its own
    assert unknown.value.body["type"] == "error"
    assert unknown.value.body["error"]["type"] == "not_found_error"
    response = await gw.post("/v1/messages", {"model": "echo", "messages": user("x")},
                             headers={"x-api-key": APP_KEY})  # no max_tokens, as Anthropic refuses it
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    bad_json = await gw.post("/v1/messages", data=b"{not json", headers={"x-api-key": APP_KEY})
    assert bad_json.status == 400 and (await bad_json.json())["type"] == "error"


async def test_no_deployment_available_is_an_anthropic_error_with_retry_after(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await messages_gateway(gateway, openai_fake=upstream)
    upstream.queue(Status(429, headers={"Retry-After": "7"}))
    response = await gw.post("/v1/messages", {"model": "gpt", "max_tokens": 5, "messages": user("x")})
    body = await response.json()
    assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


async def test_a_stream_that_fails_after_its_first_byte_ends_with_an_error_event(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("one two three four five six", error_after=1))
    response = await gw.post("/v1/messages", {"model": "haiku", "max_tokens": 50, "stream": True,
                                              "messages": user("count")})
    raw = (await response.read()).decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    assert events[0] == "message_start" and events[-1] == "error"
    assert "message_stop" not in events
    last = json.loads(raw.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert last["type"] == "error" and last["error"]["type"] in ("overloaded_error", "api_error")


# --- count_tokens ------------------------------------------------------------------------------

async def test_count_tokens_goes_to_the_first_usable_anthropic_deployment(gateway, anthropic_fake, fake_openai):
    upstream = await fake_openai("oai")
    plan = """aliases:
          smart: {targets: [gpt], fallbacks: [haiku]}"""
    gw = await messages_gateway(gateway, anthropic_fake, upstream, plan=plan)
    async with client(gw) as sdk:
        raw = await sdk.messages.with_raw_response.count_tokens(
            model="smart", messages=[*user("one"), {"role": "assistant", "content": "two"}, *user("three")])
        counted = await raw.parse()
    assert counted.input_tokens == 30  # the upstream's count (the fake counts 10 a message)
    assert raw.headers["x-gatewayd-deployment"] == "haiku" and "x-gatewayd-estimate" not in raw.headers
    (seen,) = anthropic_fake.requests
    assert seen["path"] == "/v1/messages/count_tokens" and seen["json"]["model"] == "claude-haiku-4-5"
    assert upstream.requests == []


async def test_count_tokens_is_estimated_when_the_plan_has_no_anthropic_deployment(gateway):
    gw = await messages_gateway(gateway)
    text_ = "word " * 400
    response = await gw.post("/v1/messages/count_tokens", {"model": "echo", "messages": user(text_)})
    assert response.status == 200 and response.headers["x-gatewayd-estimate"] == "true"
    estimate = (await response.json())["input_tokens"]
    assert 400 <= estimate <= 700  # about four characters a token over 2,000 characters of text
    unknown = await gw.post("/v1/messages/count_tokens", {"model": "nope", "messages": user("x")})
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "not_found_error"


# --- GET /v1/models in Anthropic's shape -------------------------------------------------------

async def test_the_model_list_is_anthropic_shaped_for_an_anthropic_client(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    async with client(gw) as sdk:
        page = await sdk.models.list()
        one = await sdk.models.retrieve("haiku")
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk.models.retrieve("nope")
    assert [model.id for model in page.data] == ["echo", "haiku"] and page.has_more is False
    assert one.id == "haiku" and one.type == "model"
    assert missing.value.body["error"]["type"] == "not_found_error"
    async with gw.session.get(gw.url + "/v1/models") as openai_shaped:  # no anthropic-version: OpenAI's
        assert (await openai_shaped.json())["object"] == "list"


# --- retries and cooldowns, as on every endpoint ---------------------------------------------

async def test_an_anthropic_client_is_retried_then_a_cooling_deployment_is_skipped(gateway, fake_openai):
    upstream = await fake_openai("oai")
    plan = """aliases:
          smart: {targets: [gpt], fallbacks: [echo]}"""
    gw = await gateway(f"""
        version: 1
        providers:
          demo: {{type: mock}}
          oai: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up,
                 retry: {{attempts: 2, backoff: {{initial: 1ms, max: 2ms}}}},
                 cooldown: {{failures: 1, initial: 60s}}}}
        models:
          echo: {{provider: demo, model: echo}}
          gpt: {{provider: oai, model: gpt-4o-mini}}
        {plan}
    """)
    upstream.queue(Status(500), Ok("after a retry"))
    async with client(gw) as sdk:
        raw = await sdk.messages.with_raw_response.create(model="smart", max_tokens=20, messages=user("hi"))
        retried = await raw.parse()
        assert retried.content[0].text == "after a retry" and raw.headers["x-gatewayd-attempts"] == "2"
        upstream.queue(Status(500), Status(500))  # both tries fail: it cools down, the mock answers
        fell = await sdk.messages.with_raw_response.create(model="smart", max_tokens=20, messages=user("first"))
        assert (await fell.parse()).content[0].text == "first" and fell.headers["x-gatewayd-deployment"] == "echo"
        calls = upstream.calls
        skipped = await sdk.messages.with_raw_response.create(model="smart", max_tokens=20, messages=user("next"))
        assert skipped.headers["x-gatewayd-deployment"] == "echo" and skipped.headers["x-gatewayd-attempts"] == "1"
    assert upstream.calls == calls  # cooling down: not tried at all
    status = await gw.status()
    assert status["deployments"]["gpt"]["state"] == "cooldown"


async def test_the_access_line_names_the_clients_format(gateway, caplog):
    gw = await messages_gateway(gateway)
    with caplog.at_level("INFO", logger="gatewayd.access"):
        await gw.post("/v1/messages", {"model": "echo", "max_tokens": 5, "messages": user("x")})
        await gw.chat("echo")
        await gw.post("/v1/responses", {"model": "echo", "input": "x"})
    lines = [record.getMessage() for record in caplog.records if record.name == "gatewayd.access"]
    assert [line.split(" format=")[1].split(" ")[0] for line in lines] == ["anthropic", "openai", "responses"]


async def test_a_recorded_thinking_stream_reaches_the_client_byte_for_byte(gateway, anthropic_fake):
    """Thinking blocks, signature deltas and all, from Anthropic's documented stream."""
    stream = recorded_stream(FIXTURES / "docs_thinking_stream.sse")
    assert b"thinking_delta" in stream and b"signature_delta" in stream
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(stream)
    response = await gw.post("/v1/messages", {"model": "haiku", "max_tokens": 20000, "stream": True,
                                              "thinking": {"type": "enabled", "budget_tokens": 16000},
                                              "messages": user("GCD of 1071 and 462?")})
    assert response.status == 200 and await response.read() == stream
    assert anthropic_fake.requests[0]["json"]["thinking"] == {"type": "enabled", "budget_tokens": 16000}


async def test_requests_are_counted_by_the_clients_format(gateway):
    gw = await messages_gateway(gateway)
    await gw.post("/v1/messages", {"model": "echo", "max_tokens": 5, "messages": user("x")})
    await gw.post("/v1/responses", {"model": "echo", "input": "x"})
    await gw.chat("echo")
    async with gw.session.get(gw.url + "/metrics") as scraped:
        lines = [line for line in (await scraped.text()).splitlines() if line.startswith("gatewayd_requests_total{")]
    formats = sorted(line.split('format="')[1].split('"')[0] for line in lines)
    assert formats == ["anthropic", "openai", "responses"]
    assert all(line.endswith(" 1.0") for line in lines)


async def test_an_anthropic_client_reaches_an_ollama_upstream(gateway, aiohttp_server):
    ollama = await serve(aiohttp_server, FakeOllama())
    gw = await gateway(f"""
        version: 1
        providers:
          local: {{type: ollama, base_url: "{ollama.base_url}"}}
        models:
          llama: {{provider: local, model: 'llama3.1:8b'}}
    """)
    ollama.queue(OllamaChat(content="Hello from llama", prompt_eval_count=12, eval_count=4),
                 OllamaChat(content="one two three"))
    async with client(gw) as sdk:
        message = await sdk.messages.create(model="llama", max_tokens=30, system="Be brief.",
                                            messages=user("Hello"), stop_sequences=["END"])
        async with sdk.messages.stream(model="llama", max_tokens=30, messages=user("count")) as stream:
            streamed = await stream.get_final_message()
    assert message.content[0].text == "Hello from llama" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 4)
    assert streamed.content[0].text == "one two three" and streamed.stop_reason == "end_turn"
    sent = ollama.requests[0]["json"]
    assert sent["model"] == "llama3.1:8b" and sent["stream"] is False
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert sent["options"] == {"num_predict": 30, "stop": ["END"]}
    assert ollama.requests[1]["json"]["stream"] is True


# --- clients that go away ----------------------------------------------------------------------

async def leave_after_events(response, events: int) -> float:
    """Read `events` SSE events of `response`, then close it; returns when the client left."""
    seen = 0
    while seen < events:
        line = await asyncio.wait_for(response.content.readline(), 2)
        seen += line.startswith(b"data: ")
    left = time.monotonic()
    response.close()
    return left


async def test_a_client_leaving_a_relayed_stream_cancels_the_upstream_at_once(gateway, anthropic_fake):
    gw = await messages_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text(" ".join(str(i) for i in range(40)), pieces=40, gap=0.1))
    response = await gw.post("/v1/messages", {"model": "haiku", "max_tokens": 100, "stream": True,
                                              "messages": user("count")})
    assert response.status == 200
    left = await leave_after_events(response, 4)
    assert await eventually(lambda: anthropic_fake.disconnects, 2)
    assert anthropic_fake.disconnects[0] - left < 2
    haiku = await deployment_status(gw, "haiku")
    assert (haiku["state"], haiku["failures"]) == ("ok", 0)  # the client left: not the deployment's fault


async def test_a_client_leaving_a_translated_stream_cancels_the_upstream_at_once(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await messages_gateway(gateway, openai_fake=upstream)
    upstream.queue(Stream(pieces=tuple(f"{i} " for i in range(40)), gap=0.1))
    response = await gw.post("/v1/messages", {"model": "gpt", "max_tokens": 100, "stream": True,
                                              "messages": user("count")})
    assert response.status == 200
    left = await leave_after_events(response, 4)
    assert await eventually(lambda: upstream.disconnects, 2)
    assert upstream.disconnects[0] - left < 2
    gpt = await deployment_status(gw, "gpt")
    assert (gpt["state"], gpt["failures"]) == ("ok", 0)
