"""The HTTP API end to end: the real app on 127.0.0.1, official SDK clients where they fit.

Auth and `allow`, error shapes, body limits and timeouts, cross-origin refusal,
unknown paths and methods, health endpoints, the gateway's response headers,
the mock provider, embeddings and the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime, timedelta

import aiohttp
import openai
import orjson
import pytest
from yarl import URL

from gatewayd.daemon.http.api import OpenAIHandlers
from gatewayd.daemon.http.app import healthz
from gatewayd.daemon.http.paths import Routes
from tests.fakes import Large, eventually, fakes, gateway_config
from tests.fakes_native import BoundedGateways

FULL_KEY = "app-key-full-0001"
LIMITED_KEY = "app-key-limited-0001"
ADMIN_KEY = "app-key-ops-0001"
BOUND = 10.0  # seconds: the longest any single wait in these tests may take

MOCK = """
    version: 1
    providers:
      demo: {type: mock, reply: "canned answer"}
    models:
      echo: {provider: demo, model: echo}
      talk: {provider: demo, model: other}
    aliases:
      chat: {targets: [echo]}
"""

AUTH = """
    version: 1
    server:
      auth:
        keys:
          - {name: full, key: app-key-full-0001}
          - {name: limited, key: app-key-limited-0001, allow: [chat]}
          - {name: ops, key: app-key-ops-0001, role: admin}
    providers:
      demo: {type: mock}
    models:
      echo: {provider: demo, model: echo}
      talk: {provider: demo, model: other}
    aliases:
      chat: {targets: [echo]}
"""

ERROR_KEYS = {"message", "type", "code", "param"}


@pytest.fixture
async def gateway(gateway):
    """The conftest factory, with every client request bounded in time."""
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


def sdk(gw, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=BOUND)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


async def answer(response: aiohttp.ClientResponse) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a response, released."""
    async with response:
        return response.status, dict(response.headers), await response.json(content_type=None)


def assert_error(body: dict, code: str, param: str | None = None) -> None:
    assert set(body) == {"error", "request_id"}  # the gateway's own errors name the request
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert body["error"]["param"] == param


async def raw_request(url: str, head: bytes, body: bytes = b"", *, keep_sending: bytes | None = None,
                      gap: float = 0.1) -> tuple[int, bytes, float]:
    """Send raw bytes; optionally keep dribbling `keep_sending` byte by byte.

    Returns (status, the whole answer as far as it came, seconds until the status line arrived).
    """
    target = URL(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), BOUND)
    dribble = None
    try:
        started = time.monotonic()
        writer.write(head + body)
        await writer.drain()
        if keep_sending:
            async def send_slowly():
                for byte in keep_sending:
                    await asyncio.sleep(gap)
                    writer.write(bytes([byte]))
                    await writer.drain()
            dribble = asyncio.create_task(send_slowly())
        status_line = await asyncio.wait_for(reader.readline(), BOUND)
        elapsed = time.monotonic() - started
        rest = b""
        try:
            async with asyncio.timeout(2):
                while b"\r\n\r\n" not in rest or not rest.rstrip().endswith(b"}"):
                    data = await reader.read(65536)
                    if not data:
                        break
                    rest += data
        except TimeoutError:
            pass
        return int(status_line.split()[1]), status_line + rest, elapsed
    finally:
        if dribble is not None:
            dribble.cancel()
            await asyncio.gather(dribble, return_exceptions=True)
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), BOUND)
        except (OSError, TimeoutError):
            pass


def host_of(url: str) -> str:
    return URL(url).raw_authority


# --- auth ------------------------------------------------------------------------------------

async def test_missing_and_wrong_keys_are_401(gateway):
    gw = await gateway(AUTH)
    status, headers, body = await answer(await gw.chat("chat"))
    assert status == 401
    assert_error(body, "missing_api_key")
    status, _, body = await answer(await gw.chat("chat", headers={"Authorization": "Bearer nope"}))
    assert status == 401
    assert_error(body, "invalid_api_key")
    status, _, body = await answer(await gw.chat("chat", headers={"x-api-key": "app-key-full-000"}))
    assert status == 401
    async with sdk(gw, "wrong-key") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="chat", messages=user("hi"))
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_bearer_and_x_api_key_both_work(gateway):
    gw = await gateway(AUTH)
    for headers in ({"Authorization": f"Bearer {FULL_KEY}"}, {"authorization": f"bearer {FULL_KEY}"},
                    {"x-api-key": FULL_KEY}, {"X-Api-Key": LIMITED_KEY}):
        status, _, body = await answer(await gw.chat("chat", content="ping", headers=headers))
        assert status == 200, headers
        assert body["choices"][0]["message"]["content"] == "ping"
    async with sdk(gw, FULL_KEY) as client:  # the SDK sends Authorization: Bearer
        completion = await client.chat.completions.create(model="talk", messages=user("hi"))
        assert completion.choices[0].message.content == "Hello from gatewayd's mock provider."


