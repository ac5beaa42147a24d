"""A first end-to-end check: gateway -> fake OpenAI upstream, with the official SDK."""

import openai


async def test_chat_through_gateway_with_openai_sdk(gateway, fake_openai):
    upstream = await fake_openai("A")
    gw = await gateway(f"""
        version: 1
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up-secret}}
        models:
          m: {{provider: up, model: upstream-model}}
        aliases:
          chat: {{targets: [m]}}
    """)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    answer = await client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    completion = answer.parse()
    assert completion.choices[0].message.content == "from A"
    assert answer.headers["x-gatewayd-deployment"] == "m"
    assert answer.headers["x-gatewayd-attempts"] == "1"
    assert upstream.requests[0]["json"]["model"] == "upstream-model"
    assert upstream.requests[0]["headers"]["Authorization"] == "Bearer sk-up-secret"
    await client.close()
