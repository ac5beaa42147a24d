"""What every streamed answer shares: its headers, and how a shutdown finds it."""

from __future__ import annotations

from aiohttp import web

# the streaming response whose headers went out, set by the handlers that stream: what a
# shutdown past its grace must end with an SSE error event rather than a JSON answer
PREPARED = web.RequestKey("gatewayd_prepared", web.StreamResponse)
# how that stream's client format writes an error event, `(status, code, message) -> bytes`;
# absent: OpenAI's (`data: {"error": ...}`)
ERROR_EVENT = web.RequestKey("gatewayd_error_event", object)


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
