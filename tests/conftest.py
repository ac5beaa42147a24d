"""Shared fixtures: fake providers on 127.0.0.1 and the real gateway app in front of them."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from gatewayd.daemon.config.load import load
from gatewayd.daemon.http.app import create_app
from gatewayd.daemon.http.connection import GatewayServer
from gatewayd.daemon.http.runtime import Runtime
from tests.fakes import FakeOpenAI


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    runtime: Runtime
    session: aiohttp.ClientSession
    config_path: Path

    async def post(self, path: str, payload=None, *, headers=None, data=None) -> aiohttp.ClientResponse:
        return await self.session.post(self.url + path, json=payload, data=data, headers=headers)

    async def chat(self, model: str = "chat", content: str = "hi", *, headers=None, **extra) -> aiohttp.ClientResponse:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        return await self.post("/v1/chat/completions", body, headers=headers)

    async def status(self, headers=None) -> dict:
        async with self.session.get(self.url + "/admin/status", headers=headers) as response:
            return await response.json()


@pytest.fixture
async def fake_openai(aiohttp_server):
    """Factory: `fake = await fake_openai("A")`; `fake.base_url` is its /v1 root."""

    async def make(name: str = "fake") -> FakeOpenAI:
        fake = FakeOpenAI(name)
        server = await aiohttp_server(fake.app)
        fake.base_url = str(server.make_url("/v1"))
        fake.server = server
        return fake

    return make


class GatewayTestServer(RawTestServer):
    """aiohttp's test server for a low-level handler, on the daemon's own server class."""

    async def _make_runner(self, debug: bool = True, **kwargs) -> web.ServerRunner:
        server = GatewayServer(self._handler, loop=self._loop, debug=debug, **kwargs)
        return web.ServerRunner(server, debug=debug, **kwargs)


@pytest.fixture
async def gateway(tmp_path):
    """Factory: `gw = await gateway(yaml_text, env={})` runs the real app on 127.0.0.1,
    on the daemon's own low-level server (daemon/http/connection.py, as server.py runs it; the
    test server cancels handlers whose client went away, as the daemon does)."""
    sessions = []
    runtimes = []
    servers = []

    async def make(config: str, env: dict | None = None, name: str = "gateway.yaml") -> Gateway:
        path = tmp_path / name
        path.write_text(textwrap.dedent(config))
        loaded = load(str(path), env or {})
        runtime = Runtime(loaded, str(path))
        runtimes.append(runtime)
        server = GatewayTestServer(create_app(runtime))
        servers.append(server)
        await server.start_server(tcp_keepalive=True)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Gateway(str(server.make_url("")).rstrip("/"), runtime, session, path)

    yield make
    for session in sessions:
        await session.close()
    for runtime in runtimes:
        await runtime.close()
    for server in servers:
        await server.close()
