"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/embeddings, /v1/models.

Each handler reads the snapshot holder once (`runtime.holder.current`) and uses
only that snapshot until it answers, so a reload landing meanwhile changes
nothing for it. The body is read once, bounded in size and time, and parsed
once; OpenAI-shaped answers are forwarded as the upstream's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable

import orjson
from aiohttp import web

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import Graph, ServerSettings
from gatewayd.daemon.http import catalog
from gatewayd.daemon.http.errors import ApiError, error_body
from gatewayd.daemon.http.guard import authenticate, refuse_cross_origin
from gatewayd.daemon.http.jsonsyntax import explain_invalid_json
from gatewayd.daemon.http.streaming import PREPARED, SSE_HEADERS
from gatewayd.daemon.observe.accesslog import AccessRecord
from gatewayd.daemon.routing.router import Outcome, RoutingFailed

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime
    from gatewayd.daemon.routing.snapshot import Snapshot

log = logging.getLogger("gatewayd")
MODEL_PATH = "/v1/models/"  # + a model id: GET /v1/models/{id}


async def read_json(request: web.BaseRequest, server: ServerSettings) -> dict:
    length = request.content_length
    if length is not None and length > server.max_body:
        raise ApiError(413, "request_too_large", f"the body is {length} bytes; the limit is {server.max_body}")
    content = request.content
    if content.is_eof():  # the whole body came with the headers (the usual case): no waiting, no timer
        body = content.read_nowait()
        if len(body) > server.max_body:
            raise ApiError(413, "request_too_large", f"the body exceeds the limit of {server.max_body} bytes")
        return parse_body(body)
    body = bytearray()
    try:
        async with asyncio.timeout(server.read_timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > server.max_body:
                    raise ApiError(413, "request_too_large", f"the body exceeds the limit of {server.max_body} bytes")
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the request body did not arrive in time") from None
    return parse_body(body)


def parse_body(body: bytes | bytearray) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", explain_invalid_json(body, exc)) from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return payload


# optional fields every adapter relies on the type of: name, type, how a message says it
TYPED_FIELDS = (("stream", bool, "a boolean"), ("stream_options", dict, "an object"),
                ("tools", list, "an array of tool objects"))


def check_fields(body: dict, operation: str) -> None:
    """The fields every adapter relies on, checked as OpenAI checks them: a 400 now, never a 500 later."""
    if operation == "embeddings":
        text = body.get("input")
        if not (isinstance(text, str) and text or isinstance(text, list) and text and all(
                isinstance(item, (str, int, list)) and not isinstance(item, bool) for item in text)):
            raise ApiError(400, "invalid_value", "'input' must be a non-empty string, or an array of strings "
                           "or token arrays", param="input")
        return
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "invalid_value", "'messages' must be a non-empty array of message objects",
                       param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "invalid_value", f"messages[{index}] must be an object with a string 'role'",
                           param=f"messages[{index}]")
    # Most requests carry none of these, or only `stream`: three membership tests, no loop.
    if "stream" in body or "stream_options" in body or "tools" in body:
        check_typed_fields(body)


def check_typed_fields(body: dict) -> None:
    """`stream`, `stream_options` and `tools`, when present, of the type OpenAI gives them."""
    for name, kind, what in TYPED_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise ApiError(400, "invalid_type", f"'{name}' must be {what}", param=name)
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            raise ApiError(400, "invalid_type", "'tools' must be an array of tool objects", param="tools")


def gateway_headers(snapshot: Snapshot, deployment: str | None, attempts: int) -> dict[str, str]:
    return {"x-gatewayd-deployment": deployment or "", "x-gatewayd-attempts": str(attempts),
            "x-gatewayd-config": snapshot.graph.version}


class OpenAIHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def chat_completions(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        return self.handle(request, "chat")  # the handler's own coroutine: one frame less on every resume

    def embeddings(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        return self.handle(request, "embeddings")

    def models(self, request: web.BaseRequest) -> Awaitable[web.Response]:
        """`GET /v1/models`: what the key may use and can be served (catalog.py)."""
        return self.listing(request, AccessRecord(request.method, request.path), None)

    def model(self, request: web.BaseRequest) -> Awaitable[web.Response]:
        """`GET /v1/models/{id}`: one entry of that list, or 404 `model_not_found`. The id is
        the rest of the decoded path, `/` and `:` included; the access line names it as
        `model` (quoted when it must be) under the route's path, never the raw path."""
        name = request.path[len(MODEL_PATH):]
        return self.listing(request, AccessRecord(request.method, MODEL_PATH + "{id}", model=name), name)

    async def listing(self, request: web.BaseRequest, record: AccessRecord, name: str | None) -> web.Response:
        """The list (`name` None) or the entry of `name`, after the same checks, with its access line."""
        snapshot = self.runtime.holder.current
        graph = snapshot.graph
        record.config = graph.version
        headers = gateway_headers(snapshot, None, 0)
        try:
            refuse_cross_origin(request)
            key = authenticate(request, graph)
            record.key = key.name if key else None
            if name is None:
                body = {"object": "list", "data": [catalog.entry(listed) for listed in catalog.listed(graph, key)]}
            elif catalog.is_listed(graph, key, name):
                body = catalog.entry(name)
            else:
                raise ApiError(404, "model_not_found", f"the model '{name}' does not exist", param="model")
        except ApiError as error:
            record.status, record.error = error.status, error.message
            self.runtime.access.emit(record, graph.server.log_format)
            return error.response(headers)
        record.status = 200
        self.runtime.access.emit(record, graph.server.log_format)
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def handle(self, request: web.BaseRequest, operation: str) -> web.StreamResponse:
        """Serve one chat or embeddings request. One coroutine from the checks to the answer, and
        its bookkeeping in `finally`: each frame more on this path is resumed at every await."""
        runtime = self.runtime
        snapshot = runtime.holder.current
        graph = snapshot.graph
        started = time.monotonic()
        record = AccessRecord(request.method, request.path, config=graph.version)
        snapshot.enter()
        try:
            refuse_cross_origin(request)
            key = authenticate(request, graph)
            record.key = key.name if key else None
            body = await read_json(request, graph.server)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise ApiError(400, "missing_model", "the body needs a 'model' naming an alias or model",
                               param="model")
            record.model = model
            route = graph.routes.get(model)
            if route is None:
                raise ApiError(404, "model_not_found", f"the model '{model}' does not exist", param="model")
            if key is not None and key.allow is not None and model not in key.allow:
                raise ApiError(403, "model_not_allowed", f"the app key '{key.name}' may not use '{model}'",
                               param="model")
            check_fields(body, operation)
            streaming = operation == "chat" and body.get("stream") is True
            outcome = await runtime.router.route(snapshot, route, "stream" if streaming else operation, body)
            record.deployment, record.attempts = outcome.deployment.name, outcome.attempts
            headers = gateway_headers(snapshot, outcome.deployment.name, outcome.attempts)
            if outcome.stream is not None:
                return await self.relay(request, outcome, headers, record, started, graph)
            reply = outcome.reply
            record.status = 200
            record.ttfb_ms = (time.monotonic() - started) * 1000
            self.book_usage(record, outcome, reply.usage)
            return web.Response(body=reply.body, content_type="application/json", headers=headers)
        except ApiError as error:
            record.status, record.error = error.status, error.message
            return error.response(gateway_headers(snapshot, None, record.attempts))
        except RoutingFailed as failure:
            return self.routing_failed(snapshot, failure, record)
        finally:
            snapshot.leave()
            record.latency_ms = (time.monotonic() - started) * 1000
            runtime.metrics.observe(record)
            runtime.access.emit(record, graph.server.log_format)

    async def relay(self, request: web.BaseRequest, outcome: Outcome, headers: dict[str, str],
                    record: AccessRecord, started: float, graph: Graph) -> web.StreamResponse:
        """Relay an open stream; a failure after the first byte ends it with an error event, no [DONE]."""
        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        record.status = 200
        stream = outcome.stream
        events = outcome.events
        timeouts = outcome.deployment.policy.timeouts
        deadline = started + graph.default_policy.timeouts.total
        error: UpstreamError | None = None
        try:
            await response.prepare(request)
            request[PREPARED] = response  # a shutdown past the grace ends it with an SSE error event
            await response.write(outcome.first)
            record.ttfb_ms = (time.monotonic() - started) * 1000
            while True:
                wait = min(timeouts.idle, deadline - time.monotonic())
                try:
                    with self.runtime.router.deadlines.bound(wait):
                        event = await events.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    error = UpstreamError(FailureClass.TIMEOUT, "the upstream stream went silent "
                                          "(timeouts.idle or timeouts.total passed)")
                    break
                except UpstreamError as exc:
                    error = exc
                    break
                except Exception as exc:  # an adapter bug must still end the stream visibly
                    log.exception("relaying a stream from %s failed", outcome.deployment.name,
                                  extra={"event": "relay_error", "deployment": outcome.deployment.name})
                    error = UpstreamError(FailureClass.INTERNAL,
                                          f"internal error while relaying ({type(exc).__name__})")
                    break
                await response.write(event)
            if error is None and not stream.done:
                error = UpstreamError(FailureClass.CONNECT, "the upstream closed the stream before it was complete")
            if error is not None:
                record.error = error.describe()
                await response.write(b"data: " + error_body(502, error.failure.value,
                                                           "the upstream stream failed: " + error.message) + b"\n\n")
            self.runtime.router.finish_stream(outcome, error)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            # the client went away (or we are shutting down): stop the upstream at once
            record.error = "client disconnected" if isinstance(exc, ConnectionResetError) else "cancelled"
            self.runtime.router.abandon_stream(outcome)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            await stream.aclose()
            self.book_usage(record, outcome, stream.usage)
        return response

    def book_usage(self, record: AccessRecord, outcome: Outcome, usage) -> None:
        if usage is None:
            return
        record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        pricing = outcome.deployment.pricing
        if pricing is not None:
            record.cost = pricing.cost(usage.prompt_tokens, usage.completion_tokens)

    def routing_failed(self, snapshot: Snapshot, failure: RoutingFailed, record: AccessRecord) -> web.Response:
        record.status, record.attempts, record.deployment = failure.status, failure.attempts, failure.deployment
        record.error = failure.message
        headers = gateway_headers(snapshot, failure.deployment, failure.attempts)
        if failure.retry_after is not None:
            headers["Retry-After"] = str(int(failure.retry_after))
        body = failure.upstream_body or error_body(failure.status, failure.code, failure.message)
        return web.Response(status=failure.status, body=body, content_type="application/json", headers=headers)