async def test_allow_list_refuses_other_models_and_lists_only_what_the_key_may_use(gateway):
    gw = await gateway(AUTH)
    status, headers, body = await answer(await gw.chat("talk", headers={"x-api-key": LIMITED_KEY}))
    assert status == 403
    assert_error(body, "model_not_allowed", "model")
    async with sdk(gw, LIMITED_KEY) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model="echo", messages=user("hi"))
        assert caught.value.code == "model_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="talk", input="x")
        ok = await client.chat.completions.create(model="chat", messages=user("allowed"))
        assert ok.choices[0].message.content == "allowed"
        assert [m.id async for m in client.models.list()] == ["chat"]
    async with sdk(gw, FULL_KEY) as client:
        assert sorted([m.id async for m in client.models.list()]) == ["chat", "echo", "talk"]


async def test_models_without_auth_lists_every_alias_and_model(gateway):
    gw = await gateway(MOCK)
    async with sdk(gw) as client:
        page = await client.models.list()
        assert sorted(m.id for m in page.data) == ["chat", "echo", "talk"]
        assert all(m.object == "model" and m.owned_by == "gatewayd" for m in page.data)


@pytest.mark.parametrize("path", ["/admin/status", "/metrics", "/admin/explain?model=chat"])
async def test_admin_endpoints_need_a_key_when_keys_are_configured(gateway, path):
    gw = await gateway(AUTH)
    async with gw.session.get(gw.url + path) as response:
        assert response.status == 401
        assert_error(await response.json(), "missing_api_key")
    async with gw.session.get(gw.url + path, headers={"x-api-key": "wrong"}) as response:
        assert response.status == 401
    async with gw.session.get(gw.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response:
        assert response.status == 200


async def test_admin_endpoints_are_open_without_auth(gateway):
    gw = await gateway(MOCK)
    status = await gw.status()
    assert set(status["deployments"]) == {"echo", "talk"}
    async with gw.session.get(gw.url + "/metrics") as response:
        assert response.status == 200
        assert "gatewayd_requests" in await response.text()
    async with gw.session.get(gw.url + "/admin/explain", params={"model": "chat"}) as response:
        plan = await response.json()
        assert plan["tiers"][0]["candidates"][0]["model"] == "echo"


# --- errors in OpenAI's shape ----------------------------------------------------------------

async def test_unknown_model_is_404_model_not_found(gateway):
    gw = await gateway(MOCK)
    status, headers, body = await answer(await gw.chat("gpt-9"))
    assert status == 404
    assert_error(body, "model_not_found", "model")
    assert body["error"]["type"] == "invalid_request_error"
    assert "gpt-9" in body["error"]["message"]
    assert headers["Content-Type"].startswith("application/json")
    async with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-9", messages=user("hi"))
        assert caught.value.status_code == 404
        assert caught.value.code == "model_not_found"
        assert caught.value.param == "model"
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="nope", input="x")


async def test_413_from_content_length_before_the_body_is_read(gateway):
    gw = await gateway(MOCK + "    server: {max_body: 1KiB}\n")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host_of(gw.url)}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n").encode()
    # a gigabyte announced, 20 bytes sent: the answer must come without waiting for the rest
    status, raw, elapsed = await raw_request(gw.url, head, b'{"model": "chat", "m')
    assert status == 413
    assert elapsed < 3
    body = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    assert_error(body, "request_too_large")
    assert b"x-gatewayd-config" in raw.lower()


