"""What one client sends harms nobody else: no request, however built, changes the health of
any deployment. A request the gateway cannot forward is that client's
400, and no failure of the deployment (an adapter's own bug is not one either: test_hardening)."""

from __future__ import annotations

import pytest

from gatewayd.daemon.core.conversation import MAX_NESTING
from tests.fakes_native import ANTHROPIC_KEY, FakeAnthropic, FakeOllama, serve

# One counted failure would put a deployment into cooldown: any harm shows at once.
TOUCHY = "cooldown: {failures: 1, initial: 60s}, retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}"


def nested(levels: int) -> bytes:
    """A JSON array nested `levels` deep: small, valid, and deeper than orjson writes."""
    return b"[" * levels + b"]" * levels


def deep_body(model: str, operation: str, levels: int, *, stream: bool = False) -> bytes:
    deep = nested(levels)
    if operation == "embeddings":
        return b'{"model": "%s", "input": "hi", "metadata": {"x": %s}}' % (model.encode(), deep)
    tool = b'{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": %s}}}' % deep
    return (b'{"model": "%s", "stream": %s, "messages": [{"role": "user", "content": "hi"}], "tools": [%s]}'
            % (model.encode(), b"true" if stream else b"false", tool))


@pytest.fixture
async def touchy_gateway(gateway, fake_openai, aiohttp_server):
    first, second = await fake_openai("A"), await fake_openai("B")
    claude = await serve(aiohttp_server, FakeAnthropic())
    ollama = await serve(aiohttp_server, FakeOllama())
    gw = await gateway(f"""
        version: 1
        defaults: {{{TOUCHY}}}
        providers:
          a: {{type: openai, base_url: "{first.base_url}"}}
          b: {{type: openai, base_url: "{second.base_url}"}}
          claude: {{type: anthropic, base_url: "{claude.base_url}", api_key: {ANTHROPIC_KEY}}}
          local: {{type: ollama, base_url: "{ollama.base_url}"}}
        models:
          a: {{provider: a, model: gpt-4o-mini}}
          b: {{provider: b, model: gpt-4o-mini}}
          h: {{provider: claude, model: claude-haiku-4-5}}
          l: {{provider: local, model: 'llama3.1:8b'}}
        aliases:
          chat: {{targets: [a, b]}}
          claude-chat: {{targets: [h, a]}}
          local-chat: {{targets: [l, a]}}
    """)
    return gw, (first, second, claude, ollama)


async def healthy_everywhere(gw) -> None:
    deployments = (await gw.status())["deployments"]
    for name, state in deployments.items():
        assert state["state"] == "ok" and state["failures"] == 0 and state["last_error"] is None, (name, state)


@pytest.mark.parametrize(("model", "operation", "stream"), [
    ("chat", "chat", False), ("chat", "chat", True), ("chat", "embeddings", False),
    ("claude-chat", "chat", False), ("claude-chat", "chat", True),
    ("local-chat", "chat", False), ("local-chat", "chat", True),
])
async def test_a_body_too_deep_to_forward_is_the_clients_400_and_harms_no_deployment(
        touchy_gateway, model, operation, stream):
    gw, fakes = touchy_gateway
    path = "/v1/embeddings" if operation == "embeddings" else "/v1/chat/completions"
    body = deep_body(model, operation, MAX_NESTING + 46, stream=stream)
    for _ in range(3):
        async with await gw.post(path, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error"
    assert all(fake.calls == 0 for fake in fakes)  # refused before anything went upstream
    await healthy_everywhere(gw)
    async with await gw.chat(model) as response:  # and the next client is served at once
        assert response.status == 200
        assert response.headers["x-gatewayd-attempts"] == "1"


async def test_a_body_just_within_the_nesting_limit_is_forwarded(touchy_gateway):
    gw, (first, *_rest) = touchy_gateway
    # the tool's "x" sits 6 levels down: the whole body is exactly MAX_NESTING deep
    body = deep_body("chat", "chat", MAX_NESTING - 6)
    async with await gw.post("/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
    assert first.calls == 1
