"""Security end to end: canary secrets never leak, upstream redirects are not
followed, and nothing a client sends can point a request (or a key) elsewhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from aiohttp import web

from gatewayd.daemon.config.load import load
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from tests.fakes import Ok, Status, Stream, completion
from tests.fakes_native import (
    AnthropicError,
    BoundedGateways,
    Chat,
    FakeAnthropic,
    FakeOllama,
    OllamaError,
    serve,
    text,
)

PROVIDER_CANARY = "sk-canary-7f3a9c2e51d84b06"
ANTHROPIC_CANARY = "sk-canary-ant-0c4d8e2f9a1b7365"
OLLAMA_CANARY = "sk-canary-oll-5e1f0a9b3c7d2468"
APP_CANARY = "app-canary-e4b2d9a1c7f03865"
FILE_CANARY = "sk-canary-file-93b1c5d7e2f40a68"
CANARIES = (PROVIDER_CANARY, ANTHROPIC_CANARY, OLLAMA_CANARY, APP_CANARY, FILE_CANARY)
BOUND = 10.0
FAST_RETRY = "retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}, cooldown: {failures: 100}"
GATEWAYD = Path(sys.executable).with_name("gatewayd")


@pytest.fixture
async def gateway(gateway):
    """The conftest factory, with every client request bounded in time."""
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


def assert_clean(where: str, text) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for canary in CANARIES:
        assert canary not in text, f"{canary} leaked into {where}: {text[:2000]}"
        assert canary[-12:] not in text, f"part of {canary} leaked into {where}: {text[:2000]}"


class Seen:
    """Everything the client side saw: bodies and headers of every response."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, headers, body: bytes) -> None:
        self.items.append((where, "\n".join(f"{k}: {v}" for k, v in headers.items()) + "\n\n"
                           + body.decode("utf-8", "replace")))

    def check(self) -> None:
        for where, content in self.items:
            assert_clean(where, content)


@pytest.fixture
def capture_everything(caplog, monkeypatch):
    """Every log record of the process at DEBUG, whatever the loggers' own settings."""
    for name in ("gatewayd", "gatewayd.access", "aiohttp", "aiohttp.access", "aiohttp.server", "asyncio"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.DEBUG)
    return caplog


def all_logged(caplog) -> str:
    parts = []
    for record in caplog.records:
        parts.append(f"{record.name} {record.levelname} {record.getMessage()} {record.args!r}")
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
    return "\n".join(parts) + caplog.text