async def test_413_on_a_chunked_body_over_max_body(gateway):
    gw = await gateway(MOCK + "    server: {max_body: 1KiB}\n")

    async def body():
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 256
        yield b'"}]}'

    response = await gw.session.post(gw.url + "/v1/chat/completions", data=body(),
                                     headers={"Content-Type": "application/json"})
    status, _, payload = await answer(response)
    assert status == 413
    assert_error(payload, "request_too_large")

    async def small():  # a chunked body under the limit is fine
        yield b'{"model": "chat", "messages": [{"role": "user", '
        yield b'"content": "chunked"}]}'

    response = await gw.session.post(gw.url + "/v1/chat/completions", data=small(),
                                     headers={"Content-Type": "application/json"})
    status, _, payload = await answer(response)
    assert status == 200
    assert payload["choices"][0]["message"]["content"] == "chunked"


@pytest.mark.parametrize(("data", "code", "param"), [
    (b'{"model": "chat", "messages": [', "invalid_json", None),
    (b"", "invalid_json", None),
    (b"\xff\xfe{}", "invalid_json", None),
    (b'[{"model": "chat"}]', "invalid_body", None),
    (b'"chat"', "invalid_body", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_model", "model"),
    (b'{"model": 7, "messages": []}', "missing_model", "model"),
    (b'{"model": "", "messages": []}', "missing_model", "model"),
])
async def test_bad_bodies_are_400(gateway, data, code, param):
    gw = await gateway(MOCK)
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        status, headers, body = await answer(await gw.post(path, data=data,
                                                           headers={"Content-Type": "application/json"}))
        assert status == 400, (path, body)
        assert_error(body, code, param)
        assert headers["Content-Type"].startswith("application/json")


async def test_a_malformed_json_body_is_located_by_line_and_column(gateway):
    gw = await gateway(MOCK)
    data = b'{\n  "model": "chat",\n  "messages": [{"role": "user", "content": nul}]\n}'
    status, _, body = await answer(await gw.post("/v1/chat/completions", data=data,
                                                 headers={"Content-Type": "application/json"}))
    assert status == 400
    assert_error(body, "invalid_json")
    assert body["error"]["message"].startswith("the body is not valid JSON: line 3, column 44: 'nul' ")


async def test_bad_request_via_the_sdk_is_a_bad_request_error(gateway):
    gw = await gateway(MOCK)
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="", messages=user("hi"))
        assert caught.value.code == "missing_model"


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "chat", "messages": "hi"}, 400),
    ({"model": "chat", "messages": 5}, 400),
    ({"model": "chat", "messages": [5, "x"]}, 400),
    ({"model": "chat", "messages": [{"content": "no role"}]}, 400),
    ({"model": "chat", "messages": []}, 400),
    ({"model": "chat", "messages": user("hi"), "stream": True, "stream_options": "yes"}, 400),
    ({"model": "chat", "messages": user("hi"), "stream": True, "stream_options": ["include_usage"]}, 400),
    ({"model": "chat", "messages": user("hi"), "stream": "yes"}, 400),
    ({"model": "chat", "messages": user("hi"), "tools": {"type": "function"}}, 400),
    ({"model": "chat", "messages": user("hi"), "tools": ["get_weather"]}, 400),
    ({"model": "chat"}, 400),
    ({"model": "chat", "messages": None}, 400),
    # content is the provider's to judge: the mock reads what it can
    ({"model": "chat", "messages": [{"role": "user", "content": 5}]}, 200),
    ({"model": "chat", "messages": [{"role": "user", "content": [5, {"type": "text"}]}]}, 200),
])
async def test_odd_chat_bodies_never_cause_a_500(gateway, body, status):
    gw = await gateway(MOCK)
    async with await gw.post("/v1/chat/completions", body) as response:
        raw = await response.read()
    assert response.status == status, raw
    if status == 400:  # OpenAI refuses these too
        error = orjson.loads(raw)
        assert_error(error, error["error"]["code"], error["error"]["param"])
        assert error["error"]["param"] is not None


@pytest.mark.parametrize("body", [
    {"model": "echo", "input": 5},
    {"model": "echo", "input": {"a": 1}},
    {"model": "echo"},
    {"model": "echo", "input": [None, 3]},
])
async def test_odd_embedding_bodies_never_cause_a_500(gateway, body):
    gw = await gateway(MOCK)
    async with await gw.post("/v1/embeddings", body) as response:
        raw = await response.read()
    assert response.status == 400, raw
    assert orjson.loads(raw)["error"]["param"] == "input"


