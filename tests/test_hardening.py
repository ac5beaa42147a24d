"""Bad actors and broken parts: slow clients, adapters that crash, operations a provider lacks."""

from __future__ import annotations

import asyncio
import time

from gatewayd.adapters.mock import MockAdapter
from tests.daemon_proc import Daemon, free_port


async def test_a_client_that_never_finishes_its_headers_is_cut_off(tmp_path):
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
version: 1
server: {{listen: "127.0.0.1:{port}", read_timeout: 500ms}}
providers: {{demo: {{type: mock}}}}
models: {{echo: {{provider: demo, model: echo}}}}
""")
    async with Daemon(config, port, tmp_path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        closed = await asyncio.wait_for(reader.read(), timeout=10)  # b"" once the daemon hangs up
        waited = time.monotonic() - started
        writer.close()
        assert closed == b""
        assert waited < 5  # well before the 10 s bound: read_timeout (0.5 s) applied, not aiohttp's default


async def test_embeddings_on_an_alias_of_chat_only_providers_is_a_client_error(gateway):
    gw = await gateway("""
        version: 1
        providers: {claude: {type: anthropic, base_url: "http://127.0.0.1:9", api_key: sk-ant-x}}
        models: {haiku: {provider: claude, model: claude-haiku-4-5}}
        aliases: {chat: {targets: [haiku]}}
    """)
    response = await gw.post("/v1/embeddings", {"model": "chat", "input": "hello"})
    payload = await response.json()
    assert response.status == 400
    assert payload["error"]["code"] == "unsupported_operation"
    assert "haiku: provider type anthropic cannot serve embeddings" in payload["error"]["message"]


async def test_an_adapter_that_crashes_falls_back_and_is_not_counted_against_its_deployment(
        gateway, monkeypatch, caplog):
    # a bug of the gateway's own, whatever request set it off: one client must not be able to
    # cool a healthy deployment down for everyone by finding it
    gw = await gateway("""
        version: 1
        providers:
          broken: {type: mock}
          good: {type: mock, reply: "from the good one"}
        models:
          first: {provider: broken, model: canned}
          second: {provider: good, model: canned}
        aliases: {chat: {targets: [first, second]}}
    """)
    broken = gw.runtime.holder.current.adapters["broken"]
    real_chat = MockAdapter.chat

    async def crash(self, deployment, body):
        if self is broken:
            raise KeyError("an adapter bug")
        return await real_chat(self, deployment, body)

    monkeypatch.setattr(MockAdapter, "chat", crash)
    response = await gw.chat("chat")
    payload = await response.json()
    assert response.status == 200
    assert payload["choices"][0]["message"]["content"] == "from the good one"
    assert response.headers["x-gatewayd-deployment"] == "second"
    status = await gw.status()
    assert status["deployments"]["first"]["state"] == "ok"
    assert status["deployments"]["first"]["failures"] == 0 and status["deployments"]["first"]["last_error"] is None
    assert "the mock adapter failed unexpectedly" in caplog.text  # logged with its traceback, to be fixed
