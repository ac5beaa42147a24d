"""One client request as the router and the adapters see it, in no provider's words.

The HTTP layer reads the body in the client's wire format and wraps it in a `Request`:
its operation, its format, whether it streams, and the body as the client sent it. An
adapter whose upstream speaks that same format sends the body on (only `model` changed);
any other asks `request.chat()` (or `request.embed()`) for the neutral request the client
format's codec decodes (once, on first use, so a passthrough never pays for it).
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from gatewayd.daemon.core.conversation import Chat, Embed


NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Operation:
    """What a request asks for; an adapter serves it with its method of the same name. Plain
    strings, not an Enum: a request's operation is read on every request, and an Enum's
    `value` is a descriptor call each time."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class WireFormat(str, Enum):
    """The formats requests and answers travel in: a client's, an upstream's. The bytes of one
    go to the other untouched only when the two are the same."""

    OPENAI = "openai"  # chat completions and embeddings
    ANTHROPIC = "anthropic"  # Messages
    RESPONSES = "responses"  # OpenAI's Responses API
    OLLAMA = "ollama"  # /api/chat and /api/embed


class Request:
    """A client's request: `operation`, the client's `format`, `stream`, and `body`, its parsed
    JSON in that format; `headers`, the client's, for an adapter of the same format to forward
    the ones its upstream reads (Anthropic's `anthropic-version`, `anthropic-beta`).
    `capability` is what a deployment must offer to serve it."""

    __slots__ = ("operation", "format", "body", "stream", "headers", "capability", "_decode", "_neutral")

    def __init__(self, operation: str, format: WireFormat, body: dict[str, Any], *, stream: bool = False,
                 decode: Callable[[dict[str, Any]], Chat | Embed] | None = None,
                 headers: Mapping[str, str] = NO_HEADERS) -> None:
        self.operation = operation
        self.format = format
        self.body = body
        self.stream = stream
        self.headers = headers
        self.capability = "stream" if stream else operation
        self._decode = decode  # the client format's decoder for this operation
        self._neutral: Any = None

    def chat(self) -> Chat:
        """The chat request in neutral terms, decoded by the client format's codec on first use."""
        if self._neutral is None:
            chat = self._decoded(Operation.CHAT)
            # whether it streams is the request's to say (the adapter method the router calls)
            self._neutral = chat if chat.stream is self.stream else replace(chat, stream=self.stream)
        return self._neutral

    def embed(self) -> Embed:
        """The embeddings request in neutral terms, decoded on first use."""
        if self._neutral is None:
            self._neutral = self._decoded(Operation.EMBEDDINGS)
        return self._neutral

    def _decoded(self, operation: str) -> Any:
        if self.operation != operation or self._decode is None:
            raise TypeError(f"a {self.format.value} {self.operation} request has no {operation} decoder")
        return self._decode(self.body)
