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

from typing import AsyncIterator

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


async def read_event_batches(content: aiohttp.StreamReader,
                             limit: int) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """The events of `content` as `read_events` has them, in lists: each holds every event
    whose end one read brought, and comes as soon as that read is split. The stream's first
    event comes alone, before the rest of its read is split: a relay's first byte waits for
    no other event. A failure (a line or an event larger than `limit` bytes: protocol; a
    broken connection: connect) comes after the events that were whole before it."""
    event = b""
    data: list[bytes] = []
    size = 0  # of an event's data lines, counted from its second one (one line is bounded already)
    tail: list[bytes] = []  # the pieces of a line whose end has not come yet
    tail_size = 0
    first = True
    ended = False
    readany = content.readany
    while not ended:
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
