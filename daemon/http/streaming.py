"""What every streamed answer shares: its headers, and how a shutdown finds it."""

from __future__ import annotations

from aiohttp import web

# the streaming response whose headers went out, set by the handlers that stream: what a
# shutdown past its grace must end with an SSE error event rather than a JSON answer
PREPARED = web.RequestKey("gatewayd_prepared", web.StreamResponse)


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