@contextlib.asynccontextmanager
async def watch_events(gw, headers):
    """Collect /admin/events while the block runs."""
    received: list[bytes] = []
    ready = asyncio.Event()

    async def read():
        async with gw.session.get(gw.url + "/admin/events", headers=headers) as response:
            assert response.status == 200
            ready.set()
            async for chunk in response.content.iter_any():
                received.append(chunk)

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(ready.wait(), BOUND)
        yield received
    finally:
        await asyncio.sleep(0.05)  # let the last events arrive
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_canary_secrets_never_leak_even_when_upstreams_echo_them(
        gateway, fake_openai, aiohttp_server, capture_everything, tmp_path):
    caplog = capture_everything
    upstream = await fake_openai("A")
    claude = await serve(aiohttp_server, FakeAnthropic(key=ANTHROPIC_CANARY))
    ollama = await serve(aiohttp_server, FakeOllama())
    (tmp_path / "file-key").write_text(FILE_CANARY + "\n")
    gw = await gateway(f"""
        version: 1
        server:
          auth:
            keys: [{{name: canary-app, key: "${{APP_KEY}}", role: admin}}]
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: "${{PROVIDER_KEY}}", {FAST_RETRY}}}
          filed: {{type: openai, base_url: "{upstream.base_url}", api_key_file: file-key, {FAST_RETRY}}}
          claude: {{type: anthropic, base_url: "{claude.base_url}", api_key: {ANTHROPIC_CANARY}, {FAST_RETRY}}}
          local: {{type: ollama, base_url: "{ollama.base_url}", api_key: {OLLAMA_CANARY}, {FAST_RETRY}}}
          demo: {{type: mock}}
        models:
          m: {{provider: up, model: gpt-4o-mini, pricing: {{input_per_mtok: 1, output_per_mtok: 2}}}}
          f: {{provider: filed, model: gpt-4o-mini}}
          h: {{provider: claude, model: claude-haiku-4-5}}
          l: {{provider: local, model: 'llama3.1:8b'}}
          echo: {{provider: demo, model: echo}}
        aliases:
          chat: {{targets: [m], fallbacks: [echo]}}
          filed-chat: {{targets: [f], fallbacks: [echo]}}
          claude-chat: {{targets: [h], fallbacks: [echo]}}
          local-chat: {{targets: [l], fallbacks: [echo]}}
    """, env={"APP_KEY": APP_CANARY, "PROVIDER_KEY": PROVIDER_CANARY})
    auth = {"Authorization": f"Bearer {APP_CANARY}"}
    seen = Seen()

    async def call(model: str, *, stream: bool = False, headers=auth, content: str = "hi"):
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
        async with await gw.post("/v1/chat/completions", body, headers=headers) as response:
            raw = await response.read()
            seen.add(f"{model} stream={stream} -> {response.status}", response.headers, raw)
            return response.status, raw

    async with watch_events(gw, auth) as events:
        # OpenAI-type upstream echoing the key: in a 401 (fall back), a 400 (passed to the client),
        # 5xx (retried, then the 503's reasons), a 429 with headers, a 200 body and a stream
        echo_message = f"Incorrect API key provided: {PROVIDER_CANARY}. You can find your API key at ..."
        upstream.queue(Status(401, echo_message, type="invalid_request_error",
                              headers={"X-Echo-Key": PROVIDER_CANARY}))
        status, raw = await call("chat")
        assert status == 200 and b'"hi"' in raw
        upstream.queue(Status(400, f"bad request for key {PROVIDER_CANARY}", type="invalid_request_error"))
        status, raw = await call("chat")
        assert status == 400 and b"[redacted]" in raw
        upstream.queue(Status(500, f"boom {PROVIDER_CANARY}"), Status(500, f"boom {PROVIDER_CANARY}"))
        status, raw = await call("m")
        assert status == 503 and b"boom" in raw
        upstream.queue(Status(429, f"slow down {PROVIDER_CANARY}", headers={"Retry-After": "0"}),
                       Status(429, f"slow down {PROVIDER_CANARY}", headers={"Retry-After": "0"}))
        status, raw = await call("chat")
        assert status == 200
        upstream.queue(Ok(f"your key is {PROVIDER_CANARY}, keep it safe"))
        status, raw = await call("chat")
        assert status == 200 and b"[redacted]" in raw
        # (an echo is scrubbed event by event: a key split across two stream events is not recognised)
        upstream.queue(Stream(pieces=("key: ", f"{PROVIDER_CANARY} ", "end")))
        status, raw = await call("chat", stream=True)
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        # the key read from a file
        upstream.queue(Status(401, f"Incorrect API key provided: {FILE_CANARY}"), Ok(f"file {FILE_CANARY}"))
        assert (await call("filed-chat"))[0] == 200
        assert (await call("filed-chat"))[0] == 200
        assert upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {FILE_CANARY}"
        # Anthropic echoing its key
        claude.queue(AnthropicError(401, "authentication_error", f"invalid x-api-key {ANTHROPIC_CANARY}"),
                     AnthropicError(400, "invalid_request_error", f"{ANTHROPIC_CANARY} is not allowed here"),
                     AnthropicError(529, "overloaded_error", f"Overloaded ({ANTHROPIC_CANARY})"),
                     AnthropicError(529, "overloaded_error", f"Overloaded ({ANTHROPIC_CANARY})"),
                     text(f"the key was {ANTHROPIC_CANARY}"), text(f"streamed {ANTHROPIC_CANARY} key", pieces=1))
        assert (await call("claude-chat"))[0] == 200
        assert (await call("claude-chat"))[0] == 400
        assert (await call("claude-chat"))[0] == 200
        assert (await call("claude-chat"))[0] == 200
        assert (await call("claude-chat", stream=True))[0] == 200
        # Ollama behind an authenticating proxy echoing its key
        ollama.queue(OllamaError(500, f"proxy refused {OLLAMA_CANARY}"), OllamaError(500, f"again {OLLAMA_CANARY}"),
                     Chat(f"ollama says {OLLAMA_CANARY}"), Chat(f"streamed {OLLAMA_CANARY}", pieces=1))
        assert (await call("local-chat"))[0] == 200
        assert (await call("local-chat"))[0] == 200
        assert (await call("local-chat", stream=True))[0] == 200
        # the app key: wrong keys, keys in odd places, a key that is almost right
        assert (await call("chat", headers={"x-api-key": APP_CANARY[:-1]}))[0] == 401
        assert (await call("chat", headers={"Authorization": f"Basic {APP_CANARY}"}))[0] == 401
        assert (await call("nope"))[0] == 404
        assert (await call("chat", headers={**auth, "Origin": "http://evil.example"}))[0] == 403
        # the SDK's view, errors included
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=APP_CANARY, max_retries=0,
                                      timeout=BOUND) as client:
            upstream.queue(Status(400, f"sdk sees {PROVIDER_CANARY}", type="invalid_request_error"))
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
            assert_clean("the SDK's error", str(caught.value) + repr(caught.value.body))
        # operations endpoints
        for path in ("/admin/status", "/admin/explain?model=chat", "/admin/explain?model=claude-chat",
                     "/metrics", "/v1/models", "/readyz", "/healthz"):
            async with gw.session.get(gw.url + path, headers=auth) as response:
                assert response.status == 200, path
                seen.add(path, response.headers, await response.read())
    assert upstream.requests[0]["headers"]["Authorization"] == f"Bearer {PROVIDER_CANARY}"  # it was sent upstream
    assert claude.requests[0]["headers"]["x-api-key"] == ANTHROPIC_CANARY
    assert ollama.requests[0]["headers"]["Authorization"] == f"Bearer {OLLAMA_CANARY}"
    status = await gw.status(headers=auth)
    assert status["deployments"]["m"]["last_error"]  # the echoed errors were recorded, scrubbed
    seen.check()
    assert b"event: fallback" in b"".join(events)
    assert_clean("/admin/events", b"".join(events))
    logged = all_logged(caplog)
    assert "gatewayd.access" in logged and "canary-app" in logged  # the key's name is logged, not the key
    assert_clean("the logs", logged)
    assert_clean("the graph's repr", repr(gw.runtime.holder.current) + str(gw.runtime.holder.current.graph))


