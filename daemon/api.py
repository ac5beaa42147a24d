"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/embeddings, /v1/models.

Each handler reads the snapshot holder once (`runtime.holder.current`) and uses
only that snapshot until it answers, so a reload landing meanwhile changes
nothing for it. The body is read once, bounded in size and time, and parsed
once; OpenAI-shaped answers are forwarded as the upstream's bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from gatewayd.adapters.base import FailureClass, UpstreamError
from gatewayd.daemon.accesslog import AccessRecord, emit
from gatewayd.daemon.errors import ApiError, error_body
from gatewayd.daemon.graph import AppKey, Graph, ServerSettings
from gatewayd.daemon.router import Outcome, RoutingFailed

if TYPE_CHECKING:
    from gatewayd.daemon.app import Runtime
    from gatewayd.daemon.runtime import Snapshot

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def authenticate(request: web.Request, graph: Graph) -> AppKey | None:
    """The app key the request presents, compared in constant time; None when auth is off."""
    keys = graph.server.keys
    if keys is None:
        return None
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not token:
        raise ApiError(401, "missing_api_key", "an app key is required: send 'Authorization: Bearer KEY'")
    presented = token.encode()
    found = None
    for key in keys:  # no early exit: every key is compared, so timing says nothing
        if hmac.compare_digest(presented, key.key.reveal().encode()):
            found = key
    if found is None:
        raise ApiError(401, "invalid_api_key", "the app key is not valid")
    return found


def refuse_cross_origin(request: web.Request) -> None:
    """A browser page on another origin may not use the gateway (no CORS, ever)."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise ApiError(403, "cross_origin", "requests from a browser on another origin are refused")
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.headers.get("Host", ""):
        raise ApiError(403, "cross_origin", "requests from a browser on another origin are refused")


async def read_json(request: web.Request, server: ServerSettings) -> dict:
    length = request.content_length
    if length is not None and length > server.max_body:
        raise ApiError(413, "request_too_large", f"the body is {length} bytes; the limit is {server.max_body}")
    body = bytearray()
    try:
        async with asyncio.timeout(server.read_timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > server.max_body:
                    raise ApiError(413, "request_too_large", f"the body exceeds the limit of {server.max_body} bytes")
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the request body did not arrive in time") from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return payload


def gateway_headers(snapshot: Snapshot, deployment: str | None, attempts: int) -> dict[str, str]:
    return {"x-gatewayd-deployment": deployment or "", "x-gatewayd-attempts": str(attempts),
            "x-gatewayd-config": snapshot.graph.version}


class OpenAIHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "chat")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "embeddings")

    async def models(self, request: web.Request) -> web.Response:
        snapshot = self.runtime.holder.current
        record = AccessRecord(request.method, request.path)
        try:
            refuse_cross_origin(request)
            key = authenticate(request, snapshot.graph)
        except ApiError as error:
            record.status = error.status
            emit(record, snapshot.graph.server.log_format)
            return error.response()
        allowed = [name for name in snapshot.graph.routes if key is None or key.allow is None or name in key.allow]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gatewayd"} for name in allowed]
        record.status = 200
        record.key = key.name if key else None
        emit(record, snapshot.graph.server.log_format)
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json",
                            headers={"x-gatewayd-config": snapshot.graph.version})

    async def handle(self, request: web.Request, operation: str) -> web.StreamResponse:
        runtime = self.runtime
        snapshot = runtime.holder.current
        graph = snapshot.graph
        started = time.monotonic()
        record = AccessRecord(request.method, request.path, config=graph.version)
        snapshot.enter()
        try:
            return await self.serve(request, snapshot, operation, record, started)
        except ApiError as error:
            record.status, record.error = error.status, error.message
            return error.response({"x-gatewayd-config": graph.version})
        except RoutingFailed as failure:
            return self.routing_failed(snapshot, failure, record)
        finally:
            snapshot.leave()
            record.latency_ms = (time.monotonic() - started) * 1000
            runtime.metrics.observe(record)
            emit(record, graph.server.log_format)

    async def serve(self, request: web.Request, snapshot: Snapshot, operation: str,
                    record: AccessRecord, started: float) -> web.StreamResponse:
        graph = snapshot.graph
        refuse_cross_origin(request)
        key = authenticate(request, graph)
        record.key = key.name if key else None
        body = await read_json(request, graph.server)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "missing_model", "the body needs a 'model' naming an alias or model", param="model")
        record.model = model
        route = graph.routes.get(model)
        if route is None:
            raise ApiError(404, "model_not_found", f"the model '{model}' does not exist", param="model")
        if key is not None and key.allow is not None and model not in key.allow:
            raise ApiError(403, "model_not_allowed", f"the app key '{key.name}' may not use '{model}'", param="model")
        streaming = operation == "chat" and body.get("stream") is True
        outcome = await self.runtime.router.route(snapshot, route, "stream" if streaming else operation, body)
        record.deployment, record.attempts = outcome.deployment.name, outcome.attempts
        headers = gateway_headers(snapshot, outcome.deployment.name, outcome.attempts)
        if outcome.stream is None:
            reply = outcome.reply
            record.status = 200
            record.ttfb_ms = (time.monotonic() - started) * 1000
            self.book_usage(record, outcome, reply.usage)
            return web.Response(body=reply.body, content_type="application/json", headers=headers)
        return await self.relay(request, outcome, headers, record, started, graph)

    async def relay(self, request: web.Request, outcome: Outcome, headers: dict[str, str],
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
            await response.write(outcome.first)
            record.ttfb_ms = (time.monotonic() - started) * 1000
            while True:
                wait = min(timeouts.idle, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
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
            outcome.health.abandon_probe()
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
