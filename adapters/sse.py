"""Reading server-sent events off an upstream response, without re-encoding them.

`read_events` yields `(event, data)` per SSE event: `event` is the `event:`
field (b"" when absent) and `data` the joined `data:` lines as raw bytes, so an
OpenAI-compatible stream can be relayed byte for byte. Comments (`:` lines,
keep-alives) are skipped. See the WHATWG HTML spec, "Server-sent events",
for the field grammar. No line and no event larger than the caller's limit
(`server.max_upstream_body`) is held: one is the upstream's protocol failure,
and a connection that breaks while it is read a connect failure.

`read_event_batches` yields the same events grouped as they arrived: every whole event
one read of the connection completed, in one list, so that a relay can check them all and
write them at once, never waiting for more. Both take what the response's buffer holds
(`readany`) and split it, rather than awaiting one `readline` per line.

`RelayedEvents` relays such a stream to a client of its own format: each event, once read,
written back as it came.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

import aiohttp

from gatewayd.adapters.base import UpstreamStream, stream_broke
from gatewayd.daemon.core.failures import FailureClass, UpstreamError


def parse_field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return name, value


def event_too_large(limit: int) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, f"an upstream stream event is larger than {limit} bytes "
                                                "(server.max_upstream_body)")


FIRST_LINES = 8  # lines split off a read before the stream's first event has gone (most first events have 2)


async def read_event_batches(content: aiohttp.StreamReader, limit: int, pending: bytes = b"",
                             first: bool = True) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """The events of `content` as `read_events` has them, in lists: each holds every event
    whose end one read brought, and comes as soon as that read is split. The stream's first
    event comes alone, before the rest of its read is split: a relay's first byte waits for
    no other event. A failure (a line or an event larger than `limit` bytes: protocol; a
    broken connection: connect) comes after the events that were whole before it.

    `pending`: bytes of the stream already read off `content` (by `relay_data_events`), split
    before anything more is read; `first` False when the stream's first event has gone."""
    event = b""
    data: list[bytes] = []
    size = 0  # of an event's data lines, counted from its second one (one line is bounded already)
    tail: list[bytes] = []  # the pieces of a line whose end has not come yet
    tail_size = 0
    ended = False
    readany = content.readany
    while not ended:
        if pending:
            chunk, pending = pending, b""
        else:
            try:
                chunk = await readany()
            except (aiohttp.ClientError, OSError) as exc:
                raise stream_broke(exc) from None
        bound = limit  # a line, with its "\n", is at most `limit` bytes
        if not chunk:  # the end: a last line without its "\n" is a line all the same
            if not tail:
                break
            ended, bound = True, limit + 1
            tail.append(b"\n")
        elif b"\n" not in chunk:
            tail_size += len(chunk)
            if tail_size > limit:
                raise event_too_large(limit)
            tail.append(chunk)
            continue
        else:
            tail.append(chunk)
        unsplit: bytes | None = tail[0] if len(tail) == 1 else b"".join(tail)
        tail, tail_size = [], 0
        batch: list[tuple[bytes, bytes]] = []
        failure = None
        rest = b""
        while unsplit is not None:
            if first:  # only the first lines, until the first event has gone
                lines = unsplit.split(b"\n", FIRST_LINES)
                unsplit = lines.pop() if len(lines) > FIRST_LINES else None
            else:
                lines, unsplit = unsplit.split(b"\n"), None
            if unsplit is None:
                rest = lines.pop()  # after the last "\n": the start of a line still arriving
            for line in lines:
                if len(line) >= bound:
                    failure = event_too_large(limit)
                    break
                if line.endswith(b"\r"):
                    line = line.rstrip(b"\r")
                if not line:
                    if data:
                        batch.append((event, data[0] if len(data) == 1 else b"\n".join(data)))
                        if first:
                            first = False
                            yield batch
                            batch = []
                        data, size = [], 0
                    event = b""
                    continue
                if line.startswith(b"data:"):  # the common field first, without parse_field's call
                    value = line[6:] if line.startswith(b"data: ") else line[5:]
                    if data:  # a second data line: the event as a whole is bounded too
                        size = (size or len(data[0])) + len(value)
                        if size > limit:
                            failure = event_too_large(limit)
                            break
                    data.append(value)
                    continue
                if line.startswith(b":"):
                    continue
                name, value = parse_field(line)
                if name == b"data":
                    if data:
                        size = (size or len(data[0])) + len(value)
                        if size > limit:
                            failure = event_too_large(limit)
                            break
                    data.append(value)
                elif name == b"event":
                    event = value
            if failure is not None:
                break
        if failure is None and rest:
            if len(rest) > limit:
                failure = event_too_large(limit)
            else:
                tail, tail_size = [rest], len(rest)
        if batch:
            yield batch
        if failure is not None:
            raise failure
    if data:  # a final event without its blank line: the stream was cut mid-event
        yield [(event, data[0] if len(data) == 1 else b"\n".join(data))]


