"""One alias across every provider type: Gemini, Bedrock, OpenAI and Anthropic deployments in
one plan, each behind a fake that speaks its own wire format, and a request falling back from
one to the next in whatever format its client speaks."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.fakes import Status
from tests.fakes_bedrock import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SESSION_TOKEN, BedrockError, FakeBedrock
from tests.fakes_gemini import GEMINI_KEY, FakeGemini, rpc_error
from tests.fakes_native import ANTHROPIC_KEY, FakeAnthropic, serve

BOUND = 10.0  # seconds: no SDK call here waits longer


@pytest.fixture
async def fakes(aiohttp_server, fake_openai):
    return {"gemini": await serve(aiohttp_server, FakeGemini()),
            "bedrock": await serve(aiohttp_server, FakeBedrock()),
            "openai": await fake_openai("gpt"),
            "anthropic": await serve(aiohttp_server, FakeAnthropic())}


async def mixed_gateway(gateway, fakes: dict):
    return await gateway(f"""
        version: 1
        providers:
          google: {{type: gemini, base_url: "{fakes['gemini'].base_url}", api_key: "{GEMINI_KEY}",
                    retry: {{attempts: 1}}}}
          aws: {{type: bedrock, base_url: "{fakes['bedrock'].base_url}", region: {REGION},
                 access_key_id: {ACCESS_KEY_ID}, secret_access_key: "{SECRET_ACCESS_KEY}",
                 session_token: "{SESSION_TOKEN}", retry: {{attempts: 1}}}}
          oai: {{type: openai, base_url: "{fakes['openai'].base_url}", api_key: sk-upstream, retry: {{attempts: 1}}}}
          claude: {{type: anthropic, base_url: "{fakes['anthropic'].base_url}", api_key: "{ANTHROPIC_KEY}",
                    retry: {{attempts: 1}}}}
        models:
          flash: {{provider: google, model: gemini-2.5-flash}}
          haiku-bedrock: {{provider: aws, model: "anthropic.claude-3-5-haiku-20241022-v1:0"}}
          mini: {{provider: oai, model: gpt-4o-mini}}
          haiku: {{provider: claude, model: claude-haiku-4-5}}
        aliases:
          everywhere:
            targets: [flash]
            fallbacks: [haiku-bedrock, mini, haiku]
    """)


async def test_an_openai_client_falls_back_across_gemini_bedrock_and_openai(gateway, fakes):
    gw = await mixed_gateway(gateway, fakes)
    fakes["gemini"].queue(rpc_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
    fakes["bedrock"].queue(BedrockError(503, "ServiceUnavailableException", "Service is unavailable."))
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="everywhere", messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-gatewayd-deployment"] == "mini"
    assert raw.headers["x-gatewayd-attempts"] == "3"
    assert raw.parse().choices[0].message.content  # the OpenAI fake's answer, relayed
    assert [fake.calls for fake in fakes.values()] == [1, 1, 1, 0]
    # each upstream was spoken to in its own format
    assert "contents" in fakes["gemini"].requests[0]["json"]
    assert fakes["bedrock"].requests[0]["operation"] == "converse" and fakes["bedrock"].verified == 1
    assert fakes["openai"].requests[0]["json"]["messages"] == [{"role": "user", "content": "hello"}]


async def test_an_anthropic_client_streams_from_the_last_of_four_provider_types(gateway, fakes):
    gw = await mixed_gateway(gateway, fakes)
    fakes["gemini"].queue(rpc_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."))
    fakes["bedrock"].queue(BedrockError())  # throttled
    fakes["openai"].queue(Status(500))
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=BOUND) as client:
        async with client.messages.stream(model="everywhere", max_tokens=64,
                                          messages=[{"role": "user", "content": "hello"}]) as stream:
            text = await stream.get_final_text()
    assert text == "Hello from Claude"  # relayed from the Anthropic fake, the client's own format
    assert [fake.calls for fake in fakes.values()] == [1, 1, 1, 1]
    assert fakes["anthropic"].requests[0]["json"]["stream"] is True
    status = await gw.status()
    failures = {name: shown["failures"] for name, shown in status["deployments"].items()}
    assert failures == {"flash": 1, "haiku-bedrock": 1, "mini": 1, "haiku": 0}  # each counted where it happened
    assert status["deployments"]["flash"]["last_error"].startswith("rate_limit 429")
    assert status["deployments"]["haiku-bedrock"]["last_error"].startswith("rate_limit 429")


async def test_a_client_error_from_gemini_is_the_clients_and_nothing_falls_back(gateway, fakes):
    gw = await mixed_gateway(gateway, fakes)
    fakes["gemini"].queue(rpc_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="everywhere", messages=[{"role": "user", "content": "hi"}])
    assert [fake.calls for fake in fakes.values()] == [1, 0, 0, 0]
