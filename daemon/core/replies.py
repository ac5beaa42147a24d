"""What an upstream answered, in neutral terms: a complete answer, an open stream of events,
and the usage booked for either.

An adapter answers a client of its own wire format with that format's bytes, relayed as they
came (`Reply.body`, a stream of `bytes`); any other client gets neutral values (`Answer`,
`Embeddings`, a stream of `Start` / `Delta` / `Finish` events) that the client format's codec
writes. The router and the relay never look inside either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Protocol, Union

from gatewayd.daemon.core.conversation import ToolCall

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import WireFormat


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, read from a provider's cache (counted in prompt_tokens too)


# why an answer ended, in neutral terms (each codec names them its own way)
STOP, LENGTH, TOOL_CALLS, CONTENT_FILTER = "stop", "length", "tool_calls", "content_filter"


@dataclass(slots=True)
class Answer:
    """A complete chat answer: one assistant turn."""

    id: str
    model: str
    created: int  # unix seconds
    text: str | None  # None when the turn is only tool calls
    finish: str  # STOP, LENGTH, TOOL_CALLS or CONTENT_FILTER
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # the model's thinking, where the provider shows it


@dataclass(slots=True)
class Embeddings:
    model: str
    vectors: list[list[float]]
    usage: Usage


@dataclass(slots=True)
class Reply:
    """A complete answer: `body`, bytes in the wire format `format`, for a client of that
    format; or `answer`, neutral, for the client's codec to write."""

    body: bytes | None
    usage: Usage | None = None
    format: WireFormat | None = None
    answer: Answer | Embeddings | None = None


# --- stream events -----------------------------------------------------------------------------

@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the tool call at `index` (its order in the answer): the first piece of a call
    carries its `id` and `name`, every piece some of its JSON `arguments`."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class Delta:
    """More of the answer: text, reasoning, tool calls."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(slots=True)
class Start(Delta):
    """The answer's first event: who answers, and maybe its first piece already."""

    id: str = ""
    model: str = ""
    created: int = 0


@dataclass(slots=True)
class Finish:
    """The answer is complete; `reason` as `Answer.finish`. Usage may still follow."""

    reason: str


StreamEvent = Union[Start, Delta, Finish]


class StreamTranslator:
    """Base of a pure translator from a provider's stream to neutral events: `feed(event, data)`
    turns one piece (an SSE event's type and data; an NDJSON line, typeless) into
    `StreamEvent`s, and sets `usage` as it learns it and `done` at the upstream's end."""

    usage: Usage | None = None
    done: bool = False

    def feed(self, event: bytes, data: bytes) -> list[StreamEvent]:
        raise NotImplementedError


class ReplyStream(Protocol):
    """An open stream. Iterating yields, for a client of the upstream's own wire format
    (`format`), its events as bytes ready to write, its end marker included; for any other
    client (`format` None), neutral `StreamEvent`s, whose end the client's codec writes.

    It raises `UpstreamError` on an in-band error or a malformed event; when it ends without
    `done` set, the upstream cut the stream. `usage` is current as events arrive.
    """

    format: WireFormat | None
    usage: Usage | None
    done: bool

    def __aiter__(self) -> AsyncIterator[bytes | StreamEvent]: ...

    async def aclose(self) -> None: ...
