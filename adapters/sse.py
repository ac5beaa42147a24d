"""Reading server-sent events off an upstream response, without re-encoding them.

`read_events` yields `(event, data)` per SSE event: `event` is the `event:`
field (b"" when absent) and `data` the joined `data:` lines as raw bytes, so an
OpenAI-compatible stream can be relayed byte for byte. Comments (`:` lines,
keep-alives) are skipped. See the WHATWG HTML spec, "Server-sent events",
for the field grammar. No line and no event larger than the caller's limit
(`server.max_upstream_body`) is held: one is the upstream's protocol failure,
and a connection that breaks while it is read a connect failure.
"""

from __future__ import annotations

from typing import AsyncIterator

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from gatewayd.adapters.base import stream_broke
from gatewayd.daemon.core.failures import FailureClass, UpstreamError


def parse_field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return name, value


def event_too_large(limit: int) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, f"an upstream stream event is larger than {limit} bytes "
                                                "(server.max_upstream_body)")


async def read_events(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[tuple[bytes, bytes]]:
    """The events of `content`; an event (or one line) larger than `limit` bytes raises a
    protocol UpstreamError, a broken connection a connect one."""
    event = b""
    data: list[bytes] = []
    size = 0  # of an event's data lines, counted from its second one (one line is bounded already)
    readline = content.readline
    while True:
        try:
            raw = await readline(max_line_length=limit)
        except LineTooLong:
            raise event_too_large(limit) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise stream_broke(exc) from None
        if not raw:
            break
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data, size = b"", [], 0
            continue
        if line.startswith(b":"):
            continue
        name, value = parse_field(line)
        if name == b"data":
            if data:  # a second data line: the event as a whole is bounded too
                size = (size or len(data[0])) + len(value)
                if size > limit:
                    raise event_too_large(limit)
            data.append(value)
        elif name == b"event":
            event = value
    if data:  # a final event without its blank line: the stream was cut mid-event
        yield event, b"\n".join(data)
