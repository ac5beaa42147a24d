"""The Anthropic Messages endpoint, `POST /v1/messages`, for the `anthropic` SDKs and the
tools built on them.

It goes through the same pipeline as the OpenAI endpoints (pipeline.py), with this module's
codec for Anthropic's wire format (`AnthropicInbound`): the checks Anthropic makes of a body,
and the readers and writers of daemon/formats/anthropic.py. Every error, the gateway's own
included, is in Anthropic's shape. An Anthropic upstream gets the body as it came (only
`model` replaced) and the client its answer's bytes; any other is translated both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable

from aiohttp import web

from gatewayd.daemon.core.exchange import Operation, WireFormat
from gatewayd.daemon.formats import anthropic as codec
from gatewayd.daemon.http.errors import ApiError, error_kind
from gatewayd.daemon.http.pipeline import Pipeline

if TYPE_CHECKING:
    from gatewayd.daemon.core.replies import Answer, Embeddings
    from gatewayd.daemon.http.runtime import Runtime


def check_body(body: dict) -> None:
    """What Anthropic refuses before any model sees the request, refused here the same way:
    a 400 now, never a 500 later."""
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


class AnthropicInbound:
    """Anthropic's Messages format, as the pipeline reads and answers it."""

    format = WireFormat.ANTHROPIC
    operation = Operation.CHAT
    decode = staticmethod(codec.decode_chat)
    stream_writer = staticmethod(codec.StreamEncoder)
    stream_error = staticmethod(codec.stream_error)
    upstream_error_body = staticmethod(codec.upstream_error_body)
    check = staticmethod(check_body)

    @staticmethod
    def wants_stream(body: dict) -> bool:
        return body.get("stream") is True

    @staticmethod
    def encode_reply(answer: Answer | Embeddings, body: dict) -> bytes:
        return codec.encode_answer(answer)

    @staticmethod
    def error_body(status: int, code: str, message: str, param: str | None = None) -> bytes:
        return codec.error_body(message, error_kind(status), code, param)


MESSAGES = AnthropicInbound()


class AnthropicHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.pipeline = Pipeline(runtime)

    def messages(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        return self.pipeline.handle(request, MESSAGES)
