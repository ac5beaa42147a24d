"""What an upstream answered, as the router and the HTTP layer see it: a complete
answer, an open stream, and the usage booked for either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Reply:
    """A complete answer in OpenAI's shape."""

    body: bytes
    usage: Usage | None = None


class ReplyStream(Protocol):
    """An open stream of OpenAI `chat.completion.chunk` events.

    Iterating yields complete SSE events ready to write (`b"data: {...}\\n\\n"`),
    the final `b"data: [DONE]\\n\\n"` included. It raises `UpstreamError` on an
    in-band error or a malformed event; when it ends without `done` set, the
    upstream cut the stream.
    """

    usage: Usage | None
    done: bool

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...
