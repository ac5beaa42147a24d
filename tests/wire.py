"""What the tests of one adapter need to see its answers as an OpenAI client would: the
requests an OpenAI client's body makes, and its neutral answers, events and errors written
by the OpenAI codec (daemon/formats/openai.py), exactly as the gateway writes them."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import strategies as st

from gatewayd.daemon.core.exchange import Operation, Request, WireFormat
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.replies import Reply
from gatewayd.daemon.formats import openai as codec


def chat_request(body: dict, *, stream: bool = False) -> Request:
    return Request(Operation.CHAT, WireFormat.OPENAI, body, stream=stream, decode=codec.decode_chat)


def embeddings_request(body: dict) -> Request:
    return Request(Operation.EMBEDDINGS, WireFormat.OPENAI, body, decode=codec.decode_embed)


def error_json(error: UpstreamError) -> dict:
    """What an OpenAI client is told of `error`."""
    return orjson.loads(codec.upstream_error_body(error))


def error_bytes(error: UpstreamError) -> bytes:
    return codec.upstream_error_body(error)


def answer_json(answer) -> dict:
    return orjson.loads(codec.encode_answer(answer))


def reply_bytes(reply: Reply, body: dict | None = None) -> bytes:
    """A reply's body as an OpenAI client receives it."""
    if reply.format is WireFormat.OPENAI:
        return reply.body
    return codec.encode_reply(reply.answer, body or {})


def reply_json(reply: Reply, body: dict | None = None) -> dict:
    return orjson.loads(reply_bytes(reply, body))


def sse_events(events, body: dict | None = None, *, usage=None, ended: bool = True) -> list[bytes]:
    """Neutral stream events as the OpenAI SSE events the gateway writes for them; `ended`: the
    upstream finished the stream, so its end follows (the usage chunk if asked, [DONE])."""
    writer = codec.StreamEncoder(body or {})
    out = [writer.encode(event) for event in events]
    if ended:
        end = writer.end(usage)
        parts = end.split(b"\n\n")
        out += [part + b"\n\n" for part in parts if part]
    return out


async def relayed(stream, body: dict | None = None) -> list[bytes]:
    """Every event of an adapter's open stream as the client receives it (bytes as they came from
    an upstream of the client's format; neutral events written by the codec), its end included
    once the upstream finished it."""
    items = [item async for item in stream]
    if stream.format is WireFormat.OPENAI:
        return items
    return sse_events(items, body, usage=stream.usage, ended=stream.done)


def stream_request(body: dict) -> Request:
    return chat_request(body, stream=True)


def recorded_pairs(path: Path) -> list[tuple[bytes, bytes]]:
    """A recorded SSE stream's (event, data) pairs; `:` lines are comments (the source)."""
    pairs = []
    for chunk in path.read_bytes().split(b"\n\n"):
        lines = [line for line in chunk.split(b"\n") if line and not line.startswith(b":")]
        if lines:
            event, data = lines
            pairs.append((event.removeprefix(b"event: "), data.removeprefix(b"data: ")))
    return pairs


def recorded_stream(path: Path) -> bytes:
    """A recorded SSE stream as an upstream sends it: its events, the source's comments left out."""
    return b"".join(b"event: " + event + b"\ndata: " + data + b"\n\n" for event, data in recorded_pairs(path))


def pieces_of(data, text: str) -> list[str]:
    """`text` cut where hypothesis's `data` draws (at most three cuts), as a stream brings it."""
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=3)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]] or [text]