async def test_unknown_path_is_404_json_and_wrong_method_is_405_json(gateway):
    gw = await gateway(MOCK)
    for path in ("/v1/nope", "/nope", "/v1/chat/completions/extra", "/admin/nope"):
        async with gw.session.get(gw.url + path) as response:
            assert response.status == 404, path
            assert_error(await response.json(), "not_found")
            assert response.headers["x-gatewayd-config"] == gw.runtime.holder.current.graph.version
            assert response.headers["x-gatewayd-attempts"] == "0"
    for method, path in (("GET", "/v1/chat/completions"), ("GET", "/v1/embeddings"), ("POST", "/v1/models"),
                         ("DELETE", "/v1/chat/completions"), ("POST", "/healthz")):
        async with gw.session.request(method, gw.url + path) as response:
            assert response.status == 405, (method, path)
            assert response.headers["Content-Type"].startswith("application/json")
            assert_error(await response.json(), "method_not_allowed")
            assert response.headers["x-gatewayd-deployment"] == ""
            allowed = {"/v1/chat/completions": "POST", "/v1/embeddings": "POST", "/v1/models": "GET, HEAD",
                       "/healthz": "GET, HEAD"}[path]
            assert response.headers["Allow"] == allowed, (method, path)


async def test_head_answers_the_get_headers_without_a_body(gateway):
    gw = await gateway(MOCK)
    async with gw.session.get(gw.url + "/healthz") as got:
        body = await got.read()
    async with gw.session.head(gw.url + "/healthz") as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(body)) and body
        assert await head.read() == b""


def test_a_path_and_method_cannot_be_routed_twice():
    routes = Routes()
    routes.get("/x", healthz)
    with pytest.raises(ValueError, match="GET /x is routed twice"):
        routes.get("/x", healthz)


CHUNKED = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(("sent", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "invalid_http"),  # no request line at all
    (b"GET /healthz HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n", 400, "invalid_http"),
    (CHUNKED + b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "invalid_http"),
    (CHUNKED + b"Content-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, "invalid_http"),  # framing twice
    (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431,
     "request_header_too_large"),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 431, "request_header_too_large"),
], ids=["request-line", "header", "chunked-size", "length-and-chunked", "header-too-large", "line-too-large"])
async def test_what_the_http_parser_refuses_is_answered_in_openai_shape(gateway, sent, status, code):
    gw = await gateway(MOCK)
    got, raw, _ = await raw_request(gw.url, sent)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert got == status
    assert b"content-type: application/json" in head.lower()
    assert b"x-gatewayd-config" in head.lower()
    assert_error(orjson.loads(body), code)


