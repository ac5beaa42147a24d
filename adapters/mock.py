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

from gatewayd.adapters.base import ProviderType, TypeKey
from gatewayd.daemon.core.conversation import Chat, Text
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Answer, Delta, Embeddings, Finish, Reply, Start, StreamEvent, Usage

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment, Provider

EMBEDDING_DIMENSIONS = 16


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, tuple):
        return " ".join(part.text for part in content if isinstance(part, Text) and isinstance(part.text, str))
    return ""


def answer_text(deployment: Deployment, chat: Chat) -> str:
    if deployment.model == "echo":
        for message in reversed(chat.messages):
            if message.role == "user":
                return text_of(message.content)
        return ""
    return str(deployment.provider.options.get("reply", ""))


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(chat: Chat) -> int:
    return sum(count_tokens(text_of(message.content)) for message in chat.messages)


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest[:EMBEDDING_DIMENSIONS]]


class MockStream:
    format = None  # neutral events

    def __init__(self, deployment: Deployment, chat: Chat, text: str) -> None:
        self._deployment = deployment
        self._text = text
        self.usage = Usage(prompt_tokens(chat), count_tokens(text))
        self.done = False

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        yield Start(id=new_id(), model=self._deployment.model, created=int(time.time()))
        words = self._text.split(" ")
        for index, word in enumerate(words):
            yield Delta(word if index == 0 else " " + word)
        yield Finish("stop")
        self.done = True

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
            raise UpstreamError(FailureClass.OVERLOADED, "mock provider failure (fail_rate)", status=503,
                                code="overloaded")

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        await self._start()
        chat = request.chat()
        text = answer_text(deployment, chat)
        usage = Usage(prompt_tokens(chat), count_tokens(text))
        return Reply(None, usage, answer=Answer(new_id(), deployment.model, int(time.time()), text, "stop", usage))

    async def stream(self, deployment: Deployment, request: Request) -> MockStream:
        await self._start()
        chat = request.chat()
        return MockStream(deployment, chat, answer_text(deployment, chat))

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        await self._start()
        inputs = request.embed().input
        inputs = [] if inputs is None else inputs if isinstance(inputs, list) else [inputs]
        usage = Usage(sum(count_tokens(str(t)) for t in inputs))
        vectors = [embedding(str(text)) for text in inputs]
        return Reply(None, usage, answer=Embeddings(deployment.model, vectors, usage))

    async def close(self) -> None:
        return None


MOCK = ProviderType("mock", MockAdapter, base_url="mock://local", keys={
    "reply": TypeKey(schema_default=True),
    "latency": TypeKey("duration", schema_default=True),
    "fail_rate": TypeKey("number", schema_default=True),
})
