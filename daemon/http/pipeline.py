"""One client request's way through the gateway, whatever wire format it speaks.

`Pipeline.handle(request, inbound)` reads the serving snapshot once
(`runtime.holder.current`) and uses only it until it answers, so a reload that lands
meanwhile changes nothing for it; checks the origin and the app key; reads the body once,
bounded in size and time, and parses it once; has the inbound format's codec (`Inbound`)
check it; routes it; and answers. An answer in the client's own format (an upstream of that
format) goes on as its bytes; any other is written by the codec. Its `finally` books metrics
and writes the access line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Callable, Protocol

import orjson
from aiohttp import web

from gatewayd.daemon.core.exchange import Operation, Request, WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import AppKey, Graph, Route, ServerSettings
from gatewayd.daemon.core.replies import Answer, Embeddings, StreamEvent, Usage
from gatewayd.daemon.formats.openai import decode_embed
from gatewayd.daemon.http.cache import HIT, MISS, SKIP, Lookup, chat_text
from gatewayd.daemon.http.errors import ApiError
from gatewayd.daemon.http.guard import authenticate, refuse_cross_origin
from gatewayd.daemon.http.jsonsyntax import explain_invalid_json
from gatewayd.daemon.http.requestid import IdentifiedRequest
from gatewayd.daemon.http.streaming import ERROR_EVENT, PREPARED, SSE_HEADERS
from gatewayd.daemon.observe.accesslog import AccessRecord
from gatewayd.daemon.routing.quota import KeyTicket, Refused, estimate_tokens
from gatewayd.daemon.routing.router import Outcome, RoutingFailed

if TYPE_CHECKING:
    from gatewayd.daemon.core.conversation import Chat, Embed
    from gatewayd.daemon.http.runtime import Runtime
    from gatewayd.daemon.routing.snapshot import Snapshot

log = logging.getLogger("gatewayd")
TOO_LARGE = object()  # what a kept stream that outgrew the cache is left as


class StreamWriter(Protocol):
    """One client's stream in its format: each neutral event, the end, or the failure that ends it."""

    def encode(self, event: StreamEvent) -> bytes: ...

    def end(self, usage: Usage | None) -> bytes: ...

    def fail(self, error: UpstreamError) -> bytes: ...


class Inbound(Protocol):
    """An inbound wire format's codec for one operation: what the pipeline asks of it."""

    format: WireFormat
    label: str  # the format's name, for the access line (an Enum's `value` is a call each time)
    operation: str  # an Operation

    def check(self, body: dict) -> bool:
        """Raise ApiError (a 400) for a body this format refuses, before routing; else say
        whether the client asks for a stream."""

    decode: Callable[[dict], Chat | Embed]  # the body as a neutral request, for translating adapters

    def encode_reply(self, answer: Answer | Embeddings, body: dict) -> bytes: ...

    def stream_writer(self, body: dict) -> StreamWriter: ...

    def stream_error(self, error: UpstreamError) -> bytes:
        """The event that ends a stream whose upstream failed after the first byte."""

    def upstream_error_body(self, error: UpstreamError) -> bytes:
        """What the client is told of an upstream's refusal of its request."""

    def error_body(self, status: int, code: str, message: str, param: str | None = None) -> bytes: ...

    def error_event(self, status: int, code: str, message: str) -> bytes:
        """An error of the gateway's own as the event that ends a stream (a shutdown past its grace)."""


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