async def test_a_handler_failing_unexpectedly_answers_500_in_openai_shape(gateway, monkeypatch):
    def broken(self, request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(OpenAIHandlers, "models", broken)
    gw = await gateway(MOCK)
    status, headers, body = await answer(await gw.session.get(gw.url + "/v1/models"))
    assert status == 500 and headers["Content-Type"].startswith("application/json")
    assert_error(body, "internal_error")
    assert "a bug" not in body["error"]["message"]  # the log says why, not the client


# --- browsers: no cross-origin use, no CORS ---------------------------------------------------

def no_cors(headers) -> None:
    leaked = [name for name in headers if name.lower().startswith("access-control-")]
    assert not leaked, leaked


async def test_cross_origin_browser_requests_are_refused_without_cors_headers(gateway):
    gw = await gateway(MOCK)
    host = host_of(gw.url)
    evil = {"Origin": "http://evil.example", "Host": host}
    for method, path, payload in (("POST", "/v1/chat/completions", {"model": "chat", "messages": user("hi")}),
                                  ("POST", "/v1/embeddings", {"model": "echo", "input": "x"}),
                                  ("GET", "/v1/models", None), ("GET", "/admin/status", None),
                                  ("GET", "/metrics", None), ("GET", "/admin/explain?model=chat", None)):
        async with gw.session.request(method, gw.url + path, json=payload, headers=evil) as response:
            assert response.status == 403, path
            assert_error(await response.json(), "cross_origin")
            no_cors(response.headers)
    # a same-port origin on another host, another port, and the fetch-metadata header alone
    for headers in ({"Origin": f"http://evil.example:{URL(gw.url).port}"},
                    {"Origin": f"http://127.0.0.1:{URL(gw.url).port + 1}"},
                    {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        status, response_headers, body = await answer(await gw.chat("chat", headers=headers))
        assert status == 403, headers
        no_cors(response_headers)
    # preflights get no CORS grant either
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    for path in ("/v1/chat/completions", "/v1/models", "/admin/status"):
        async with gw.session.options(gw.url + path, headers=preflight) as response:
            assert response.status >= 400
            no_cors(response.headers)
    # the same origin, and non-browser clients, are fine; still no CORS headers
    status, response_headers, _ = await answer(await gw.chat("chat", headers={"Origin": gw.url}))
    assert status == 200
    no_cors(response_headers)
    status, response_headers, _ = await answer(await gw.chat("chat"))
    assert status == 200
    no_cors(response_headers)


async def test_dns_rebinding_pages_are_refused(gateway):
    """A page on evil.example whose name now resolves to 127.0.0.1 is same-origin by Origin == Host."""
    gw = await gateway(MOCK)
    port = URL(gw.url).port
    rebound = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
    status, headers, body = await answer(await gw.chat("chat", headers=rebound))
    assert status == 403
    assert_error(body, "cross_origin")
    async with gw.session.get(gw.url + "/admin/status",
                              headers={"Host": f"evil.example:{port}", "Sec-Fetch-Site": "same-origin"}) as response:
        assert response.status == 403
    # SDKs and curl send no browser headers: any Host is fine for them
    status, _, _ = await answer(await gw.chat("chat", headers={"Host": f"gateway.internal:{port}"}))
    assert status == 200
    for name in ("localhost", "127.0.0.1"):
        same = {"Origin": f"http://{name}:{port}", "Host": f"{name}:{port}"}
        status, _, _ = await answer(await gw.chat("chat", headers=same))
        assert status == 200, name


async def test_odd_browser_and_key_headers_never_cause_a_500(gateway):
    gw = await gateway(AUTH)
    port = URL(gw.url).port
    for extra in (b"Origin: http://[evil\r\n", b"Origin: http://evil.example:99999\r\n",
                  b"x-api-key: \xff\xfe\xfd\r\n", b"Authorization: Bearer \xc3\x28\r\n",
                  b"Origin: \xff\r\n"):
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n" % port) + extra + b"\r\n"
        status, raw, _ = await raw_request(gw.url, head, b"{}")
        assert status in (400, 401, 403), (extra, raw)


# --- health ----------------------------------------------------------------------------------

async def test_healthz_and_readyz(gateway):
    gw = await gateway(MOCK)
    async with gw.session.get(gw.url + "/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    async with gw.session.get(gw.url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_readyz_is_503_when_every_provider_is_disabled(gateway):
    gw = await gateway("""
        version: 1
        providers:
          up: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${OPENAI_API_KEY:-}"}
          claude: {type: anthropic, api_key: ""}
        models:
          m: {provider: up, model: gpt-4o-mini}
          c: {provider: claude, model: claude-haiku-4-5}
        aliases:
          chat: {targets: [m, c]}
    """)
    async with gw.session.get(gw.url + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["status"] == "not_ready"
    async with gw.session.get(gw.url + "/healthz") as response:
        assert response.status == 200
    status, headers, body = await answer(await gw.chat("chat"))
    assert status == 503
    assert_error(body, "no_deployment_available")
    assert "disabled" in body["error"]["message"]


# --- the gateway's headers -------------------------------------------------------------------

def assert_gateway_headers(headers, graph_version: str, deployment: str | None = None,
                           attempts: int | None = None) -> None:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("x-gatewayd-deployment", "x-gatewayd-attempts", "x-gatewayd-config"):
        assert name in lowered, (name, dict(headers))
    assert lowered["x-gatewayd-config"] == graph_version
    if deployment is not None:
        assert lowered["x-gatewayd-deployment"] == deployment
    if attempts is not None:
        assert lowered["x-gatewayd-attempts"] == str(attempts)


async def test_every_v1_response_carries_the_gateway_headers(gateway):
    gw = await gateway("""
        version: 1
        server:
          auth:
            keys: [{name: app, key: app-key-full-0001, allow: [chat, echo, broken]}]
        providers:
          demo: {type: mock}
          flaky: {type: mock, fail_rate: 1.0}
        models:
          echo: {provider: demo, model: echo}
          talk: {provider: demo, model: other}
          broken: {provider: flaky, model: other, retry: {attempts: 2, backoff: {initial: 1ms, max: 2ms}}}
        aliases:
          chat: {targets: [echo]}
    """)
    version = gw.runtime.holder.current.graph.version
    auth = {"x-api-key": FULL_KEY}
    cases = [
        (gw.chat("chat", headers=auth), 200, "echo", 1),
        (gw.chat("chat", stream=True, headers=auth), 200, "echo", 1),
        (gw.post("/v1/embeddings", {"model": "echo", "input": "x"}, headers=auth), 200, "echo", 1),
        (gw.chat("broken", headers=auth), 503, "", 2),  # nothing answered
        (gw.chat("chat"), 401, None, 0),
        (gw.chat("talk", headers=auth), 403, None, 0),
        (gw.chat("nope", headers=auth), 404, None, 0),
        (gw.post("/v1/chat/completions", data=b"{", headers=auth), 400, None, 0),
    ]
    for call, status, deployment, attempts in cases:
        async with await call as response:
            await response.read()
            assert response.status == status
            assert_gateway_headers(response.headers, version, deployment, attempts)
    async with gw.session.get(gw.url + "/v1/models", headers=auth) as response:
        assert response.status == 200
        assert_gateway_headers(response.headers, version)
    async with gw.session.get(gw.url + "/v1/models") as response:
        assert response.status == 401
        assert_gateway_headers(response.headers, version)
    async with sdk(gw, FULL_KEY) as client:
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=user("hi"))
        assert_gateway_headers(raw.headers, version, "echo", 1)


# --- the mock provider -----------------------------------------------------------------------

async def test_mock_echo_repeats_the_last_user_message(gateway):
    gw = await gateway(MOCK)
    async with sdk(gw) as client:
        completion = await client.chat.completions.create(model="echo", messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}]},
        ])
        assert completion.choices[0].message.content == "second question"
        assert completion.choices[0].message.role == "assistant"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == "echo"
        assert completion.usage.completion_tokens == 2
        assert completion.usage.prompt_tokens == 2 + 2 + 2 + 2
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 2


