"""sse.read_event_batches / read_events over whole reads, OpenAIStream's items, and the relay's
first write (headers with the first event)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.adapters.openai import OpenAIStream
from gatewayd.adapters.sse import read_event_batches, read_events
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.http.pipeline import EventStreamResponse


class Protocol:
    _reading_paused = False
    connected = True

    def pause_reading(self, **_) -> None:
        pass

    def resume_reading(self, **_) -> None:
        pass


def reader(*chunks: bytes) -> aiohttp.StreamReader:
    """A response body whose pieces are all in the buffer already (one read takes them all)."""
    content = aiohttp.StreamReader(Protocol(), 2 ** 16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        content.feed_data(chunk)
    content.feed_eof()
    return content


def chunk(n: int) -> bytes:
    return b'data: {"n":%d}\n\n' % n


async def batches_of(content, limit=1 << 20):
    out = []
    try:
        async for batch in read_event_batches(content, limit):
            out.append(batch)
    except UpstreamError as error:
        out.append(error.failure)
    return out


async def test_a_read_of_many_events_comes_as_the_first_alone_then_the_rest_in_one_batch():
    body = chunk(1) + b": keep-alive\n\n" + chunk(2) + b"event: x\ndata: 3\n\n" + chunk(4)
    assert await batches_of(reader(body)) == [
        [(b"", b'{"n":1}')], [(b"", b'{"n":2}'), (b"x", b"3"), (b"", b'{"n":4}')]]


async def test_the_events_whole_before_a_failure_come_before_it():
    too_long = b"data: " + b"x" * 100 + b"\n\n"
    assert await batches_of(reader(chunk(1) + chunk(2) + chunk(3) + too_long), limit=64) == [
        [(b"", b'{"n":1}')], [(b"", b'{"n":2}'), (b"", b'{"n":3}')], FailureClass.PROTOCOL]
    content = aiohttp.StreamReader(Protocol(), 2 ** 16, loop=asyncio.get_running_loop())
    batches = read_event_batches(content, 64)
    content.feed_data(chunk(1) + chunk(2) + b'data: {"n":')
    assert [await anext(batches), await anext(batches)] == [[(b"", b'{"n":1}')], [(b"", b'{"n":2}')]]
    content.set_exception(aiohttp.ClientPayloadError("connection reset"))  # mid-event
    with pytest.raises(UpstreamError) as caught:
        await anext(batches)
    assert caught.value.failure is FailureClass.CONNECT


async def test_a_line_still_arriving_is_bounded_before_its_end():
    content = aiohttp.StreamReader(Protocol(), 2 ** 16, loop=asyncio.get_running_loop())
    events = read_events(content, 64)
    content.feed_data(chunk(1) + b"data: " + b"x" * 40)
    assert await anext(events) == (b"", b'{"n":1}')
    content.feed_data(b"x" * 40)  # no end of line yet, and already past the limit
    with pytest.raises(UpstreamError) as caught:
        await anext(events)
    assert caught.value.failure is FailureClass.PROTOCOL


def reference(body: bytes, limit: int) -> list:
    """What read_events yields, line by line as the spec reads it (and readline's bound)."""
    out, event, data, size = [], b"", [], 0
    lines = body.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if last and not raw:
            break
        if len(raw) + (0 if last else 1) > limit:
            return out + [FailureClass.PROTOCOL]
        line = raw.rstrip(b"\r")
        if not line:
            if data:
                out.append((event, b"\n".join(data)))
            event, data, size = b"", [], 0
            continue
        if line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if data:
                size = (size or len(data[0])) + len(value)
                if size > limit:
                    return out + [FailureClass.PROTOCOL]
            data.append(value)
        elif name == b"event":
            event = value
    if data:
        out.append((event, b"\n".join(data)))
    return out


LINES = st.sampled_from([b"data: a", b"data:b", b"data:  c", b"data", b"data: " + b"x" * 30, b": ping", b"event: e",
                         b"event:", b"id: 1", b"", b"\r", b"data: d\r", b"dat: y"])


def cut(body: bytes, cuts: list[int]) -> list[bytes]:
    """`body` in pieces of the lengths `cuts`, and the rest as the last."""
    pieces, at = [], 0
    for length in cuts:
        pieces.append(body[at:at + length])
        at += length
    pieces.append(body[at:])
    return pieces


async def read_in_pieces(pieces: list[bytes], items) -> list:
    """What `items(content)` yields while `pieces` arrive one read at a time, then the failure
    class it raised, if any."""
    content = aiohttp.StreamReader(Protocol(), 2 ** 16, loop=asyncio.get_running_loop())
    out: list = []

    async def consume() -> None:
        try:
            async for item in items(content):
                out.append(item)
        except UpstreamError as error:
            out.append(error.failure)

    task = asyncio.create_task(consume())
    for piece in pieces:  # each piece read on its own
        if piece:
            content.feed_data(piece)
        for _ in range(3):
            await asyncio.sleep(0)
    content.feed_eof()
    await asyncio.wait_for(task, 10)
    return out


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(LINES, max_size=14), ends=st.booleans(), cuts=st.lists(st.integers(1, 40), max_size=8),
       limit=st.sampled_from([16, 32, 64]))
def test_read_events_is_the_line_by_line_reading_however_the_body_is_cut(lines, ends, cuts, limit):
    body = b"\n".join(lines) + (b"\n" if ends else b"")
    read = read_in_pieces(cut(body, cuts), lambda content: read_events(content, limit))
    assert asyncio.run(read) == reference(body, limit)


class Response:
    def __init__(self, content) -> None:
        self.content = content


async def items_of(stream: OpenAIStream) -> list:
    out = []
    try:
        async for item in stream:
            out.append(item)
    except UpstreamError as error:
        out.append(error.failure)
    return out


async def test_an_openai_stream_yields_its_first_event_alone_then_each_read_checked_and_joined():
    body = chunk(1) + chunk(2) + chunk(3) + b"data: [DONE]\n\n" + chunk(9)
    stream = OpenAIStream(Response(reader(body)), lambda data: data, 1 << 20)
    assert await items_of(stream) == [chunk(1), chunk(2) + chunk(3) + b"data: [DONE]\n\n"]
    assert stream.done


async def test_an_openai_stream_relays_the_events_before_a_malformed_one_then_fails():
    body = chunk(1) + chunk(2) + chunk(3) + b"data: {not json\n\n" + chunk(4)
    stream = OpenAIStream(Response(reader(body)), lambda data: data, 1 << 20)
    assert await items_of(stream) == [chunk(1), chunk(2) + chunk(3), FailureClass.PROTOCOL]
    assert not stream.done


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return default

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.writes.append(b"".join(chunks))


async def test_a_relayed_streams_headers_go_out_with_its_first_event_in_one_write():
    transport = Transport()
    protocol = type("P", (), {"transport": transport, "_paused": False})()
    writer = StreamWriter(protocol, asyncio.get_running_loop())
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer, transport=transport)
    response = EventStreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    assert transport.writes == []  # the headers wait for the first event
    await response.write(chunk(1))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and chunk(1) in body
    await response.write(chunk(2))
    assert len(transport.writes) == 2 and web.StreamResponse._send_headers_immediately  # aiohttp's default
