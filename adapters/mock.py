"""The built-in `mock` provider: answers locally, with no network.

Model `echo` repeats the last user message; any other model answers the
provider's `reply`. `latency` delays the answer's start and `fail_rate`
answers that share of requests with a 503, for demos and failure drills.
Embeddings are deterministic vectors derived from the input's hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from typing import TYPE_CHECKING, AsyncIterator

import orjson

from gatewayd.adapters.base import (
    DONE_EVENT,
    ProviderType,
    TypeKey,
    openai_error_body,
    openai_usage,
    usage_chunk,
    wants_usage,
)
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Reply, Usage

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Deployment, Provider

EMBEDDING_DIMENSIONS = 16


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def messages_of(body: dict) -> list:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def answer_text(deployment: Deployment, body: dict) -> str:
    if deployment.model == "echo":
        for message in reversed(messages_of(body)):
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
        return ""
    return str(deployment.provider.options.get("reply", ""))


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(body: dict) -> int:
    return sum(count_tokens(text_of(m.get("content"))) for m in messages_of(body) if isinstance(m, dict))


def completion(deployment: Deployment, body: dict, text: str) -> dict:
    usage = openai_usage(prompt_tokens(body), count_tokens(text))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": deployment.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": usage,
    }


def chunk(base: dict, delta: dict, finish: str | None = None) -> bytes:
    payload = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest[:EMBEDDING_DIMENSIONS]]


class MockStream:
    def __init__(self, deployment: Deployment, body: dict, text: str) -> None:
        self._deployment = deployment
        self._body = body
        self._text = text
        self.usage = Usage(prompt_tokens(body), count_tokens(text))
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self._deployment.model}
        yield chunk(base, {"role": "assistant", "content": ""})
        words = self._text.split(" ")
        for index, word in enumerate(words):
            yield chunk(base, {"content": word if index == 0 else " " + word})
        yield chunk(base, {}, "stop")
        if wants_usage(self._body):
            usage = openai_usage(self.usage.prompt_tokens, self.usage.completion_tokens)
            yield b"data: " + orjson.dumps(usage_chunk(base, usage)) + b"\n\n"
        self.done = True
        yield DONE_EVENT

    async def aclose(self) -> None:
        return None


class MockAdapter:
    capabilities = frozenset({"chat", "stream", "embeddings"})

    def __init__(self, provider: Provider, rng: random.Random | None = None) -> None:
        self.provider = provider
        self._rng = rng or random.Random()

    async def _start(self) -> None:
        latency = float(self.provider.options.get("latency", 0))
        if latency:
            await asyncio.sleep(latency)
        if self._rng.random() < float(self.provider.options.get("fail_rate", 0)):
            raise UpstreamError(
                FailureClass.OVERLOADED, "mock provider failure (fail_rate)", status=503,
                body=openai_error_body("mock provider failure (fail_rate)", "server_error", "overloaded"),
            )

    async def chat(self, deployment: Deployment, body: dict) -> Reply:
        await self._start()
        payload = completion(deployment, body, answer_text(deployment, body))
        usage = payload["usage"]
        return Reply(orjson.dumps(payload), Usage(usage["prompt_tokens"], usage["completion_tokens"]))

    async def stream(self, deployment: Deployment, body: dict) -> MockStream:
        await self._start()
        return MockStream(deployment, body, answer_text(deployment, body))

    async def embeddings(self, deployment: Deployment, body: dict) -> Reply:
        await self._start()
        inputs = body.get("input")
        inputs = [] if inputs is None else inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": embedding(str(text))}
                for i, text in enumerate(inputs)]
        tokens = sum(count_tokens(str(t)) for t in inputs)
        payload = {"object": "list", "data": data, "model": deployment.model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Reply(orjson.dumps(payload), Usage(tokens, 0))

    async def close(self) -> None:
        return None


MOCK = ProviderType("mock", MockAdapter, base_url="mock://local", keys={
    "reply": TypeKey(schema_default=True),
    "latency": TypeKey("duration", schema_default=True),
    "fail_rate": TypeKey("number", schema_default=True),
})
