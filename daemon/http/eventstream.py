"""`GET /admin/events`: the event bus (observe/events.py) as server-sent events, for admin keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from gatewayd.daemon.http.guard import refuse_cross_origin, require_admin
from gatewayd.daemon.http.paths import Routes
from gatewayd.daemon.http.streaming import PREPARED

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime

PING_INTERVAL = 15.0  # an SSE comment keeps proxies and idle timers from closing the stream


def encode(event: dict) -> str:
    return orjson.dumps(event).decode()


def add_event_routes(routes: Routes, runtime: Runtime) -> None:
    async def events(request: web.BaseRequest) -> web.StreamResponse:
        refuse_cross_origin(request)
        require_admin(request, runtime.holder.current.graph)
        with runtime.events.subscribe() as subscription:  # before the headers: nothing is missed
            async with sse_response(request, sep="\n", ping_interval=PING_INTERVAL) as stream:
                request[PREPARED] = stream
                while True:
                    event = await subscription.next()
                    if event is None:
                        break
                    await stream.send(encode(event), event=event["kind"])
        return stream

    routes.get("/admin/events", events)
