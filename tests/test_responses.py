"""`POST /v1/responses`: the official `openai` SDK's `responses.create` -> the gateway -> an
OpenAI upstream (relayed untouched: recorded OpenAI answers), the mock and an Anthropic upstream
(translated both ways); state kept at OpenAI refused where it cannot be served; fallback across
formats."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest

from tests.fakes import RESPONSES_ANSWER, RESPONSES_STREAM, Hang, Status, deployment_status, eventually
from tests.fakes_native import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    BoundedGateways,
    FakeAnthropic,
    FakeAzure,
    serve,
    text,
    tool_use,
)

BOUND = 10.0
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
async def gateway(gateway):
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


@pytest.fixture
async def anthropic_fake(aiohttp_server):
    return await serve(aiohttp_server, FakeAnthropic())


async def responses_gateway(gateway, openai_fake=None, anthropic_fake=None, *, plan: str = ""):
    providers, models = ["demo: {type: mock}"], ["echo: {provider: demo, model: echo}"]
    if openai_fake is not None:
        providers.append(f'oai: {{type: openai, base_url: "{openai_fake.base_url}", api_key: sk-up, '
                         'retry: {attempts: 1}}')
        models.append("gpt: {provider: oai, model: gpt-4o}")
    if anthropic_fake is not None:
        providers.append(f'claude: {{type: anthropic, base_url: "{anthropic_fake.base_url}", '
                         f'api_key: {ANTHROPIC_KEY}, retry: {{attempts: 1}}}}')
        models.append("haiku: {provider: claude, model: claude-haiku-4-5}")
    indent = "\n          "
    return await gateway(f"""
        version: 1
        providers:
          {indent.join(providers)}
        models:
          {indent.join(models)}
        {plan}
    """)


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)


# --- to an OpenAI upstream: relayed ----------------------------------------------------------

async def test_a_responses_request_reaches_an_openai_upstream_as_it_came(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await responses_gateway(gateway, upstream)
    body = {"model": "gpt", "input": "Say hello", "instructions": "Be brief.", "store": False,
            "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"]}
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(**body)
    response = raw.parse()
    assert raw.headers["x-gatewayd-deployment"] == "gpt"
    assert response.output_text == orjson.loads(RESPONSES_ANSWER)["output"][0]["content"][0]["text"]
    assert await raw.http_response.aread() == RESPONSES_ANSWER  # the upstream's bytes
    (seen,) = upstream.requests
    assert seen["path"] == "/v1/responses" and seen["json"] == {**body, "model": "gpt-4o"}


async def test_a_responses_stream_is_relayed_byte_for_byte(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await responses_gateway(gateway, upstream)
    response = await gw.post("/v1/responses", {"model": "gpt", "input": "hey whats up", "stream": True})
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert await response.read() == RESPONSES_STREAM
    async with sdk(gw) as client:
        stream = await client.responses.create(model="gpt", input="hey whats up", stream=True)
        kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


# --- to other upstreams: translated ----------------------------------------------------------

async def test_a_responses_client_reaches_the_mock(gateway):
    gw = await responses_gateway(gateway)
    async with sdk(gw) as client:
        response = await client.responses.create(model="echo", input="hello there")
        async with client.responses.stream(model="echo", input=[
                {"role": "user", "content": [{"type": "input_text", "text": "one two three"}]}]) as stream:
            streamed = await stream.get_final_response()
    assert response.output_text == "hello there" and response.status == "completed"
    assert response.usage.output_tokens == 2
    assert streamed.output_text == "one two three" and streamed.status == "completed"


async def test_a_responses_client_calls_tools_through_an_anthropic_upstream(gateway, anthropic_fake):
    gw = await responses_gateway(gateway, anthropic_fake=anthropic_fake)
    anthropic_fake.queue(tool_use("get_weather", {"city": "Oslo"}, id="toolu_01"), text("It is 4 °C in Oslo."))
    async with sdk(gw) as client:
        first = await client.responses.create(model="haiku", input="Weather in Oslo?", tools=[WEATHER],
                                              max_output_tokens=200, instructions="Use the tools.")
        (call,) = [item for item in first.output if item.type == "function_call"]
        second = await client.responses.create(model="haiku", max_output_tokens=200, tools=[WEATHER], input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 4}'}])
    assert call.name == "get_weather" and orjson.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id == "toolu_01"
    assert second.output_text == "It is 4 °C in Oslo."
    sent = anthropic_fake.requests[0]["json"]
    assert sent["system"] == "Use the tools." and sent["max_tokens"] == 200
    assert sent["tools"][0]["name"] == "get_weather"
    round_two = anthropic_fake.requests[1]["json"]["messages"]
    assert round_two[1]["content"][0]["type"] == "tool_use" and round_two[1]["content"][0]["id"] == "toolu_01"
    assert round_two[2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_01",
                                          "content": '{"celsius": 4}'}


async def test_state_kept_at_openai_is_refused_only_where_it_cannot_be_served(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await responses_gateway(gateway, upstream)
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="echo", input="and then?", previous_response_id="resp_123")
        served = await client.responses.create(model="gpt", input="and then?", previous_response_id="resp_123")
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "previous_response_id"
    assert served.status == "completed" and upstream.requests[0]["json"]["previous_response_id"] == "resp_123"


async def test_a_failing_openai_deployment_falls_back_to_an_anthropic_one(gateway, fake_openai, anthropic_fake):
    upstream = await fake_openai("oai")
    plan = """aliases:
          smart: {targets: [gpt], fallbacks: [haiku]}"""
    gw = await responses_gateway(gateway, upstream, anthropic_fake, plan=plan)
    upstream.queue(Status(500))
    anthropic_fake.queue(text("from Claude"))
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(model="smart", input="hi", max_output_tokens=50)
    assert raw.parse().output_text == "from Claude"
    assert raw.headers["x-gatewayd-deployment"] == "haiku" and raw.headers["x-gatewayd-attempts"] == "2"


async def test_the_gateways_own_errors_are_openai_shaped(gateway):
    gw = await responses_gateway(gateway)
    async with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.responses.create(model="nope", input="x")
    assert unknown.value.code == "model_not_found"
    empty = await gw.post("/v1/responses", {"model": "echo", "input": ""})
    assert empty.status == 400 and (await empty.json())["error"]["param"] == "input"


async def test_a_translated_stream_that_fails_after_its_first_byte_ends_with_response_failed(
        gateway, anthropic_fake):
    gw = await responses_gateway(gateway, anthropic_fake=anthropic_fake)
    anthropic_fake.queue(text("one two three four five six", error_after=1))
    response = await gw.post("/v1/responses", {"model": "haiku", "input": "count", "stream": True,
                                               "max_output_tokens": 50})
    blocks = (await response.read()).decode().strip().split("\n\n")
    kinds = [block.split("\n")[0].removeprefix("event: ") for block in blocks]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    failed = orjson.loads(blocks[-1].split("data: ", 1)[1])
    assert failed["response"]["status"] == "failed"
    numbers = [orjson.loads(block.split("data: ", 1)[1])["sequence_number"] for block in blocks]
    assert numbers == list(range(len(numbers)))  # the failure goes on from the stream's own numbering


async def test_a_responses_client_is_retried_at_an_openai_deployment(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await gateway(f"""
        version: 1
        providers:
          oai: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up,
                 retry: {{attempts: 2, backoff: {{initial: 1ms, max: 2ms}}}}}}
        models:
          gpt: {{provider: oai, model: gpt-4o}}
    """)
    upstream.queue(Status(503))
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(model="gpt", input="hi")
    assert raw.headers["x-gatewayd-attempts"] == "2" and raw.parse().status == "completed"
    assert [seen["path"] for seen in upstream.requests] == ["/v1/responses", "/v1/responses"]


async def test_an_azure_deployment_gets_the_request_at_its_resources_responses_url(gateway, aiohttp_server):
    azure = FakeAzure(api_version="2025-03-01-preview")
    await serve(aiohttp_server, azure)
    gw = await gateway(f"""
        version: 1
        providers:
          azure: {{type: azure-openai, base_url: "{azure.base_url}", api_key: {AZURE_KEY},
                   api_version: 2025-03-01-preview}}
        models:
          gpt4o: {{provider: azure, model: gpt4o-prod}}
    """)
    async with sdk(gw) as client:
        answer = await client.responses.create(model="gpt4o", input="hi", max_output_tokens=20)
    assert answer.status == "completed" and answer.output_text
    seen = azure.requests[0]
    assert seen["path"] == "/openai/responses" and seen["query"] == {"api-version": "2025-03-01-preview"}
    assert seen["json"] == {"model": "gpt4o-prod", "input": "hi", "max_output_tokens": 20}
    assert seen["headers"]["api-key"] == AZURE_KEY and "Authorization" not in seen["headers"]


# --- clients that go away ----------------------------------------------------------------------

async def test_a_client_leaving_before_the_first_byte_cancels_the_relayed_request(gateway, fake_openai):
    upstream = await fake_openai("oai")
    gw = await responses_gateway(gateway, upstream)
    upstream.queue(Hang(30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as impatient:
        with pytest.raises(TimeoutError):
            async with impatient.post(gw.url + "/v1/responses",
                                      json={"model": "gpt", "input": "hi", "stream": True}) as response:
                await response.read()
    left = time.monotonic()
    assert await eventually(lambda: upstream.disconnects, 2)
    assert upstream.disconnects[0] - left < 2
    gpt = await deployment_status(gw, "gpt")
    assert (gpt["state"], gpt["failures"]) == ("ok", 0)


async def test_a_client_leaving_a_translated_stream_cancels_the_upstream_at_once(gateway, anthropic_fake):
    gw = await responses_gateway(gateway, anthropic_fake=anthropic_fake)
    anthropic_fake.queue(text(" ".join(str(i) for i in range(40)), pieces=40, gap=0.1))
    response = await gw.post("/v1/responses", {"model": "haiku", "input": "count", "stream": True,
                                               "max_output_tokens": 100})
    assert response.status == 200
    deltas = 0
    while deltas < 3:
        line = await asyncio.wait_for(response.content.readline(), 2)
        deltas += line.startswith(b"event: response.output_text.delta")
    left = time.monotonic()
    response.close()
    assert await eventually(lambda: anthropic_fake.disconnects, 2)
    assert anthropic_fake.disconnects[0] - left < 2
    haiku = await deployment_status(gw, "haiku")
    assert (haiku["state"], haiku["failures"]) == ("ok", 0)
