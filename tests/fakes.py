"""Fake providers: real aiohttp servers on 127.0.0.1 speaking OpenAI's wire format,
scripted per test, recording what they received.

A test queues behaviours (`fake.queue(Status(500), Ok("hi"))`); each request
takes the next one, and `default` answers once the queue is empty. Shapes follow
OpenAI's API reference: `chat.completion` objects, `chat.completion.chunk` SSE
events ending with `data: [DONE]`, and `{"error": {...}}` bodies.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.wire import recorded_stream


@dataclass
class Ok:
    content: str = "hello"
    delay: float = 0.0  # before the answer


@dataclass
class Status:
    status: int
    message: str = "upstream trouble"
    headers: dict = field(default_factory=dict)
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    delay: float = 0.0  # before the answer


@dataclass
class Stream:
    pieces: tuple[str, ...] = ("Hel", "lo", "!")
    gap: float = 0.0  # between events
    first_delay: float = 0.0
    cut_after: int | None = None  # close the connection after this many content events
    malformed_after: int | None = None  # send a non-JSON event after this many
    error_after: int | None = None  # send an in-band error event after this many
    error_message: str = "model overloaded"
    pause_after: int | None = None  # fall silent for `pause` seconds after this many
    pause: float = 0.0
    role: bool = True  # open with the assistant-role chunk (no content)
    done: bool = True


@dataclass
class Raw:
    """A 200 answer of exactly these bytes (for answers the gateway must refuse or read closely)."""

    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


@dataclass
class Large:
    """A `status` answer of `size` bytes (a JSON object, or one SSE event of one `data:` line),
    written in pieces, with a Content-Length unless `chunked`. The bytes written before the
    client closed the connection are appended to `fake.written`."""

    size: int
    chunked: bool = False
    status: int = 200
    event_stream: bool = False


PIECE = 64 * 1024  # a `Large` answer is written in pieces of this size


@dataclass
class Hang:
    seconds: float = 30.0


def completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-fake123", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "system_fingerprint": "fp_fake",
    }


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    payload = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": model, "system_fingerprint": "fp_fake",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


FIXTURES = Path(__file__).parent / "fixtures" / "responses"
RESPONSES_ANSWER = (FIXTURES / "answer_text.json").read_bytes()
RESPONSES_STREAM = recorded_stream(FIXTURES / "text_stream.sse")


class Recorder:
    """What every fake upstream shares: the script of behaviours and the requests it saw."""

    default: object = None

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []  # {"path", "headers", "json", "query", "at"}
        self.base_url = ""
        self.server = None

    def queue(self, *behaviours) -> None:
        self.script.extend(behaviours)

    def next(self):
        return self.script.pop(0) if self.script else self.default

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def record(self, request: web.Request) -> dict:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body,
                              "query": dict(request.query), "at": time.monotonic()})
        return body


class FakeOpenAI(Recorder):
    def __init__(self, name: str = "fake") -> None:
        super().__init__()
        self.name = name
        self.default = Ok(f"from {name}")
        self.disconnects: list[float] = []  # monotonic times a client went away mid-answer
        self.sent: list[bytearray] = []  # the bytes of each event stream, as written
        self.written: list[int] = []  # the bytes of each `Large` answer written before the client closed
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/responses", self.responses)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        behaviour = self.next()
        model = body.get("model", "?")
        try:
            if isinstance(behaviour, Hang):
                await asyncio.sleep(behaviour.seconds)
                return web.json_response(completion(model, "too late"))
            if isinstance(behaviour, Status):
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                error = {"error": {"message": behaviour.message, "type": behaviour.type,
                                   "param": behaviour.param, "code": behaviour.code}}
                return web.json_response(error, status=behaviour.status, headers=behaviour.headers)
            if isinstance(behaviour, Raw):
                return web.Response(body=behaviour.body, content_type=behaviour.content_type,
                                    headers=behaviour.headers)
            if isinstance(behaviour, Large):
                return await self.large(request, behaviour)
            if body.get("stream") and not isinstance(behaviour, Stream):
                behaviour = Stream(pieces=(behaviour.content,), first_delay=behaviour.delay)
            if isinstance(behaviour, Stream):
                return await self.stream(request, model, behaviour)
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            return web.json_response(completion(model, behaviour.content))
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append(time.monotonic())
            raise

    async def stream(self, request: web.Request, model: str, plan: Stream) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = bytearray()
        self.sent.append(sent)

        async def write(data: bytes) -> None:
            sent.extend(data)
            await response.write(data)

        if plan.first_delay:
            await asyncio.sleep(plan.first_delay)
        if plan.role:
            await write(chunk(model, {"role": "assistant", "content": ""}))
        for index, piece in enumerate(plan.pieces):
            if plan.cut_after is not None and index == plan.cut_after:
                request.transport.close()
                return response
            if plan.pause_after is not None and index == plan.pause_after:
                await asyncio.sleep(plan.pause)
            if plan.malformed_after is not None and index == plan.malformed_after:
                await write(b"data: {not json\n\n")
            if plan.error_after is not None and index == plan.error_after:
                error = {"error": {"message": plan.error_message, "type": "server_error", "param": None,
                                   "code": None}}
                await write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await write(chunk(model, {"content": piece}))
            if plan.gap:
                await asyncio.sleep(plan.gap)
        await write(chunk(model, {}, "stop"))
        if plan.done:
            await write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def large(self, request: web.Request, plan: Large) -> web.StreamResponse:
        head, tail = (b'data: {"pad": "', b'"}\n\n') if plan.event_stream else (b'{"pad": "', b'"}')
        response = web.StreamResponse(status=plan.status, headers={
            "Content-Type": "text/event-stream" if plan.event_stream else "application/json"})
        if plan.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = plan.size
        written = 0

        async def write(piece: bytes) -> None:
            nonlocal written
            await response.write(piece)
            written += len(piece)

        try:
            await response.prepare(request)
            await write(head)
            filler = plan.size - len(head) - len(tail)
            for at in range(0, filler, PIECE):
                await write(b"x" * min(PIECE, filler - at))
            await write(tail)
            await response.write_eof()
        finally:
            self.written.append(written)
        return response

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API, answering recorded OpenAI answers (tests/fixtures/responses/): the
        text stream, or the text answer; a queued `Status` is its error answer, a `Hang` a wait first."""
        body = await self.record(request)
        behaviour = self.next()
        if isinstance(behaviour, Hang):
            try:
                await asyncio.sleep(behaviour.seconds)
            except asyncio.CancelledError:
                self.disconnects.append(time.monotonic())
                raise
        if isinstance(behaviour, Status):
            error = {"error": {"message": behaviour.message, "type": behaviour.type,
                               "param": behaviour.param, "code": behaviour.code}}
            return web.json_response(error, status=behaviour.status, headers=behaviour.headers)
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(RESPONSES_STREAM)
            await response.write_eof()
            return response
        return web.Response(body=RESPONSES_ANSWER, content_type="application/json")

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        behaviour = self.next()
        if isinstance(behaviour, Hang):
            await asyncio.sleep(behaviour.seconds)
        if isinstance(behaviour, Status):
            error = {"error": {"message": behaviour.message, "type": behaviour.type,
                               "param": behaviour.param, "code": behaviour.code}}
            return web.json_response(error, status=behaviour.status, headers=behaviour.headers)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": 2, "total_tokens": 2}})