def test_graph_repr_and_its_parts_show_no_secret(tmp_path):
    (tmp_path / "key").write_text(FILE_CANARY)
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        server:
          auth: {{keys: [{{name: app, key: {APP_CANARY}}}]}}
        providers:
          up: {{type: openai, api_key: {PROVIDER_CANARY}}}
          filed: {{type: anthropic, api_key_file: key}}
        models:
          m: {{provider: up, model: gpt-4o-mini}}
          h: {{provider: filed, model: claude-haiku-4-5}}
    """))
    graph = load(str(path), {}).graph
    parts = [graph, graph.server, *graph.server.keys, *graph.providers.values(), *graph.deployments.values(),
             *graph.routes.values()]
    for part in parts:
        assert_clean(type(part).__name__, repr(part) + str(part))
    assert_clean("the version id", graph.version)
    key = graph.providers["up"].api_key
    assert key.reveal() == PROVIDER_CANARY and f"{key}" == repr(key) == f"Secret(sha256:{key.fingerprint})"
    assert_clean("the identity", repr(graph.deployments["m"].identity) + repr(graph.providers["up"].identity))


HASHED_KEY = "hashed-app-key-3f9c2a71"


async def test_a_key_given_as_its_sha256_authenticates_beside_plain_keys(gateway):
    """The config holds only the digest; the presented key is hashed and compared in constant time."""
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    gw = await gateway(f"""
        version: 1
        server:
          auth:
            keys:
              - {{name: plain, key: {APP_CANARY}}}
              - {{name: hashed, key_sha256: {digest}, allow: [chat]}}
        providers:
          demo: {{type: mock}}
        models:
          echo: {{provider: demo, model: echo}}
        aliases:
          chat: {{targets: [echo]}}
    """)
    assert HASHED_KEY not in gw.config_path.read_text()
    for key, models in ((HASHED_KEY, {"chat"}), (APP_CANARY, {"chat", "echo"})):
        async with gw.session.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200
            assert {entry["id"] for entry in (await response.json())["data"]} == models  # which key it was
    for wrong in (digest, HASHED_KEY[:-1], HASHED_KEY + "x", HASHED_KEY.upper()):
        assert (await gw.chat("chat", headers={"x-api-key": wrong})).status == 401, wrong
    assert (await gw.chat("echo", headers={"x-api-key": HASHED_KEY})).status == 403  # its allow list holds
    redacted = gw.runtime.redact(f"echoed {APP_CANARY} and {HASHED_KEY}")
    assert redacted == f"echoed [redacted] and {HASHED_KEY}"  # a digest holds no key to find in text


def test_gatewayd_check_and_explain_print_no_secret(tmp_path):
    (tmp_path / "anthropic-key").write_text(FILE_CANARY + "\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent("""
        version: 1
        server:
          listen: 0.0.0.0:8080
          auth: {keys: [{name: app, key: "${APP_KEY}"}]}
        providers:
          up: {type: openai, api_key: "${PROVIDER_KEY}"}
          claude: {type: anthropic, api_key_file: anthropic-key}
          unset: {type: openai, api_key: "${UNSET_KEY:-}"}
        models:
          m: {provider: up, model: gpt-4o-mini}
          h: {provider: claude, model: claude-haiku-4-5}
          o: {provider: unset, model: gpt-4o}
        aliases:
          chat: {targets: [h, m, o]}
    """))
    env = {**os.environ, "APP_KEY": APP_CANARY, "PROVIDER_KEY": PROVIDER_CANARY}
    env.pop("CREDENTIALS_DIRECTORY", None)
    for args in (["check", "-c", str(config)], ["explain", "chat", "-c", str(config)]):
        done = subprocess.run([str(GATEWAYD), *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert_clean(f"gatewayd {args[0]}", done.stdout + done.stderr)
    # a config with errors elsewhere: the report names problems, never the secrets
    config.write_text(config.read_text().replace("provider: up,", "provider: upp,"))
    done = subprocess.run([str(GATEWAYD), "check", "-c", str(config)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 1 and "upp" in done.stderr
    assert_clean("gatewayd check errors", done.stdout + done.stderr)


# --- redirects -------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_upstream_redirects_are_not_followed(gateway, fake_openai, aiohttp_server, status):
    upstream = await fake_openai("A")
    elsewhere = await fake_openai("B")
    claude = await serve(aiohttp_server, FakeAnthropic(key=ANTHROPIC_CANARY))
    gw = await gateway(f"""
        version: 1
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: {PROVIDER_CANARY}, {FAST_RETRY}}}
          claude: {{type: anthropic, base_url: "{claude.base_url}", api_key: {ANTHROPIC_CANARY}, {FAST_RETRY}}}
          demo: {{type: mock}}
        models:
          m: {{provider: up, model: gpt-4o-mini}}
          h: {{provider: claude, model: claude-haiku-4-5}}
          echo: {{provider: demo, model: echo}}
        aliases:
          chat: {{targets: [m], fallbacks: [echo]}}
          claude-chat: {{targets: [h], fallbacks: [echo]}}
    """)
    moved = {"Location": elsewhere.base_url + "/chat/completions"}
    upstream.queue(Status(status, "moved", headers=moved), Status(status, "moved", headers=moved),
                   Status(status, "moved", headers=moved))
    claude.queue(AnthropicError(status, "moved", "moved", headers={"Location": elsewhere.base_url + "/messages"}))
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=BOUND) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "fell back"}])
        assert raw.parse().choices[0].message.content == "fell back"
        assert raw.headers["x-gatewayd-deployment"] == "echo"
        assert raw.headers["x-gatewayd-attempts"] == "2"  # a redirect is not retried
        stream = await client.chat.completions.create(model="chat", stream=True,
                                                      messages=[{"role": "user", "content": "streamed"}])
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "streamed"
        raw = await client.chat.completions.with_raw_response.create(
            model="claude-chat", messages=[{"role": "user", "content": "claude fell back"}])
        assert raw.headers["x-gatewayd-deployment"] == "echo"
        with pytest.raises(openai.InternalServerError) as caught:  # nothing else to try: 503, saying why
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert "redirect" in caught.value.message
    assert elsewhere.calls == 0
    assert upstream.calls == 3 and claude.calls == 1
    status_body = await gw.status()
    assert status_body["deployments"]["m"]["last_error"].startswith("redirect")


# --- nothing a client sends picks the upstream -----------------------------------------------

async def test_no_request_field_or_header_redirects_a_request(gateway, fake_openai):
    upstream = await fake_openai("configured")
    elsewhere = await fake_openai("attacker")
    gw = await gateway(f"""
        version: 1
        server:
          auth: {{keys: [{{name: app, key: {APP_CANARY}}}]}}
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: {PROVIDER_CANARY}}}
        models:
          m: {{provider: up, model: gpt-4o-mini}}
        aliases:
          chat: {{targets: [m]}}
    """)
    other = elsewhere.base_url
    other_authority = other.split("/")[2]
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
            "base_url": other, "api_base": other, "url": other + "/chat/completions", "endpoint": other,
            "azure_endpoint": other, "host": other_authority, "provider": {"base_url": other},
            "extra_headers": {"Host": other_authority}, "api_key": "sk-attacker"}
    headers = {"Authorization": f"Bearer {APP_CANARY}", "Host": other_authority,
               "X-Forwarded-Host": other_authority, "X-Forwarded-Proto": "http", "X-Forwarded-Port": "1",
               "Forwarded": f"host={other_authority};proto=http", "X-Original-URL": other,
               "X-Rewrite-URL": other, "X-Upstream": other, "X-Gatewayd-Upstream": other,
               "X-Base-URL": other, "OpenAI-Base-URL": other}
    for stream in (False, True):
        async with gw.session.post(gw.url + "/v1/chat/completions", params={"base_url": other},
                                   json={**body, "stream": stream}, headers=headers) as response:
            assert response.status == 200
            assert b"from configured" in await response.read()
    async with gw.session.post(gw.url + "/v1/embeddings", json={"model": "m", "input": "x", "base_url": other},
                               headers=headers) as response:
        assert response.status == 200
    # a model name that is a URL is just an unknown model
    async with gw.session.post(gw.url + "/v1/chat/completions", headers=headers,
                               json={**body, "model": other + "/chat/completions"}) as response:
        assert response.status == 404
    assert elsewhere.calls == 0
    assert upstream.calls == 3
    for seen in upstream.requests:
        # the configured credential went to the configured host; the app key and the client's headers did not
        assert seen["headers"]["Authorization"] == f"Bearer {PROVIDER_CANARY}"
        assert seen["headers"]["Host"] == upstream.base_url.split("/")[2]
        assert APP_CANARY not in repr(seen)
        assert not any(name.lower().startswith("x-forwarded") for name in seen["headers"])
        assert "X-Upstream" not in seen["headers"] and "Forwarded" not in seen["headers"]


async def test_upstream_cookies_are_never_sent_back_and_provider_headers_go_once(gateway, aiohttp_server):
    """One app's upstream session must not leak into another app's requests: no cookie jar.
    A provider's `headers` replace the gateway's own defaults case-insensitively. (By name, not
    by IP: a cookie jar ignores cookies from IP addresses.)"""
    seen: list = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())
        response = web.json_response(completion("up-model", "hello"))
        response.set_cookie("session", "app-one-secret", path="/")
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(upstream)
    gw = await gateway(f"""
        version: 1
        providers:
          up:
            type: openai
            base_url: "http://localhost:{server.port}/v1"
            api_key: {PROVIDER_CANARY}
            headers: {{user-agent: acme-app/1.0, X-Team: search}}
        models:
          chat: {{provider: up, model: up-model}}
    """)
    for _ in range(2):
        async with await gw.chat("chat") as response:
            assert response.status == 200
    assert len(seen) == 2
    for headers in seen:
        assert headers.getall("User-Agent") == ["acme-app/1.0"]
        assert headers.getall("X-Team") == ["search"]
        assert headers.getall("Authorization") == [f"Bearer {PROVIDER_CANARY}"]
        assert headers.getall("Content-Type") == ["application/json"]
        assert "Cookie" not in headers


HEADER_CANARY = "hdr-canary-2b7e9d4c1a6f8035"
CUSTOM_CANARY = "custom-canary-8d1f4a7c2e9b6053"
BASIC_USER, BASIC_CANARY = "proxyuser", "basic-canary-5c3a8e1f7d2b9046"


async def test_credentials_in_headers_and_base_url_never_leak(gateway, fake_openai, capture_everything):
    """Every credential the config sends upstream is a secret: a header value, its
    token alone, a base_url's user:password and the Basic header it becomes."""
    caplog = capture_everything
    upstream = await fake_openai("A")
    with_userinfo = upstream.base_url.replace("http://", f"http://{BASIC_USER}:{BASIC_CANARY}@")
    gw = await gateway(f"""
        version: 1
        server:
          auth: {{keys: [{{name: ops, key: {APP_CANARY}, role: admin}}]}}
        providers:
          bearer: {{type: openai, base_url: "{upstream.base_url}", headers: {{Authorization: "Bearer ${{HDR_KEY}}"}},
                    {FAST_RETRY}}}
          custom: {{type: openai, base_url: "{upstream.base_url}", headers: {{X-Custom-Key: {CUSTOM_CANARY}}},
                    {FAST_RETRY}}}
          basic: {{type: openai, base_url: "{with_userinfo}", {FAST_RETRY}}}
          demo: {{type: mock}}
        models:
          b: {{provider: bearer, model: gpt-4o-mini}}
          c: {{provider: custom, model: gpt-4o-mini}}
          u: {{provider: basic, model: gpt-4o-mini}}
          echo: {{provider: demo, model: echo}}
        aliases:
          chat: {{targets: [b, c, u], fallbacks: [echo]}}
          b-chat: {{targets: [b], fallbacks: [echo]}}
          c-chat: {{targets: [c], fallbacks: [echo]}}
          u-chat: {{targets: [u], fallbacks: [echo]}}
    """, env={"HDR_KEY": HEADER_CANARY})
    auth = {"Authorization": f"Bearer {APP_CANARY}"}
    basic = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_CANARY}".encode()).decode()
    echoes = (("b-chat", f"Bearer {HEADER_CANARY}"), ("b-chat", HEADER_CANARY), ("c-chat", CUSTOM_CANARY),
              ("u-chat", basic), ("u-chat", basic[6:]), ("u-chat", f"{BASIC_USER}:{BASIC_CANARY}"),
              ("u-chat", BASIC_CANARY))
    seen = Seen()
    async with watch_events(gw, auth) as events:
        for alias, echoed in echoes:
            # the deployment that sent the credential answers with it in a misconfiguration (fall
            # back), in a client error (returned as it came), then in a 200 answer
            upstream.queue(Status(401, f"bad credential {echoed}"))
            async with await gw.chat(alias, headers=auth) as response:
                assert response.status == 200 and response.headers["x-gatewayd-deployment"] == "echo"
            upstream.queue(Status(400, f"not allowed: {echoed}", type="invalid_request_error"))
            async with await gw.chat(alias, headers=auth) as response:
                assert response.status == 400
                seen.add(f"400 echoing {echoed}", response.headers, await response.read())
            upstream.queue(Ok(f"you sent {echoed}"))
            async with await gw.chat(alias, headers=auth) as response:
                assert response.status == 200
                raw = await response.read()
                assert b"[redacted]" in raw
                seen.add(f"200 echoing {echoed}", response.headers, raw)
        for path in ("/admin/status", "/admin/explain?model=chat", "/metrics", "/v1/models"):
            async with gw.session.get(gw.url + path, headers=auth) as response:
                seen.add(path, response.headers, await response.read())
    sent = {request["headers"].get("Authorization") for request in upstream.requests}
    assert {f"Bearer {HEADER_CANARY}", basic} <= sent  # the credentials did go upstream
    assert any(request["headers"].get("X-Custom-Key") == CUSTOM_CANARY for request in upstream.requests)
    canaries = (HEADER_CANARY, CUSTOM_CANARY, BASIC_CANARY, basic[6:])

    def clean(where: str, text) -> None:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for canary in canaries:
            assert canary not in text, f"{canary} leaked into {where}: {text[:2000]}"

    for where, content in seen.items:
        clean(where, content)
    clean("/admin/events", b"".join(events))
    clean("the logs", all_logged(caplog))
    graph = gw.runtime.holder.current.graph
    clean("the graph", repr(graph) + repr(list(graph.providers.values())) + repr(graph.deployments))
    assert BASIC_CANARY not in graph.providers["basic"].base_url