def route_of(body: dict, graph: Graph, key: AppKey | None, record: AccessRecord) -> Route:
    """The plan of the body's `model`, which the app key may use; noted in the access line."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "missing_model", "the body needs a 'model' naming an alias or model", param="model")
    record.model = model
    route = graph.routes.get(model)
    if route is None:
        raise ApiError(404, "model_not_found", f"the model '{model}' does not exist", param="model")
    if key is not None and key.allow is not None and model not in key.allow:
        raise ApiError(403, "model_not_allowed", f"the app key '{key.name}' may not use '{model}'", param="model")
    return route


def gateway_headers(snapshot: Snapshot, deployment: str | None, attempts: int,
                    limits: dict[str, str] | None = None) -> dict[str, str]:
    """The headers every answer carries; after `limits` (a limited key's `x-ratelimit-*`) when given."""
    if limits is None:
        return {"x-gatewayd-deployment": deployment or "", "x-gatewayd-attempts": str(attempts),
                "x-gatewayd-config": snapshot.graph.version}
    headers = limits.copy()  # a copy clones the dict's table: cheaper than adding six headers to another
    headers["x-gatewayd-deployment"] = deployment or ""
    headers["x-gatewayd-attempts"] = str(attempts)
    headers["x-gatewayd-config"] = snapshot.graph.version
    return headers


class EventStreamResponse(web.StreamResponse):
    """A streamed answer whose headers wait for its first event and go out with it, in one write:
    aiohttp sends a StreamResponse's headers at `prepare()` on their own, a packet and a wake-up
    of the client before the first event's. (`relay` writes the first event right after
    `prepare()`; a shutdown's last event and `write_eof()` send waiting headers too.)"""

    _send_headers_immediately = False


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: IdentifiedRequest, inbound: Inbound) -> web.StreamResponse:
        """Serve one request (every request the server makes carries its id: connection.py).
        One coroutine from the checks to the answer, and its bookkeeping in `finally`: each
        frame more on this path is resumed at every await."""
        runtime = self.runtime
        snapshot = runtime.holder.current
        graph = snapshot.graph
        started = time.monotonic()
        record = AccessRecord(request.method, request.path, config=graph.version, format=inbound.label,
                              request_id=request.request_id)
        ring = runtime.ring  # for /admin/requests and traces: no call at all when neither is on
        trail = ring.begin(started, request.headers, inbound.operation) if ring.wanted else None
        snapshot.enter()
        ticket: KeyTicket | None = None  # the request's bookings against its key's limits
        try:
            refuse_cross_origin(request)
            key = authenticate(request, graph)
            record.key = key.name if key else None
            body = await read_json(request, graph.server)
            route = route_of(body, graph, key, record)
            call = Request(inbound.operation, inbound.format, body, stream=inbound.check(body),
                           decode=inbound.decode, headers=request.headers)
            cached = route.cache != "off" and runtime.cache.store is not None
            if cached:
                record.cache = SKIP  # until the lookup: an answer refused before it did not look
            limited = key is not None and key.limited
            tokens = 0
            if limited or graph.counts_tokens:
                size = request.content_length or len(orjson.dumps(body))
                tokens = estimate_tokens(body, size, graph, route, inbound.operation != Operation.EMBEDDINGS)
            if limited:
                quotas = runtime.router.quotas
                if quotas.shared is None:
                    ticket = quotas.admit_key(key, tokens, time.time(), graph.timezone)
                else:
                    ticket = await quotas.admit_key_shared(key, tokens, time.time(), graph.timezone,
                                                           graph.default_policy.timeouts.total)
                if trail is not None:
                    trail.key_limited = True
            lookup = None
            if cached:
                lookup = runtime.cache.lookup(graph, route, inbound.label, body, key,
                                              request.headers.get("Cache-Control"), call.stream)
                if lookup.status == MISS and runtime.cache.shared is not None:
                    lookup = await runtime.cache.shared_lookup(lookup, call.stream)
                if lookup.status == MISS and route.cache == "semantic" and inbound.operation == Operation.CHAT:
                    lookup = await runtime.cache.similar(lookup, chat_text(call.chat()), call.stream,
                                                         lambda text: self.embed(snapshot, text))
                record.cache = lookup.status
                if lookup.answer is not None:
                    return await self.replay(request, snapshot, lookup, call.stream, ticket, record, started)
            outcome = await runtime.router.route(snapshot, route, call, key.priority if key else "normal", tokens,
                                                 trail)
            record.deployment, record.attempts = outcome.deployment.name, outcome.attempts
            headers = gateway_headers(snapshot, outcome.deployment.name, outcome.attempts,
                                      ticket.headers if ticket is not None else None)
            if lookup is not None:
                headers["x-gatewayd-cache"] = lookup.status
            if outcome.stream is not None:
                keep = lookup if lookup is not None and lookup.store else None
                return await self.relay(request, inbound, body, outcome, headers, record, started, graph, keep)
            reply = outcome.reply
            record.status = 200
            record.ttfb_ms = (time.monotonic() - started) * 1000
            self.book_usage(record, outcome, reply.usage)
            answer = reply.body if reply.format is inbound.format else inbound.encode_reply(reply.answer, body)
            if lookup is not None and lookup.store:
                runtime.cache.keep(lookup, outcome.deployment.name, body=answer)
            return web.Response(body=answer, content_type="application/json", headers=headers)
        except ApiError as error:
            record.status, record.error = error.status, error.message
            if trail is not None:
                trail.code = error.code
            body = inbound.error_body(error.status, error.code, error.message, error.param, record.request_id)
            headers = {**error.headers, **gateway_headers(snapshot, None, record.attempts)}
            if ticket is not None:
                headers.update(ticket.headers)
            if record.cache is not None:
                headers["x-gatewayd-cache"] = record.cache
            return web.Response(status=error.status, body=body, content_type="application/json", headers=headers)
        except Refused as refusal:
            if trail is not None:
                trail.code = refusal.code
            return self.refused(snapshot, inbound, refusal, record)
        except RoutingFailed as failure:
            if trail is not None:
                trail.code = failure.code
            return self.routing_failed(snapshot, inbound, failure, record, ticket)
        finally:
            snapshot.leave()
            if ticket is not None:
                used = record.prompt_tokens
                if used is not None:
                    used += record.completion_tokens or 0
                elif record.cache == HIT:  # a cached answer books no tokens
                    used = 0
                ticket.settle(used, record.cost, record.status == 200)
            record.latency_ms = (time.monotonic() - started) * 1000
            runtime.metrics.observe(record)
            runtime.access.emit(record, graph.server.log_format)
            if trail is not None:
                ring.keep(trail, record)

    async def embed(self, snapshot: Snapshot, text: str) -> list[float] | None:
        """`text` embedded through `cache.semantic.embeddings` (a route like any other: its
        fallbacks, retries and cooldowns apply); None when that failed, which is only a miss."""
        graph = snapshot.graph
        name = graph.cache.semantic.embeddings
        request = Request(Operation.EMBEDDINGS, WireFormat.OPENAI,
                          {"model": name, "input": text, "encoding_format": "float"}, decode=decode_embed)
        try:
            outcome = await self.runtime.router.route(snapshot, graph.routes[name], request)
            reply = outcome.reply
            if reply.answer is not None:
                return reply.answer.vectors[0]
            return orjson.loads(reply.body)["data"][0]["embedding"]
        except RoutingFailed as failure:
            log.warning("semantic cache: embedding the request failed, a miss: %s",
                        self.runtime.redact(failure.message), extra={"event": "cache_embed_failed"})
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            log.warning("semantic cache: the embeddings answer had no vector (%s), a miss", type(exc).__name__,
                        extra={"event": "cache_embed_failed"})
        return None

    async def replay(self, request: web.BaseRequest, snapshot: Snapshot, lookup: Lookup, stream: bool,
                     ticket: KeyTicket | None, record: AccessRecord, started: float) -> web.StreamResponse:
        """A cache hit: the stored answer, in the form the client asked for, as it was first given."""
        answer = lookup.answer
        record.status, record.deployment = 200, answer.deployment
        headers = gateway_headers(snapshot, answer.deployment, 0)
        headers["x-gatewayd-cache"] = HIT
        if lookup.similarity is not None:
            headers["x-gatewayd-cache-similarity"] = f"{lookup.similarity:.4f}"
        if ticket is not None:
            headers.update(ticket.headers)
        if not stream:
            record.ttfb_ms = (time.monotonic() - started) * 1000
            return web.Response(body=answer.body, content_type="application/json", headers=headers)
        response = EventStreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        await response.prepare(request)
        await response.write(answer.events)
        record.ttfb_ms = (time.monotonic() - started) * 1000
        await response.write_eof()
        return response

    async def relay(self, request: web.BaseRequest, inbound: Inbound, body: dict, outcome: Outcome,
                    headers: dict[str, str], record: AccessRecord, started: float,
                    graph: Graph, keep: Lookup | None = None) -> web.StreamResponse:
        """Relay an open stream; a failure after the first byte ends it with an error event, and
        no end marker: the client must not take it for a complete answer. The headers go out
        with the first event, in one write; then each item the stream yields in one write (from
        an upstream of the client's format, every event one read brought, each checked). With
        `keep`, what the client is sent is kept too, and stored in the cache if it ends cleanly."""
        response = EventStreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        record.status = 200
        stream = outcome.stream
        events = outcome.events
        writer = None if stream.format is inbound.format else inbound.stream_writer(body)
        encode = None if writer is None else writer.encode
        timeouts = outcome.deployment.policy.timeouts
        deadline = started + graph.default_policy.timeouts.total
        error: UpstreamError | None = None
        sent: list | None = None if keep is None else []
        write = response.write if sent is None else self.keeping(response, sent, self.runtime.cache.store.max_bytes)
        try:
            await response.prepare(request)
            request[PREPARED] = response  # a shutdown past the grace ends it with an SSE error event
            request[ERROR_EVENT] = inbound.error_event
            await write(outcome.first if encode is None else encode(outcome.first))
            record.ttfb_ms = (time.monotonic() - started) * 1000
            following, idle, clock = events.__anext__, timeouts.idle, asyncio.get_running_loop().time
            ends = clock() + deadline - time.monotonic()  # timeouts.total, on the clock deadlines sweep by
            try:
                # One deadline for the whole relay, moved at each event (a new one per event cost
                # more than the rest of the gateway's work on it): `idle` from the wait's start, or
                # `total`; none while writing, where a slow client is not the upstream's silence.
                with self.runtime.router.deadlines.bound(math.inf) as silence:
                    while True:
                        silence.when = min(clock() + idle, ends)
                        try:
                            event = await following()
                        except StopAsyncIteration:
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
                        silence.when = math.inf
                        await write(event if encode is None else encode(event))
            except TimeoutError:
                error = UpstreamError(FailureClass.TIMEOUT, "the upstream stream went silent "
                                      "(timeouts.idle or timeouts.total passed)")
            if error is None and not stream.done:
                error = UpstreamError(FailureClass.CONNECT, "the upstream closed the stream before it was complete")
            if error is not None:
                record.error = error.describe()
                await response.write(inbound.stream_error(error) if writer is None else writer.fail(error))
            elif writer is not None:
                await write(writer.end(stream.usage))
            self.runtime.router.finish_stream(outcome, error)
            await response.write_eof()
            if sent is not None and error is None and sent and sent[-1] is not TOO_LARGE:
                self.runtime.cache.keep(keep, outcome.deployment.name, events=b"".join(sent))
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

    @staticmethod
    def keeping(response: web.StreamResponse, sent: list, limit: int):
        """`response.write` that also keeps what it sends, up to `limit` bytes (past it, the
        stream is too large to store and `sent` ends with TOO_LARGE)."""
        size = 0

        def write(data: bytes):
            nonlocal size
            if sent and sent[-1] is TOO_LARGE:
                return response.write(data)
            size += len(data)
            if size > limit:
                sent.clear()
                sent.append(TOO_LARGE)
            else:
                sent.append(data)
            return response.write(data)

        return write

    def book_usage(self, record: AccessRecord, outcome: Outcome, usage) -> None:
        if usage is None:
            return
        record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        pricing = outcome.deployment.pricing
        if pricing is not None:
            record.cost = pricing.cost(usage.prompt_tokens, usage.completion_tokens)

    def refused(self, snapshot: Snapshot, inbound: Inbound, refusal: Refused, record: AccessRecord) -> web.Response:
        """A key over its limits or budget: a 429 before any upstream call."""
        record.status, record.error = 429, refusal.message
        self.runtime.metrics.rejected(refusal.reason)
        headers = {**gateway_headers(snapshot, None, 0), **refusal.headers,
                   "Retry-After": str(max(1, math.ceil(refusal.retry_after)))}
        if record.cache is not None:
            headers["x-gatewayd-cache"] = record.cache
        return web.Response(status=429, body=inbound.error_body(429, refusal.code, refusal.message,
                                                                request_id=record.request_id),
                            content_type="application/json", headers=headers)

    def routing_failed(self, snapshot: Snapshot, inbound: Inbound, failure: RoutingFailed,
                       record: AccessRecord, ticket: KeyTicket | None = None) -> web.Response:
        record.status, record.attempts, record.deployment = failure.status, failure.attempts, failure.deployment
        record.error = failure.message
        headers = gateway_headers(snapshot, failure.deployment, failure.attempts)
        if ticket is not None:
            headers.update(ticket.headers)
        if record.cache is not None:
            headers["x-gatewayd-cache"] = record.cache
        if failure.retry_after is not None:
            headers["Retry-After"] = str(int(failure.retry_after))
        if failure.upstream_error is not None:
            body = inbound.upstream_error_body(failure.upstream_error)
        else:
            body = inbound.error_body(failure.status, failure.code, failure.message, request_id=record.request_id)
        return web.Response(status=failure.status, body=body, content_type="application/json", headers=headers)