async def read_events(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[tuple[bytes, bytes]]:
    """The events of `content`; an event (or one line) larger than `limit` bytes raises a
    protocol UpstreamError, a broken connection a connect one."""
    batches = read_event_batches(content, limit)
    try:
        async for batch in batches:
            for item in batch:
                yield item
    finally:
        await batches.aclose()


DATA = b"data: "
BETWEEN = b"\n\n" + DATA  # where one canonical event ends and the next begins


async def relay_data_events(content: aiohttp.StreamReader, limit: int, scrub: Callable[[bytes], bytes],
                            check: Callable[[bytes], bool]) -> AsyncIterator[bytes]:
    """The stream of `content`, whose events carry only data (OpenAI's chat chunks), for a
    client of its own format: every event once `check(data)` has read it (raising on an
    in-band error or a malformed event; True at the end marker, the last event relayed).
    Items come as `read_event_batches` groups them (the first event alone, then every event
    one read brought, in one item; the events before a failing one, then the failure).

    A read of whole events each written as upstreams write them, `data: ...` on one line and
    a blank line, is relayed as its bytes: no line is split off, nothing is joined again, and
    a paced stream's read of one chunk costs one check. A read that ends mid-event keeps the
    start of that event (up to `limit` bytes) for the next. Anything else (comments, `event:`
    fields, data on several lines, CRLF, a line near `limit`, an unfinished event at the end)
    hands the stream from there to the line-by-line reading of `read_event_batches`, with the
    bytes already read."""
    readany = content.readany
    first = True
    rest = b""  # the start of an event still arriving
    while True:
        try:
            piece = await readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise stream_broke(exc) from None
        if not piece:
            if rest:
                break  # an unfinished last event: the line-by-line reading ends the stream
            return
        if rest:
            piece, rest = rest + piece, b""
        cut = piece.rfind(b"\n\n") + 2  # 1: no event ends in it
        if cut != len(piece):  # the read ends mid-event
            rest, piece = (piece, b"") if cut == 1 else (piece[cut:], piece[:cut])
            if len(rest) > limit:
                break  # a long line, or an event of several: the line-by-line reading bounds them
            if not piece:
                continue
        if len(piece) >= limit or not piece.startswith(DATA) or b"\r" in piece:
            break  # not only whole `data:` lines: the line-by-line reading takes over from here
        if piece.find(b"\n") == len(piece) - 2:  # a paced stream's usual read: one chunk
            piece = scrub(piece)
            first = False
            done = check(piece[6:-2])
            yield piece
            if done:
                return
            continue
        count = piece.count(b"\n\n")
        if piece.count(b"\n") != 2 * count or piece.count(BETWEEN) != count - 1:
            break
        piece = scrub(piece)
        events = piece.split(b"\n\n")
        skip = 0  # events already yielded
        if first:
            first, skip = False, 1
            done = check(events[0][6:])
            yield events[0] + b"\n\n"
            if done:
                return
        for index in range(skip, count):
            try:
                done = check(events[index][6:])
            except Exception:
                if index > skip:  # relayed before the failure, as each came before it
                    yield b"\n\n".join(events[skip:index]) + b"\n\n"
                raise
            if done:
                yield b"\n\n".join(events[skip:index + 1]) + b"\n\n"
                return
        yield piece[len(events[0]) + 2:] if skip else piece
    line_by_line = relay_batches(content, limit, scrub, check, piece + rest, first)
    try:
        async for item in line_by_line:
            yield item
    finally:
        await line_by_line.aclose()


async def relay_batches(content: aiohttp.StreamReader, limit: int, scrub: Callable[[bytes], bytes],
                        check: Callable[[bytes], bool], pending: bytes, first: bool) -> AsyncIterator[bytes]:
    """`relay_data_events` past a read it does not relay as its bytes: each event split off by
    `read_event_batches` (`pending` first), checked and written back as `data: ...`."""
    batches = read_event_batches(content, limit, pending, first)
    try:
        async for batch in batches:
            checked: list[bytes] = []
            done = False
            try:
                for _event, data in batch:
                    data = scrub(data)
                    done = check(data)
                    checked.append(DATA + data + b"\n\n")
                    if done:
                        break
            except Exception:
                if checked:  # relayed before the failure, as each came before it
                    yield b"".join(checked)
                raise
            yield checked[0] if len(checked) == 1 else b"".join(checked)
            if done:
                return
    finally:
        await batches.aclose()  # here: the loop's async-generator finalizer would wake the loop for it


def sse_event(event: bytes, data: bytes) -> bytes:
    """An SSE event written back as upstreams write them: `event:` (when it has one), `data:`."""
    return (b"event: " + event + b"\ndata: " + data + b"\n\n") if event else (b"data: " + data + b"\n\n")


class RelayedEvents(UpstreamStream):
    """An SSE stream relayed to a client of its own format: every event goes on as it came,
    once `check(event, data)` has read it (keeping `usage` and `done` current, raising on an
    in-band error or a malformed event). As `OpenAIStream`, the first event comes alone and
    then each item is every event one read brought, so that the relay writes them at once;
    events before a failing one come first, then the failure."""

    def check(self, event: bytes, data: bytes) -> None:
        raise NotImplementedError

    async def __aiter__(self) -> AsyncIterator[bytes]:
        scrub, check = self.scrub, self.check
        batches = read_event_batches(self.response.content, self.max_read)
        try:
            async for batch in batches:
                relayed: list[bytes] = []
                try:
                    for event, data in batch:
                        data = scrub(data)
                        check(event, data)
                        relayed.append(sse_event(event, data))
                        if self.done:
                            break
                except Exception:
                    if relayed:
                        yield b"".join(relayed)
                    raise
                yield relayed[0] if len(relayed) == 1 else b"".join(relayed)
                if self.done:
                    return
        finally:
            await batches.aclose()  # here: the loop's async-generator finalizer would wake the loop for it