PASTED_KEY = "sk-proj-Wm9vQmFyQmF6UXV4MjAyNnBhc3RlZGtleQ7"  # a key pasted literally where a URL belongs


async def test_a_key_pasted_into_the_wrong_field_shows_in_no_reload_answer_status_or_event(gateway):
    good = "version: 1\nproviders:\n  demo: {type: mock}\nmodels:\n  echo: {provider: demo, model: echo}\n"
    gw = await gateway(good)
    gw.runtime.reloader = reloader = Reloader(gw.runtime, Notifier(None))
    gw.config_path.write_text(good.replace("  demo: {type: mock}\n", "  demo: {type: mock}\n"
                                           f"  up: {{type: openai, base_url: {PASTED_KEY}}}\n"))
    with gw.runtime.events.subscribe() as events:
        answer = await reloader.reload("api")
        event = await asyncio.wait_for(events.next(), BOUND)
    status = await gw.status()
    assert answer["ok"] is False and "sk-p…(" in answer["error"]
    for where, shown in (("the reload's answer", repr(answer)), ("/admin/status", repr(status)),
                         ("the reload event", repr(event))):
        assert PASTED_KEY not in shown and PASTED_KEY[8:24] not in shown, f"the key leaked into {where}: {shown}"
    check = subprocess.run([str(GATEWAYD), "check", "-c", str(gw.config_path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1 and "sk-p…(" in check.stderr + check.stdout
    assert PASTED_KEY not in check.stderr + check.stdout