async def test_mock_other_models_answer_reply(gateway):
    gw = await gateway("""
        version: 1
        providers:
          demo: {type: mock, reply: "canned answer"}
          stock: {type: mock}
        models:
          talk: {provider: demo, model: other}
          stock-talk: {provider: stock, model: anything}
    """)
    async with sdk(gw) as client:
        first = await client.chat.completions.create(model="talk", messages=user("what?"))
        assert first.choices[0].message.content == "canned answer"
        second = await client.chat.completions.create(model="stock-talk", messages=user("what?"))
        assert second.choices[0].message.content == "Hello from gatewayd's mock provider."


async def test_mock_streaming_via_the_sdk(gateway):
    gw = await gateway(MOCK)
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="chat", messages=user("stream these four words"),
                                                      stream=True, stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        async for event in stream:
            if event.usage is not None:
                usage = event.usage
            for choice in event.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
        assert "".join(pieces) == "stream these four words"
        assert len(pieces) == 4
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens == 4
    # the raw stream is SSE ending with [DONE]
    async with await gw.chat("talk", stream=True) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b"canned" in raw and b"answer" in raw


async def test_mock_fail_rate_one_fails_and_falls_back(gateway):
    gw = await gateway("""
        version: 1
        providers:
          flaky: {type: mock, fail_rate: 1.0}
          demo: {type: mock}
        models:
          broken: {provider: flaky, model: other, retry: {attempts: 3, backoff: {initial: 1ms, max: 2ms}}}
          echo: {provider: demo, model: echo}
        aliases:
          chat: {targets: [broken], fallbacks: [echo]}
          only-broken: {targets: [broken]}
    """)
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=user("rescued"))
        assert raw.parse().choices[0].message.content == "rescued"
        assert raw.headers["x-gatewayd-deployment"] == "echo"
        assert raw.headers["x-gatewayd-attempts"] == "4"  # 3 tries at broken (503 is retried), 1 at echo
        stream = await client.chat.completions.create(model="chat", messages=user("streamed rescue"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "streamed rescue"
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="only-broken", messages=user("x"))
        assert caught.value.status_code == 503
        assert caught.value.code == "no_deployment_available"
        assert "broken" in caught.value.message and "fail_rate" in caught.value.message
        with pytest.raises(openai.InternalServerError):
            await client.embeddings.create(model="broken", input="x")
    status = await gw.status()
    assert status["deployments"]["broken"]["failures"] >= 1 or status["deployments"]["broken"]["state"] == "cooldown"


# --- embeddings ------------------------------------------------------------------------------

async def test_embeddings_via_the_sdk_through_the_mock_and_the_openai_fake(gateway, fake_openai):
    upstream = await fake_openai("E")
    gw = await gateway(f"""
        version: 1
        providers:
          demo: {{type: mock}}
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up-embed}}
        models:
          local-embed: {{provider: demo, model: embed}}
          remote-embed: {{provider: up, model: text-embedding-3-small}}
    """)
    async with sdk(gw) as client:
        local = await client.embeddings.create(model="local-embed", input=["alpha", "beta gamma"],
                                               encoding_format="float")
        assert [d.index for d in local.data] == [0, 1]
        assert all(len(d.embedding) == 16 for d in local.data)
        assert local.data[0].embedding != local.data[1].embedding
        again = await client.embeddings.create(model="local-embed", input="alpha", encoding_format="float")
        assert again.data[0].embedding == local.data[0].embedding  # deterministic
        assert local.usage.prompt_tokens == 3
        raw = await client.embeddings.with_raw_response.create(model="remote-embed", input="hello",
                                                               encoding_format="float")
        remote = raw.parse()
        assert remote.data[0].embedding == [0.1, 0.2, 0.3]
        assert raw.headers["x-gatewayd-deployment"] == "remote-embed"
    seen = upstream.requests[-1]
    assert seen["path"] == "/v1/embeddings"
    assert seen["json"]["model"] == "text-embedding-3-small"
    assert seen["json"]["input"] == "hello"
    assert seen["headers"]["Authorization"] == "Bearer sk-up-embed"


# --- the access log --------------------------------------------------------------------------

def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gatewayd.access"]


FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def fields_of(line: str) -> dict[str, str]:
    """`name=value` pairs of a text access line; quoted values are JSON strings, decoded."""
    fields: dict[str, str] = {}
    for name, value in FIELD.findall(line.split(" ", 3)[3]):
        assert name not in fields, f"{name} twice in {line!r}"
        fields[name] = json.loads(value) if value.startswith('"') else value
    return fields


async def test_access_log_one_line_per_request_with_usage_and_cost(gateway, fake_openai, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.access")
    upstream = await fake_openai("A")
    gw = await gateway(f"""
        version: 1
        server:
          auth:
            keys: [{{name: billing-app, key: app-key-full-0001}}]
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up-secret}}
        models:
          m: {{provider: up, model: gpt-4o-mini, pricing: {{input_per_mtok: 1000, output_per_mtok: 2000}}}}
        aliases:
          chat: {{targets: [m]}}
    """)
    auth = {"x-api-key": FULL_KEY}
    for call in (gw.chat("chat", headers=auth), gw.chat("nope", headers=auth), gw.chat("chat")):
        async with await call as response:
            await response.read()
    lines = access_lines(caplog)
    assert len(lines) == 3, lines
    ok, missing, unauthorised = lines
    assert ok.startswith("POST /v1/chat/completions 200 ")
    fields = fields_of(ok)
    assert fields["model"] == "chat"
    assert fields["deployment"] == "m"
    assert fields["attempts"] == "1"
    assert float(fields["latency_ms"]) >= 0
    assert fields["prompt_tokens"] == "9" and fields["completion_tokens"] == "3"
    assert float(fields["cost"]) == pytest.approx((9 * 1000 + 3 * 2000) / 1e6)
    assert fields["key"] == "billing-app"
    assert fields["config"] == gw.runtime.holder.current.graph.version
    assert missing.startswith("POST /v1/chat/completions 404 ")
    assert fields_of(missing)["model"] == "nope"
    assert unauthorised.startswith("POST /v1/chat/completions 401 ")
    assert FULL_KEY not in "\n".join(lines)
    assert "sk-up-secret" not in "\n".join(lines)


async def test_access_log_for_streams_counts_usage(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.access")
    gw = await gateway(MOCK.replace("echo: {provider: demo, model: echo}",
                                    "echo: {provider: demo, model: echo, pricing: {input_per_mtok: 1000000}}"))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="chat", messages=user("one two three"), stream=True)
        async for _ in stream:
            pass
    (line,) = access_lines(caplog)
    fields = fields_of(line)
    assert line.startswith("POST /v1/chat/completions 200 ")
    assert fields["deployment"] == "echo"
    assert fields["prompt_tokens"] == "3" and fields["completion_tokens"] == "3"
    assert float(fields["cost"]) == pytest.approx(3.0)
    assert "ttfb_ms" in fields


async def test_access_log_json_format(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.access")
    gw = await gateway(MOCK.replace("version: 1", "version: 1\n    server: {log_format: json}", 1))
    for call in (gw.chat("chat", content="a b"), gw.chat("missing"),
                 gw.post("/v1/chat/completions", data=b"{oops")):
        async with await call as response:
            await response.read()
    async with gw.session.get(gw.url + "/v1/models") as response:
        await response.read()
    records = [orjson.loads(line) for line in access_lines(caplog)]
    assert [r["status"] for r in records] == [200, 404, 400, 200]
    first = records[0]
    assert first["model"] == "chat" and first["deployment"] == "echo" and first["attempts"] == 1
    assert first["prompt_tokens"] == 2 and first["completion_tokens"] == 2
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions"
    assert isinstance(first["latency_ms"], float)
    for record in records:  # as every JSON line of the daemon
        assert record["level"] == "info" and record["event"] == "access"
        assert record["msg"] == f"{record['method']} {record['path']} {record['status']}"
        assert datetime.fromisoformat(record["ts"]).utcoffset() == timedelta(0)
    assert records[2]["error"].startswith("the body is not valid JSON")
    assert records[3]["path"] == "/v1/models"


async def test_access_log_lines_cannot_be_forged_or_flooded(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.access")
    gw = await gateway(MOCK)
    forged = 'nope" status=200\nPOST /v1/chat/completions 200 model=chat deployment=echo\r\x1b[2J\u2028x'
    for model in (forged, "m" * 100_000):
        async with await gw.chat(model) as response:
            assert response.status == 404
    forged_line, long_line = access_lines(caplog)
    for line in (forged_line, long_line):
        assert line.isprintable(), line  # one line, no control characters
        assert line.startswith("POST /v1/chat/completions 404 ")
        assert len(line) < 3000
    fields = fields_of(forged_line)
    assert fields["model"] == forged  # quoted and escaped as a JSON string, so it reads back exactly
    assert forged in fields["error"]
    assert "status" not in fields and "deployment" not in fields
    assert fields_of(long_line)["model"].endswith("...[truncated 99744 characters]")


# --- slow clients ----------------------------------------------------------------------------

async def test_a_client_dribbling_its_body_gets_408(gateway):
    gw = await gateway(MOCK + "    server: {read_timeout: 300ms}\n")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host_of(gw.url)}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n").encode()
    # one byte every 100 ms: 20 s for the whole body, far beyond the 300 ms allowed
    status, raw, elapsed = await raw_request(gw.url, head, b"{", keep_sending=b'"model": "chat"' * 20, gap=0.1)
    assert status == 408
    assert 0.25 <= elapsed < 3
    assert_error(orjson.loads(raw.partition(b"\r\n\r\n")[2]), "request_timeout")


async def test_a_body_within_read_timeout_is_served(gateway):
    gw = await gateway(MOCK + "    server: {read_timeout: 2s}\n")
    body = orjson.dumps({"model": "chat", "messages": user("slow but in time")})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host_of(gw.url)}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    status, raw, _ = await raw_request(gw.url, head, body[:10], keep_sending=body[10:], gap=0.005)
    assert status == 200
    assert b"slow but in time" in raw


# --- upstream answers are bounded (server.max_upstream_body) ----------------------------------

HUGE = 50 * 1024 * 1024  # far more than the socket buffers between the fake and the gateway hold


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_an_upstream_answer_past_max_upstream_body_falls_back_unread(gateway, fake_openai, stream):
    ups = await fakes(fake_openai, "big", "small")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["big", "small"]}},
                                      server={"max_upstream_body": "1MiB"}))
    ups["big"].queue(Large(HUGE, chunked=True, event_stream=stream))
    async with await gw.chat(stream=stream) as response:
        assert response.status == 200
        assert response.headers["x-gatewayd-deployment"] == "small"
        assert b"from small" in await response.read()
    last_error = (await gw.status())["deployments"]["big"]["last_error"]
    assert last_error.startswith("protocol") and "max_upstream_body" in last_error
    assert await eventually(lambda: ups["big"].written, BOUND)
    assert ups["big"].written[0] < HUGE // 2  # the gateway closed the connection instead of reading on
