"""HttpAdapter's signing hook: an adapter that overrides `sign` signs every request it sends,
over the final URL, headers and body, and one that does not is left on the unsigned path.

The signing adapter here stands in for Bedrock's SigV4: a keyed hash over the method, the URL as
sent (path and query), a per-request header and the body. The fake upstream on 127.0.0.1
recomputes it from what it received and refuses the request when it does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from textwrap import dedent

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gatewayd.adapters.base import HttpAdapter
from gatewayd.adapters.openai import AzureOpenAIAdapter
from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.exchange import Request
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import Deployment, Provider
from tests.wire import chat_request, stream_request

SIGNING_KEY = b"signing-key-of-the-test"
API_KEY = "azure-key-of-the-test"
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "signed"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
STREAM = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
          b'"delta":{"content":"signed"},"finish_reason":null}]}\n\ndata: [DONE]\n\n')


def signature(key: bytes, method: str, path_qs: str, nonce: str, body: bytes) -> str:
    return hmac.new(key, b"\n".join((method.encode(), path_qs.encode(), nonce.encode(), body)),
                    hashlib.sha256).hexdigest()


class HmacSigningAdapter(AzureOpenAIAdapter):
    """Signs each request with a keyed hash, as SigV4 does. On Azure's adapter, whose URLs carry
    a query: the signature covers the URL's path and query as they are sent."""

    def __init__(self, provider: Provider, key: bytes = SIGNING_KEY) -> None:
        super().__init__(provider)
        self.key = key
        self.nonces = itertools.count()  # a value of each request's own, as SigV4's X-Amz-Date

    def sign(self, method, url, headers, body):
        signed = CIMultiDict(headers)
        nonce = signed["X-Nonce"] = str(next(self.nonces))
        signed["X-Signature"] = signature(self.key, method, url.raw_path_qs, nonce, body)
        return signed


@pytest.fixture
async def verifying_upstream(aiohttp_server):
    """An Azure-shaped upstream that answers only requests signed with SIGNING_KEY; `.seen` holds
    the (path and query, headers, body) of each request that reached it."""
    seen: list[tuple[str, dict, bytes]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.raw_path, dict(request.headers), body))
        expected = signature(SIGNING_KEY, request.method, request.raw_path, request.headers.get("X-Nonce", ""), body)
        if not hmac.compare_digest(expected, request.headers.get("X-Signature", "")):
            return web.json_response({"error": {"message": "signature mismatch", "type": "auth"}}, status=403)
        if orjson.loads(body).get("stream"):
            return web.Response(body=STREAM, content_type="text/event-stream")
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    server.seen = seen
    return server


def deployment_at(server, tmp_path) -> Deployment:
    config = tmp_path / "gateway.yaml"
    config.write_text(dedent(f"""\
        version: 1
        providers:
          signed:
            type: azure-openai
            base_url: {str(server.make_url("")).rstrip("/")}
            api_key: {API_KEY}
            headers: {{X-Team: search}}
        models:
          m: {{provider: signed, model: dep-1}}
        """))
    return load(str(config), env={}).graph.deployments["m"]


async def relayed(stream) -> list[bytes]:
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def chat(content: str, **extra) -> Request:
    return chat_request({"model": "m", "messages": [{"role": "user", "content": content}], **extra})


async def test_a_signing_adapter_signs_each_request_over_its_final_url_headers_and_body(verifying_upstream, tmp_path):
    deployment = deployment_at(verifying_upstream, tmp_path)
    adapter = HmacSigningAdapter(deployment.provider)
    try:
        first = await adapter.chat(deployment, chat("one"))
        second = await adapter.chat(deployment, chat("two, longer"))
        events = await relayed(await adapter.stream(deployment, stream_request(chat("three").body)))
    finally:
        await adapter.close()
    assert orjson.loads(first.body) == orjson.loads(second.body) == ANSWER  # the upstream verified all three
    assert events[-1] == b"data: [DONE]\n\n" and b'"signed"' in events[0]
    paths, headers, bodies = zip(*verifying_upstream.seen, strict=True)
    assert set(paths) == {"/openai/deployments/dep-1/chat/completions?api-version=2024-10-21"}
    assert len({h["X-Signature"] for h in headers}) == 3  # signed anew for each request
    assert [orjson.loads(b)["messages"][0]["content"] for b in bodies] == ["one", "two, longer", "three"]
    for sent in headers:  # the signature comes on top of the provider's own headers
        assert (sent["api-key"], sent["X-Team"], sent["Content-Type"]) == (API_KEY, "search", "application/json")


async def test_the_upstream_refuses_a_request_signed_with_another_key(verifying_upstream, tmp_path):
    deployment = deployment_at(verifying_upstream, tmp_path)
    adapter = HmacSigningAdapter(deployment.provider, key=b"another key")
    try:
        with pytest.raises(UpstreamError) as caught:
            await adapter.chat(deployment, chat("one"))
    finally:
        await adapter.close()
    assert (caught.value.failure, caught.value.status) == (FailureClass.AUTH, 403)
    assert caught.value.message == "signature mismatch"


async def test_an_adapter_that_does_not_sign_sends_its_prebuilt_headers(verifying_upstream, tmp_path):
    deployment = deployment_at(verifying_upstream, tmp_path)
    unsigned, signing = AzureOpenAIAdapter(deployment.provider), HmacSigningAdapter(deployment.provider)
    # the OpenAI path is measured in instructions per request: an adapter that does not override
    # `sign` never calls it, and sends the headers built once for its provider as they are
    assert (unsigned._signs, signing._signs) == (False, True)
    assert HttpAdapter.sign(unsigned, "POST", URL("http://h/p"), unsigned._headers, b"{}") is unsigned._headers
    try:
        with pytest.raises(UpstreamError) as caught:
            await unsigned.chat(deployment, chat("one"))
    finally:
        await unsigned.close()
        await signing.close()
    assert caught.value.status == 403  # it went out unsigned
    sent = verifying_upstream.seen[0][1]
    assert "X-Signature" not in sent and sent["api-key"] == API_KEY
