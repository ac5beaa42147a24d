"""Fake native providers: real aiohttp servers on 127.0.0.1 speaking Anthropic's
Messages API, Ollama's native API and Azure OpenAI's deployment URLs, scripted
per test and recording what they received.

Like tests/fakes.py, a test queues behaviours (`fake.queue(...)`); each request
takes the next one and `default` answers once the queue is empty. Every fake
checks the credential and version headers its real counterpart requires and
answers a wrong one the way the real service does.

Shapes follow the providers' API references:
- Anthropic: POST /v1/messages -> a `message` object; with `stream: true`, SSE
  events `message_start`, `content_block_start`, `ping`, `content_block_delta`
  (`text_delta` / `input_json_delta`), `content_block_stop`, `message_delta`,
  `message_stop`; errors `{"type": "error", "error": {"type", "message"}}`
  (529 `overloaded_error`).
- Ollama: POST /api/chat -> one JSON object, or NDJSON lines ending with a
  `done: true` line carrying the eval counts; POST /api/embed -> `embeddings`.
- Azure OpenAI: POST /openai/deployments/{deployment}/chat/completions and
  /embeddings with `?api-version=` and the `api-key` header.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.fakes import RESPONSES_ANSWER, Recorder

ANTHROPIC_KEY = "sk-ant-fake-key-0001"
AZURE_KEY = "azure-fake-key-0001"
AZURE_API_VERSION = "2024-10-21"
CREATED_AT = "2025-01-15T10:20:30.123456789Z"


class BoundedGateways:
    """Wraps the `gateway` fixture's factory: each gateway's client session gets a total
    timeout, so no request of a test can wait longer than `bound` seconds."""

    def __init__(self, make, bound: float) -> None:
        self.make = make
        self.bound = bound
        self.sessions: list[aiohttp.ClientSession] = []

    async def __call__(self, *args, **kwargs):
        gw = await self.make(*args, **kwargs)
        gw.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.bound))
        self.sessions.append(gw.session)
        return gw

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()


async def serve(aiohttp_server, fake, root: str = ""):
    """Start `fake.app` on 127.0.0.1; sets `fake.base_url` (server root + `root`) and `fake.server`."""
    server = await aiohttp_server(fake.app)
    fake.server = server
    fake.base_url = str(server.make_url(root)).rstrip("/")
    return fake


# --- Anthropic -------------------------------------------------------------------------------

@dataclass
class Message:
    """An Anthropic answer: content blocks, a stop reason and usage."""

    content: list = field(default_factory=lambda: [{"type": "text", "text": "Hello from Claude"}])
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    input_tokens: int = 21
    output_tokens: int = 7
    pieces: int = 3  # stream: deltas per block
    error_after: int | None = None  # stream: an in-band `error` event after this many text deltas, then the end
    gap: float = 0.0  # stream: seconds between deltas


def text(value: str, **extra) -> Message:
    return Message(content=[{"type": "text", "text": value}], **extra)


def tool_use(name: str, arguments: dict, *, id: str = "toolu_01A09q90qw90lq917835lq9", preamble: str | None = None,
             **extra) -> Message:
    blocks = [{"type": "text", "text": preamble}] if preamble else []
    blocks.append({"type": "tool_use", "id": id, "name": name, "input": arguments})
    return Message(content=blocks, stop_reason="tool_use", **extra)


@dataclass
class AnthropicError:
    status: int = 529
    type: str = "overloaded_error"
    message: str = "Overloaded"
    headers: dict = field(default_factory=dict)


def split(value: str, parts: int) -> list[str]:
    if not value:
        return [value]
    size = max(1, -(-len(value) // max(1, parts)))
    return [value[i:i + size] for i in range(0, len(value), size)]


class FakeAnthropic(Recorder):
    def __init__(self, key: str = ANTHROPIC_KEY, model_echo: str = "claude-haiku-4-5-20251001") -> None:
        super().__init__()
        self.key = key
        self.model_echo = model_echo  # the dated model id Anthropic reports back
        self.default = text("Hello from Claude")
        self.disconnects: list[float] = []  # monotonic times a client went away mid-stream
        self.app = web.Application()
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    @staticmethod
    def error(status: int, type_: str, message: str, headers: dict | None = None) -> web.Response:
        body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CFakeFake"}
        return web.json_response(body, status=status, headers=headers)

    def message(self, body: dict, plan: Message) -> dict:
        return {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": self.model_echo, "content": plan.content, "stop_reason": plan.stop_reason,
            "stop_sequence": plan.stop_sequence,
            "usage": {"input_tokens": plan.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": plan.output_tokens,
                      "service_tier": "standard"},
        }

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's token count: `{"input_tokens": N}`; here N is the messages' count times 10,
        so a test can tell an upstream's answer from the gateway's estimate."""
        body = await self.record(request)
        if request.headers.get("x-api-key") != self.key:
            return self.error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error(400, "invalid_request_error", "anthropic-version: header is required")
        return web.json_response({"input_tokens": 10 * len(body.get("messages") or [])})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        if request.headers.get("x-api-key") != self.key:
            return self.error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            return self.error(400, "invalid_request_error", "max_tokens: Field required")
        plan = self.next()
        if callable(plan) and not isinstance(plan, Message):
            plan = plan(body)
        if isinstance(plan, bytes):  # a recorded stream, answered as it is
            return web.Response(body=plan, content_type="text/event-stream")
        if isinstance(plan, AnthropicError):
            return self.error(plan.status, plan.type, plan.message, plan.headers)
        if body.get("stream"):
            try:
                return await self.stream(request, body, plan)
            except (asyncio.CancelledError, ConnectionResetError):
                self.disconnects.append(time.monotonic())
                raise
        return web.json_response(self.message(body, plan))

    async def stream(self, request: web.Request, body: dict, plan: Message) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(event: str, data: dict) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start = self.message(body, plan)
        start.update(content=[], stop_reason=None, stop_sequence=None)
        start["usage"] = {**start["usage"], "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(plan.content):
            if block["type"] == "text":
                await send("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}})
                if index == 0:
                    await send("ping", {"type": "ping"})
                for number, piece in enumerate(split(block["text"], plan.pieces)):
                    if plan.error_after is not None and number == plan.error_after:
                        await send("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                         "message": "Overloaded"}})
                        await response.write_eof()
                        return response
                    await send("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "text_delta", "text": piece}})
                    if plan.gap:
                        await asyncio.sleep(plan.gap)
            else:
                await send("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                if index == 0:
                    await send("ping", {"type": "ping"})
                partial = [""] + split(json.dumps(block["input"]), plan.pieces)
                for piece in partial:
                    await send("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "input_json_delta", "partial_json": piece}})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
                                     "usage": {"output_tokens": plan.output_tokens}})
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


# --- Ollama ----------------------------------------------------------------------------------

@dataclass
class Chat:
    """An Ollama /api/chat answer."""

    content: str = "Hello from llama"
    tool_calls: list | None = None  # [{"function": {"name", "arguments": {...}}}]
    done_reason: str = "stop"
    prompt_eval_count: int = 26
    eval_count: int = 9
    pieces: int = 3
    delay: float = 0.0
    error_after: int | None = None  # stream: an `{"error": ...}` line after this many content lines, then the end


@dataclass
class OllamaError:
    status: int = 404
    message: str = 'model "llama3.1:8b" not found, try pulling it first'


class FakeOllama(Recorder):
    def __init__(self, embedding_size: int = 4) -> None:
        super().__init__()
        self.default = Chat()
        self.embedding_size = embedding_size
        self.app = web.Application()
        self.app.router.add_post("/api/chat", self.chat)
        self.app.router.add_post("/api/embed", self.embed)

    def line(self, model: str, message: dict, done: bool, plan: Chat | None = None) -> dict:
        out = {"model": model, "created_at": CREATED_AT, "message": message, "done": done}
        if done and plan is not None:
            out.update(done_reason=plan.done_reason, total_duration=4_883_583_458, load_duration=1_334_875,
                       prompt_eval_count=plan.prompt_eval_count, prompt_eval_duration=342_546_000,
                       eval_count=plan.eval_count, eval_duration=4_535_599_000)
        return out

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        plan = self.next()
        if isinstance(plan, OllamaError):
            return web.json_response({"error": plan.message}, status=plan.status)
        if plan.delay:
            await asyncio.sleep(plan.delay)
        model = body.get("model", "?")
        if body.get("stream", True):  # Ollama streams unless told otherwise
            return await self.stream(request, model, plan)
        message = {"role": "assistant", "content": plan.content}
        if plan.tool_calls:
            message["tool_calls"] = plan.tool_calls
        return web.json_response(self.line(model, message, True, plan))

    async def stream(self, request: web.Request, model: str, plan: Chat) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for number, piece in enumerate(split(plan.content, plan.pieces) if plan.content else []):
            if plan.error_after is not None and number == plan.error_after:
                await response.write(b'{"error":"an error was encountered while running the model: unexpected EOF"}\n')
                await response.write_eof()
                return response
            line = self.line(model, {"role": "assistant", "content": piece}, False)
            await response.write(json.dumps(line).encode() + b"\n")
        if plan.tool_calls:
            line = self.line(model, {"role": "assistant", "content": "", "tool_calls": plan.tool_calls}, False)
            await response.write(json.dumps(line).encode() + b"\n")
        final = self.line(model, {"role": "assistant", "content": ""}, True, plan)
        await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response

    async def embed(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [[round(0.1 * (i + 1) + 0.01 * j, 4) for j in range(self.embedding_size)]
                   for i in range(len(inputs))]
        return web.json_response({"model": body["model"], "embeddings": vectors, "total_duration": 14_143_917,
                                  "load_duration": 1_019_500, "prompt_eval_count": 8})


# --- Azure OpenAI ----------------------------------------------------------------------------

class FakeAzure(Recorder):
    """Azure OpenAI: the deployment in the path, `api-version` required, key in `api-key`."""

    def __init__(self, key: str = AZURE_KEY, api_version: str = AZURE_API_VERSION) -> None:
        super().__init__()
        self.key = key
        self.api_version = api_version
        self.deployments = {"gpt4o-prod": "gpt-4o-2024-08-06", "embed-prod": "text-embedding-3-small"}
        self.default = "Hello from Azure"
        self.app = web.Application()
        self.app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        self.app.router.add_post("/openai/deployments/{deployment}/embeddings", self.embeddings)
        self.app.router.add_post("/openai/responses", self.responses)

    def refuse(self, request: web.Request, deployment: str | None = None) -> web.Response | None:
        if request.query.get("api-version") != self.api_version:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        if request.headers.get("api-key") != self.key:
            return web.json_response({"error": {
                "code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. "
                "Make sure to provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource."}}, status=401)
        if (deployment or request.match_info["deployment"]) not in self.deployments:
            return web.json_response({"error": {
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does not exist."}}, status=404)
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return refused
        content = self.next()
        model = self.deployments[request.match_info["deployment"]]
        base = {"id": "chatcmpl-AzFake", "created": 1_700_000_000, "model": model,
                "system_fingerprint": "fp_azure"}
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
                                 b'"prompt_filter_results":[]}\n\n')  # Azure's content-filter preamble
            for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": content}, None),
                                  ({}, "stop")):
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "finish_reason": "stop", "logprobs": None,
                         "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
        })

    async def responses(self, request: web.Request) -> web.Response:
        """Azure's Responses API: one URL for the resource, the deployment named by the body's
        `model`; answered with OpenAI's recorded answer, since Azure speaks the same format."""
        body = await self.record(request)
        refused = self.refuse(request, str(body.get("model")))
        if refused is not None:
            return refused
        return web.Response(body=RESPONSES_ANSWER, content_type="application/json")

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return refused
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.25, 0.125]} for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data,
                                  "model": self.deployments[request.match_info["deployment"]],
                                  "usage": {"prompt_tokens": 3, "total_tokens": 3}})
