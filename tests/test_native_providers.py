"""Native providers end to end: the openai SDK -> the gateway -> fake Anthropic, Ollama and Azure
OpenAI servers speaking their own wire formats (tests/fakes_native.py)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes_native import (
    ANTHROPIC_KEY,
    AZURE_API_VERSION,
    AZURE_KEY,
    AnthropicError,
    BoundedGateways,
    Chat,
    FakeAnthropic,
    FakeAzure,
    FakeOllama,
    OllamaError,
    serve,
    split,
    text,
    tool_use,
)

BOUND = 10.0
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}
FAST_RETRY = "retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}"


@pytest.fixture
async def gateway(gateway):
    """The conftest factory, with every client request bounded in time."""
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


@pytest.fixture
async def anthropic_fake(aiohttp_server):
    return await serve(aiohttp_server, FakeAnthropic())


@pytest.fixture
async def ollama_fake(aiohttp_server):
    return await serve(aiohttp_server, FakeOllama())


@pytest.fixture
async def azure_fake(aiohttp_server):
    return await serve(aiohttp_server, FakeAzure())


async def native_gateway(gateway, anthropic_fake=None, ollama_fake=None, azure_fake=None, extra: str = ""):
    providers, models = ["demo: {type: mock}"], ["echo: {provider: demo, model: echo}"]
    if anthropic_fake is not None:
        providers.append(f'claude: {{type: anthropic, base_url: "{anthropic_fake.base_url}", '
                         f'api_key: {ANTHROPIC_KEY}, {FAST_RETRY}}}')
        models.append("haiku: {provider: claude, model: claude-haiku-4-5, "
                      "pricing: {input_per_mtok: 1, output_per_mtok: 5}}")
    if ollama_fake is not None:
        providers.append(f'local: {{type: ollama, base_url: "{ollama_fake.base_url}"}}')
        models.append("llama: {provider: local, model: 'llama3.1:8b'}")
        models.append("nomic: {provider: local, model: nomic-embed-text}")
    if azure_fake is not None:
        providers.append(f'azure: {{type: azure-openai, base_url: "{azure_fake.base_url}", '
                         f'api_key: {AZURE_KEY}, api_version: "{AZURE_API_VERSION}"}}')
        models.append("gpt4o: {provider: azure, model: gpt4o-prod}")
        models.append("azure-embed: {provider: azure, model: embed-prod}")
    indent = "\n          "
    return await gateway(f"""
        version: 1
        providers:
          {indent.join(providers)}
        models:
          {indent.join(models)}
        {extra}
    """)


# --- Anthropic -------------------------------------------------------------------------------

async def test_anthropic_system_prompt_multi_turn_usage_and_headers(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("Paris is the capital of France.", input_tokens=30, output_tokens=8))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="haiku", max_tokens=200, temperature=0.2, stop=["\n\n"], messages=[
                {"role": "system", "content": "You are a geography tutor."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! Ask me anything."},
                {"role": "user", "content": "What is the capital of France?"},
            ])
    completion = raw.parse()
    assert raw.headers["x-gatewayd-deployment"] == "haiku"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 30
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 38
    (seen,) = anthropic_fake.requests
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen["headers"]
    assert seen["json"] == {
        "model": "claude-haiku-4-5", "max_tokens": 200, "temperature": 0.2, "stop_sequences": ["\n\n"],
        "system": "You are a geography tutor.",
        "messages": [{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello! Ask me anything."},
                     {"role": "user", "content": "What is the capital of France?"}],
    }


async def test_anthropic_tool_call_and_tool_result_round_trip(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(tool_use("get_weather", {"city": "Paris", "unit": "celsius"}, id="toolu_01Weather",
                                  preamble="Let me check."))
    async with sdk(gw) as client:
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = await client.chat.completions.create(model="haiku", messages=messages, tools=[WEATHER_TOOL],
                                                     tool_choice="auto")
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me check."
        (call,) = choice.message.tool_calls
        assert call.id == "toolu_01Weather" and call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}

        anthropic_fake.queue(text("It is 18 degrees in Paris."))
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'}]
        second = await client.chat.completions.create(model="haiku", messages=messages, tools=[WEATHER_TOOL])
        assert second.choices[0].message.content == "It is 18 degrees in Paris."
        assert second.choices[0].finish_reason == "stop"
    sent_tools = anthropic_fake.requests[0]["json"]["tools"]
    assert sent_tools == [{"name": "get_weather", "description": "Current weather for a city",
                           "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert anthropic_fake.requests[0]["json"]["tool_choice"] == {"type": "auto"}
    history = anthropic_fake.requests[1]["json"]["messages"]
    assert history[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather",
         "input": {"city": "Paris", "unit": "celsius"}}]}
    assert history[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01Weather", "content": '{"temp": 18}'}]}


async def test_anthropic_streaming_text_via_the_sdk(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("Streaming from Claude works fine.", input_tokens=12, output_tokens=6, pieces=4))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="haiku", messages=user("stream please"), stream=True,
                                                      stream_options={"include_usage": True})
        pieces, finish, usage, roles = [], None, None, []
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.append(choice.delta.role)
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
    assert "".join(pieces) == "Streaming from Claude works fine."
    assert len(pieces) == 4
    assert roles == ["assistant"]
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 6)
    assert anthropic_fake.requests[0]["json"]["stream"] is True
    # the raw relay ends with [DONE], never with an Anthropic event name
    anthropic_fake.queue(text("raw"))
    async with await gw.chat("haiku", stream=True) as response:
        raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b"event:" not in raw and b"message_start" not in raw


async def test_anthropic_streamed_tool_call_is_assembled_by_the_sdk(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    arguments = {"city": "San Francisco, CA", "unit": "fahrenheit"}
    anthropic_fake.queue(tool_use("get_weather", arguments, id="toolu_01Stream", preamble="Checking.",
                                  pieces=5))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="haiku", messages=user("weather?"), stream=True,
                                                      tools=[WEATHER_TOOL])
        content, calls, finish = [], {}, None
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    content.append(choice.delta.content)
                for delta in choice.delta.tool_calls or ():
                    call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function is not None:
                        call["name"] = delta.function.name or call["name"]
                        call["arguments"] += delta.function.arguments or ""
                finish = choice.finish_reason or finish
    assert "".join(content) == "Checking."
    assert list(calls) == [0]
    assert calls[0]["id"] == "toolu_01Stream" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == arguments
    assert finish == "tool_calls"


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
])
async def test_anthropic_stop_reasons(gateway, anthropic_fake, stop_reason, finish_reason):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("cut", stop_reason=stop_reason), text("cut", stop_reason=stop_reason))
    async with sdk(gw) as client:
        completion = await client.chat.completions.create(model="haiku", messages=user("x"))
        assert completion.choices[0].finish_reason == finish_reason
        stream = await client.chat.completions.create(model="haiku", messages=user("x"), stream=True)
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
        assert finishes == [finish_reason]


async def test_anthropic_529_overloaded_is_retried_then_falls_back(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake, extra="""
        aliases:
          smart: {targets: [haiku], fallbacks: [echo]}
    """)
    anthropic_fake.default = AnthropicError(529, "overloaded_error", "Overloaded")
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("fallback"))
        assert raw.parse().choices[0].message.content == "fallback"
        assert raw.headers["x-gatewayd-deployment"] == "echo"
        assert raw.headers["x-gatewayd-attempts"] == "3"
        assert anthropic_fake.calls == 2  # retry.attempts: 2, both overloaded
        stream = await client.chat.completions.create(model="smart", messages=user("stream fallback"), stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "stream fallback"
        assert anthropic_fake.calls == 4
        with pytest.raises(openai.InternalServerError) as caught:  # 503 once nothing is left
            await client.chat.completions.create(model="haiku", messages=user("x"))
        assert caught.value.code == "no_deployment_available"
        assert "Overloaded" in caught.value.message
    status = await gw.status()
    assert "overloaded" in status["deployments"]["haiku"]["last_error"]


async def test_anthropic_client_errors_pass_through_and_bad_key_falls_back_without_retry(
        gateway, anthropic_fake, aiohttp_server):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(AnthropicError(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000"))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="haiku", messages=user("long"))
        assert "prompt is too long" in caught.value.message
        assert caught.value.type == "invalid_request_error"
        assert anthropic_fake.calls == 1  # a client error: one attempt, no retry, no fallback
    wrong = await serve(aiohttp_server, FakeAnthropic(key="another-key"))
    gw = await gateway(f"""
        version: 1
        providers:
          claude: {{type: anthropic, base_url: "{wrong.base_url}", api_key: {ANTHROPIC_KEY}, {FAST_RETRY}}}
          demo: {{type: mock}}
        models:
          haiku: {{provider: claude, model: claude-haiku-4-5}}
          echo: {{provider: demo, model: echo}}
        aliases:
          smart: {{targets: [haiku], fallbacks: [echo]}}
    """, name="wrong.yaml")
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="smart", messages=user("rescued"))
        assert raw.headers["x-gatewayd-deployment"] == "echo"
    assert wrong.calls == 1  # 401: misconfigured, never retried


async def test_anthropic_images_and_embeddings_refusal(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    async with sdk(gw) as client:
        await client.chat.completions.create(model="haiku", messages=user([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]))
        with pytest.raises(openai.APIStatusError) as caught:  # Anthropic has no embeddings API
            await client.embeddings.create(model="haiku", input="x")
        assert "embeddings" in caught.value.message
    assert anthropic_fake.requests[0]["json"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]


async def test_anthropic_in_band_error_mid_stream_ends_with_an_error_event(gateway, anthropic_fake):
    gw = await native_gateway(gateway, anthropic_fake)
    anthropic_fake.queue(text("This answer will be cut off", pieces=3, error_after=1))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="haiku", messages=user("x"), stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received += [c.delta.content for c in chunk.choices if c.delta.content]
        assert "Overloaded" in str(caught.value.message) + repr(caught.value.body)
        # what came before the error, and nothing made up after it
        assert received == split("This answer will be cut off", 3)[:1]
    anthropic_fake.queue(text("cut again", error_after=0))
    async with await gw.chat("haiku", stream=True) as response:
        raw = await response.read()
    assert b"[DONE]" not in raw and b'"error"' in raw
    assert (await gw.status())["deployments"]["haiku"]["failures"] == 2


# --- Ollama ----------------------------------------------------------------------------------

async def test_ollama_chat_with_options(gateway, ollama_fake):
    gw = await native_gateway(gateway, ollama_fake=ollama_fake)
    ollama_fake.queue(Chat("Bonjour!", prompt_eval_count=26, eval_count=5))
    async with sdk(gw) as client:
        completion = await client.chat.completions.create(
            model="llama", temperature=0.3, top_p=0.9, max_tokens=64, seed=7, stop="END",
            messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}])
    assert completion.choices[0].message.content == "Bonjour!"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (26, 5)
    assert completion.model == "llama"
    (seen,) = ollama_fake.requests
    assert seen["path"] == "/api/chat"
    assert seen["json"]["model"] == "llama3.1:8b"
    assert seen["json"]["stream"] is False
    assert seen["json"]["messages"] == [{"role": "system", "content": "Answer in French."},
                                        {"role": "user", "content": "Hello"}]
    options = seen["json"]["options"]
    assert options["temperature"] == 0.3
    assert options["num_predict"] == 64
    assert options["top_p"] == 0.9 and options["seed"] == 7 and options["stop"] == ["END"]
    assert "Authorization" not in seen["headers"]


async def test_ollama_length_stop_and_streaming(gateway, ollama_fake):
    gw = await native_gateway(gateway, ollama_fake=ollama_fake)
    ollama_fake.queue(Chat("cut short", done_reason="length"),
                      Chat("Streaming from llama works.", pieces=4, prompt_eval_count=11, eval_count=6))
    async with sdk(gw) as client:
        cut = await client.chat.completions.create(model="llama", messages=user("x"), max_completion_tokens=2)
        assert cut.choices[0].finish_reason == "length"
        stream = await client.chat.completions.create(model="llama", messages=user("stream"), stream=True,
                                                      stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
    assert "".join(pieces) == "Streaming from llama works."
    assert len(pieces) == 4
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 6)
    assert ollama_fake.requests[0]["json"]["options"]["num_predict"] == 2
    assert ollama_fake.requests[1]["json"]["stream"] is True


async def test_ollama_error_line_mid_stream_ends_with_an_error_event(gateway, ollama_fake):
    gw = await native_gateway(gateway, ollama_fake=ollama_fake)
    ollama_fake.queue(Chat("one two three", pieces=3, error_after=2))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="llama", messages=user("x"), stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received += [c.delta.content for c in chunk.choices if c.delta.content]
        assert "unexpected EOF" in str(caught.value.message) + repr(caught.value.body)
    assert received == split("one two three", 3)[:2]


async def test_ollama_tools_tool_call_and_tool_result(gateway, ollama_fake):
    gw = await native_gateway(gateway, ollama_fake=ollama_fake)
    call = [{"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}}]
    ollama_fake.queue(Chat("", tool_calls=call), Chat("", tool_calls=call), Chat("It is 11 degrees."))
    async with sdk(gw) as client:
        first = await client.chat.completions.create(model="llama", messages=user("Weather in Toronto?"),
                                                     tools=[WEATHER_TOOL])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (tool_call,) = choice.message.tool_calls
        assert tool_call.function.name == "get_weather"
        assert json.loads(tool_call.function.arguments) == {"city": "Toronto"}
        assert tool_call.id
        stream = await client.chat.completions.create(model="llama", messages=user("Weather in Toronto?"),
                                                      tools=[WEATHER_TOOL], stream=True)
        streamed, finish = {}, None
        async for chunk in stream:
            for c in chunk.choices:
                for delta in c.delta.tool_calls or ():
                    entry = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
                finish = c.finish_reason or finish
        assert finish == "tool_calls"
        assert streamed[0]["name"] == "get_weather" and json.loads(streamed[0]["arguments"]) == {"city": "Toronto"}
        messages = [{"role": "user", "content": "Weather in Toronto?"}, choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": tool_call.id, "content": "11 degrees"}]
        final = await client.chat.completions.create(model="llama", messages=messages, tools=[WEATHER_TOOL])
        assert final.choices[0].message.content == "It is 11 degrees."
    assert ollama_fake.requests[0]["json"]["tools"] == [WEATHER_TOOL]
    history = ollama_fake.requests[2]["json"]["messages"]
    assert history[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}}]
    assert history[2] == {"role": "tool", "content": "11 degrees", "tool_name": "get_weather"}


async def test_ollama_embeddings_and_missing_model(gateway, ollama_fake):
    gw = await native_gateway(gateway, ollama_fake=ollama_fake, extra="""
        aliases:
          local-chat: {targets: [llama], fallbacks: [echo]}
    """)
    async with sdk(gw) as client:
        answer = await client.embeddings.create(model="nomic", input=["first", "second"], encoding_format="float")
        assert [d.index for d in answer.data] == [0, 1]
        assert answer.data[0].embedding == [0.1, 0.11, 0.12, 0.13]
        assert answer.usage.prompt_tokens == 8
        ollama_fake.queue(OllamaError(404))
        raw = await client.chat.completions.with_raw_response.create(model="local-chat", messages=user("fb"))
        assert raw.headers["x-gatewayd-deployment"] == "echo"  # model not pulled: 404, fall back
    seen = ollama_fake.requests[0]
    assert seen["path"] == "/api/embed"
    assert seen["json"]["model"] == "nomic-embed-text" and seen["json"]["input"] == ["first", "second"]


# --- Azure OpenAI ----------------------------------------------------------------------------

async def test_azure_openai_deployment_url_api_version_and_key(gateway, azure_fake):
    gw = await native_gateway(gateway, azure_fake=azure_fake)
    azure_fake.queue("Hello from Azure", "streamed from Azure")
    async with sdk(gw) as client:
        completion = await client.chat.completions.create(model="gpt4o", messages=user("hi"))
        assert completion.choices[0].message.content == "Hello from Azure"
        assert completion.usage.total_tokens == 15
        stream = await client.chat.completions.create(model="gpt4o", messages=user("hi"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "streamed from Azure"
        vectors = await client.embeddings.create(model="azure-embed", input="x", encoding_format="float")
        assert vectors.data[0].embedding == [0.5, -0.25, 0.125]
    paths = [r["path"] for r in azure_fake.requests]
    assert paths == ["/openai/deployments/gpt4o-prod/chat/completions"] * 2 + [
        "/openai/deployments/embed-prod/embeddings"]
    for seen in azure_fake.requests:
        assert seen["query"] == {"api-version": AZURE_API_VERSION}
        assert seen["headers"]["api-key"] == AZURE_KEY
        assert "Authorization" not in seen["headers"]


async def test_azure_wrong_api_version_or_key_is_a_misconfigured_deployment(gateway, aiohttp_server):
    fake = await serve(aiohttp_server, FakeAzure(api_version="2025-01-01-preview"))
    gw = await gateway(f"""
        version: 1
        providers:
          azure: {{type: azure-openai, base_url: "{fake.base_url}", api_key: {AZURE_KEY}, {FAST_RETRY}}}
          demo: {{type: mock}}
        models:
          gpt4o: {{provider: azure, model: gpt4o-prod}}
          echo: {{provider: demo, model: echo}}
        aliases:
          chat: {{targets: [gpt4o], fallbacks: [echo]}}
    """)
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=user("fb"))
        assert raw.headers["x-gatewayd-deployment"] == "echo"
    assert fake.calls == 1  # 404: no retry
    assert fake.requests[0]["query"] == {"api-version": "2024-10-21"}  # the default api_version


# --- odd input never becomes a 500 -------------------------------------------------------------

ODD_BODIES = [
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [5, "x", {"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 3}]}]},
    {"messages": [{"role": "assistant", "content": "x", "tool_calls": [5]}]},
    {"messages": [{"role": "assistant", "content": "x", "tool_calls": "call"}]},
    {"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]},
    {"messages": user("hi"), "stop": 5},
    {"messages": user("hi"), "tools": [{"type": "function", "function": "f"}]},
    {"messages": user("hi"), "tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]},
    {"messages": user("hi"), "tool_choice": 5, "tools": [WEATHER_TOOL]},
    {"messages": user("hi"), "max_tokens": "many"},
    {"messages": user("hi"), "n": "two"},
    {"messages": user("hi"), "options": 5, "response_format": "json"},
    {"messages": user("hi"), "response_format": {"type": "json_schema", "json_schema": 5}},
    {"messages": [{"role": "system", "content": 5}, {"role": "user", "content": "x"}]},
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("index", range(len(ODD_BODIES)))
async def test_odd_bodies_for_native_providers_never_cause_a_500(gateway, anthropic_fake, ollama_fake, index,
                                                                 stream):
    gw = await native_gateway(gateway, anthropic_fake, ollama_fake)
    for model in ("haiku", "llama"):
        body = {"model": model, **ODD_BODIES[index], "stream": stream}
        async with await gw.post("/v1/chat/completions", body) as response:
            payload = await response.read()
            assert response.status < 500 or response.status in (502, 503), (model, payload)
            if response.status != 200:
                error = json.loads(payload)["error"]
                assert set(error) == {"message", "type", "code", "param"}
