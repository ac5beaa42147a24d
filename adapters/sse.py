"""Reading server-sent events off an upstream response, without re-encoding them.

`read_events` yields `(event, data)` per SSE event: `event` is the `event:`
field (b"" when absent) and `data` the joined `data:` lines as raw bytes, so an
OpenAI-compatible stream can be relayed byte for byte. Comments (`:` lines,
keep-alives) are skipped. See the WHATWG HTML spec, "Server-sent events",
for the field grammar.
"""

from __future__ import annotations

from typing import AsyncIterator

import aiohttp


def parse_field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return name, value


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[bytes, bytes]]:
    event = b""
    data: list[bytes] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data = b"", []
            continue
        if line.startswith(b":"):
            continue
        name, value = parse_field(line)
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    if data:  # a final event without its blank line: the stream was cut mid-event
        yield event, b"\n".join(data)
