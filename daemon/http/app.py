"""The HTTP application: the path table wired to the handlers, and the shutdown's last word.

`create_app(runtime)` wires handlers to an existing `Runtime` (runtime.py) and returns the
request handler for aiohttp's low-level server; everything is owned by the
runtime (no module globals), and its owner calls `Runtime.close()` at the end.

Shutdown support (the order lives in server.py): every request runs inside
`GatewayHandler`, which keeps the set of handler tasks in flight so the server
can wait for them, and, once `runtime.stopping` is set, turns the cancellation
of a request still running at the end of the grace into a last message: a 503
`shutting_down` answer when nothing was sent yet, or an SSE error event in the stream's
client format (OpenAI's `data: {"error": {... "code": "shutting_down"}}`, no `[DONE]`;
Anthropic's `event: error`, no `message_stop`) ending a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from gatewayd.daemon.http.anthropic import AnthropicHandlers
from gatewayd.daemon.http.api import MODEL_PATH, OpenAIHandlers
from gatewayd.daemon.http.errors import ApiError, error_body
from gatewayd.daemon.http.eventstream import add_event_routes
from gatewayd.daemon.http.ops import add_ops_routes, json_response
from gatewayd.daemon.http.paths import Routes
from gatewayd.daemon.http.requestid import request_id_of
from gatewayd.daemon.http.responses import ResponsesHandlers
from gatewayd.daemon.http.runtime import Runtime
from gatewayd.daemon.http.streaming import ERROR_EVENT, PREPARED

log = logging.getLogger("gatewayd")

SHUTTING_DOWN = "gatewayd is shutting down: the request did not finish within server.shutdown_grace"


class GatewayHandler:
    """What aiohttp's low-level server calls for every request (see paths.py for why
    not an `Application`): it finds the handler, keeps the set of requests in flight
    (for the shutdown drain) and answers unknown paths and wrong methods in OpenAI's
    error shape."""

    def __init__(self, runtime: Runtime, routes: Routes) -> None:
        self.runtime = runtime
        self.routes = routes

    def unrouted_headers(self) -> dict[str, str]:
        return unrouted_headers(self.runtime)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        task = asyncio.current_task()
        assert task is not None
        runtime.requests.enter(task)
        try:
            try:
                handler = self.routes.resolve(request.method, request.path)
            except ApiError as error:
                return error.response(unrouted_headers(runtime), request_id_of(request))
            return await handler(request)
        except ApiError as error:
            return error.response(request_id=request_id_of(request))
        except asyncio.CancelledError:
            transport = request.transport
            if not runtime.stopping.is_set() or transport is None or transport.is_closing():
                raise  # the client went away, or this is not our shutdown
            task.uncancel()  # shutdown cancelled it to say goodbye: answer instead of dropping the line
            return await last_word(request)
        finally:
            runtime.requests.leave(task)


def unrouted_headers(runtime: Runtime) -> dict[str, str]:
    """What every answer carries, for requests that reached no handler."""
    return {"x-gatewayd-deployment": "", "x-gatewayd-attempts": "0",
            "x-gatewayd-config": runtime.holder.current.graph.version}


async def last_word(request: web.BaseRequest) -> web.StreamResponse:
    """What a request still running at the end of the shutdown grace gets."""
    response = request.get(PREPARED)
    if response is None:
        return ApiError(503, "shutting_down", SHUTTING_DOWN, headers={"Connection": "close"}).response()
    if response.content_type != "text/event-stream":
        raise asyncio.CancelledError  # a body is half sent: closing the connection is all that is left
    with contextlib.suppress(ConnectionError, RuntimeError):
        error_event = request.get(ERROR_EVENT)
        if error_event is None:
            await response.write(b"data: " + error_body(503, "shutting_down", SHUTTING_DOWN) + b"\n\n")
        else:
            await response.write(error_event(503, "shutting_down", SHUTTING_DOWN))
        await response.write_eof()
        return response
    raise asyncio.CancelledError


def create_app(runtime: Runtime) -> GatewayHandler:
    """The request handler for aiohttp's low-level `web.Server` (server.py, tests/conftest.py).
    The caller closes the runtime (its connection pools) once the server has stopped."""
    routes = Routes()
    openai = OpenAIHandlers(runtime)
    routes.post("/v1/chat/completions", openai.chat_completions)
    routes.post("/v1/embeddings", openai.embeddings)
    routes.get("/v1/models", openai.models)
    routes.add_prefix("GET", MODEL_PATH, openai.model)
    anthropic = AnthropicHandlers(runtime)
    routes.post("/v1/messages", anthropic.messages)
    routes.post("/v1/messages/count_tokens", anthropic.count_tokens)
    routes.post("/v1/responses", ResponsesHandlers(runtime).create)
    routes.get("/healthz", healthz)

    async def readyz(request: web.BaseRequest) -> web.Response:
        if runtime.ready():
            return json_response({"status": "ready", "config": runtime.holder.current.graph.version})
        return json_response({"status": "not_ready", "reason": "no deployment is usable"}, status=503)

    routes.get("/readyz", readyz)
    add_ops_routes(routes, runtime)
    add_event_routes(routes, runtime)
    return GatewayHandler(runtime, routes)


async def healthz(request: web.BaseRequest) -> web.Response:
    return json_response({"status": "ok"})