# -- wiring fakes into a gateway config ------------------------------------------------

FAST = {"retry": {"attempts": 1, "backoff": {"initial": "10ms", "max": "40ms", "jitter": "none"}}}


def merge(base: dict, extra: dict | None) -> dict:
    """`extra` over `base`, nested dicts merged key by key."""
    result = dict(base)
    for key, value in (extra or {}).items():
        result[key] = merge(result[key], value) if isinstance(value, dict) and isinstance(
            result.get(key), dict) else value
    return result


def gateway_config(fakes: dict[str, FakeOpenAI], *, aliases: dict | None = None,
                   defaults: dict | None = None, models: dict | None = None,
                   providers: dict | None = None, server: dict | None = None) -> str:
    """A gateway.yaml (JSON is YAML) with one openai provider and one model per fake.

    Fake `a` becomes provider `a` (key `sk-a-secret`) and model `a` (upstream
    model `up-a`); `models`/`providers` add or extend entries; `defaults` are
    merged over FAST (one attempt, 10 ms backoff).
    """
    document = {
        "version": 1,
        "defaults": merge(FAST, defaults),
        "providers": {name: {"type": "openai", "base_url": fake.base_url, "api_key": f"sk-{name}-secret"}
                      for name, fake in fakes.items()},
        "models": {name: {"provider": name, "model": f"up-{name}"} for name in fakes},
        "aliases": aliases or {},
    }
    document["providers"] = merge(document["providers"], providers)
    document["models"] = merge(document["models"], models)
    if server:
        document["server"] = server
    return json.dumps(document, indent=2)


async def fakes(fake_openai, *names: str) -> dict:
    """Start one fake upstream per name (with the `fake_openai` fixture)."""
    return {name: await fake_openai(name) for name in names}


async def eventually(predicate, timeout: float = 3.0, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def deployment_status(gw, name: str) -> dict:
    return (await gw.status())["deployments"][name]
