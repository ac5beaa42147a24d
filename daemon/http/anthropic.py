"""The Anthropic Messages endpoint, `POST /v1/messages`, for the `anthropic` SDKs and the
tools built on them.

It goes through the same pipeline as the OpenAI endpoints (pipeline.py), with this module's
codec for Anthropic's wire format (`AnthropicInbound`): the checks Anthropic makes of a body,
and the readers and writers of daemon/formats/anthropic.py. Every error, the gateway's own
included, is in Anthropic's shape. An Anthropic upstream gets the body as it came (only
`model` replaced) and the client its answer's bytes; any other is translated both ways.

`POST /v1/messages/count_tokens` goes to the first deployment of the model's plan that is an
Anthropic one and usable now (no retry, no fallback: counting is cheap and exact there);
when the plan has none, it is answered here with an estimate (about four characters a
token, over the text the request would send) and `x-gatewayd-estimate: true`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Awaitable

import orjson
from aiohttp import web

from gatewayd.daemon.core.exchange import Operation, Request, WireFormat
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.formats import anthropic as codec
from gatewayd.daemon.http.errors import ApiError, error_kind
from gatewayd.daemon.http.guard import authenticate, refuse_cross_origin
from gatewayd.daemon.http.pipeline import Pipeline, gateway_headers, read_json, route_of
from gatewayd.daemon.http.requestid import IdentifiedRequest
from gatewayd.daemon.observe.accesslog import AccessRecord
from gatewayd.daemon.routing.admission import judge

if TYPE_CHECKING:
    from gatewayd.daemon.core.replies import Answer, Embeddings
    from gatewayd.daemon.http.runtime import Runtime


def check_body(body: dict) -> bool:
    """What Anthropic refuses before any model sees the request, refused here the same way:
    a 400 now, never a 500 later. Says whether the client asks for a stream."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "invalid_value", "messages: must be a non-empty array of message objects",
                       param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ApiError(400, "invalid_value", f"messages.{index}: must be an object whose role is "
                           "'user' or 'assistant'", param=f"messages.{index}")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, "invalid_value", "max_tokens: a positive integer is required", param="max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "invalid_type", "stream: must be a boolean", param="stream")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        raise ApiError(400, "invalid_type", "tools: must be an array of tool objects", param="tools")
    return stream is True


class AnthropicInbound:
    """Anthropic's Messages format, as the pipeline reads and answers it."""

    format = WireFormat.ANTHROPIC
    label = format.value
    operation = Operation.CHAT
    decode = staticmethod(codec.decode_chat)
    stream_writer = staticmethod(codec.StreamEncoder)
    stream_error = staticmethod(codec.stream_error)
    upstream_error_body = staticmethod(codec.upstream_error_body)
    check = staticmethod(check_body)

    @staticmethod
    def encode_reply(answer: Answer | Embeddings, body: dict) -> bytes:
        return codec.encode_answer(answer)

    @staticmethod
    def error_body(status: int, code: str, message: str, param: str | None = None,
                   request_id: str | None = None) -> bytes:
        return codec.error_body(message, error_kind(status), code, param, request_id)

    @staticmethod
    def error_event(status: int, code: str, message: str) -> bytes:
        return b"event: error\ndata: " + codec.error_body(message, error_kind(status), code) + b"\n\n"


MESSAGES = AnthropicInbound()


CHARACTERS_PER_TOKEN = 4  # a common rule of thumb for English text and JSON


def estimate_tokens(body: dict) -> int:
    """About how many input tokens a request is: its system, messages and tools as JSON."""
    sent = orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")])
    return math.ceil(len(sent) / CHARACTERS_PER_TOKEN)


def json_answer(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class AnthropicHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pipeline = Pipeline(runtime)

    def messages(self, request: IdentifiedRequest) -> Awaitable[web.StreamResponse]:
        return self.pipeline.handle(request, MESSAGES)

    async def count_tokens(self, request: IdentifiedRequest) -> web.Response:
        runtime = self.runtime
        snapshot = runtime.holder.current
        graph = snapshot.graph
        started = time.monotonic()
        record = AccessRecord(request.method, request.path, config=graph.version, request_id=request.request_id)
        headers = gateway_headers(snapshot, None, 0)
        snapshot.enter()
        try:
            refuse_cross_origin(request)
            key = authenticate(request, graph)
            record.key = key.name if key else None
            body = await read_json(request, graph.server)
            route = route_of(body, graph, key, record)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "invalid_value", "messages: must be a non-empty array of message objects",
                               param="messages")
            now = time.time()
            for name in route.deployments():
                deployment = graph.deployments[name]
                if deployment.provider.type != "anthropic":
                    continue
                if not judge(deployment, runtime.health.peek(deployment), now).usable:
                    continue
                adapter = snapshot.adapters[deployment.provider.name]
                record.deployment, record.attempts = name, 1
                headers = gateway_headers(snapshot, name, 1)
                call = Request(Operation.CHAT, WireFormat.ANTHROPIC, body, headers=request.headers)
                try:
                    answer = await adapter.count_tokens(deployment, call)
                except UpstreamError as error:
                    record.status, record.error = error.status or 502, error.describe()
                    return json_answer(record.status, codec.upstream_error_body(error), headers)
                record.status = 200
                return json_answer(200, answer, headers)
            record.status = 200
            estimate = {"input_tokens": estimate_tokens(body)}
            return json_answer(200, orjson.dumps(estimate), {**headers, "x-gatewayd-estimate": "true"})
        except ApiError as error:
            record.status, record.error = error.status, error.message
            body = MESSAGES.error_body(error.status, error.code, error.message, error.param, record.request_id)
            return json_answer(error.status, body, {**error.headers, **headers})
        finally:
            snapshot.leave()
            record.latency_ms = (time.monotonic() - started) * 1000
            runtime.access.emit(record, graph.server.log_format)
