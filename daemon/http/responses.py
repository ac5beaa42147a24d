"""OpenAI's Responses API endpoint, `POST /v1/responses`, for `client.responses.create` and
the tools built on it.

It goes through the same pipeline as the other endpoints (pipeline.py) with this module's
codec (`ResponsesInbound`): the checks OpenAI makes of a body, and the readers and writers of
daemon/formats/responses.py. To `openai` and `azure-openai` deployments the body goes on as
it came (only `model` replaced) and the answer and events come back as their bytes; to any
other, the stateless part is translated both ways, and a field that needs state kept at
OpenAI (`previous_response_id`, `conversation`, ...) is that deployment's 400
`unsupported_parameter`: a plan may still serve the request from an OpenAI deployment first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable

import orjson
from aiohttp import web

from gatewayd.daemon.core.conversation import Chat, client_error
from gatewayd.daemon.core.exchange import Operation, WireFormat
from gatewayd.daemon.formats import responses as codec
from gatewayd.daemon.http.errors import ApiError, error_body
from gatewayd.daemon.http.pipeline import Pipeline
from gatewayd.daemon.http.requestid import IdentifiedRequest

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime


def check_body(body: dict) -> bool:
    """What OpenAI refuses before any model sees the request, refused here the same way. Says
    whether the client asks for a stream."""
    text = body.get("input")
    if not (isinstance(text, str) and text or isinstance(text, list) and text):
        raise ApiError(400, "invalid_value", "'input' must be a non-empty string or array of input items",
                       param="input")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "invalid_type", "'stream' must be a boolean", param="stream")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        raise ApiError(400, "invalid_type", "'tools' must be an array of tool objects", param="tools")
    return stream is True


def decode_stateless(body: dict) -> Chat:
    """The request in neutral terms, for a deployment that is not OpenAI's: one that needs
    state kept at OpenAI cannot be served there."""
    field = codec.stateful_fields(body)
    if field is not None:
        raise client_error(f"'{field}' needs state kept by OpenAI's Responses API, which this deployment "
                           "does not have", "unsupported_parameter", field)
    return codec.decode_chat(body)


class ResponsesInbound:
    """The Responses API's format, as the pipeline reads and answers it."""

    format = WireFormat.RESPONSES
    label = format.value
    operation = Operation.CHAT
    decode = staticmethod(decode_stateless)
    encode_reply = staticmethod(codec.encode_answer)
    stream_writer = staticmethod(codec.StreamEncoder)
    stream_error = staticmethod(codec.stream_error)
    upstream_error_body = staticmethod(codec.upstream_error_body)
    check = staticmethod(check_body)
    error_body = staticmethod(error_body)

    @staticmethod
    def error_event(status: int, code: str, message: str) -> bytes:
        event = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": 0}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


RESPONSES = ResponsesInbound()


class ResponsesHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.pipeline = Pipeline(runtime)

    def create(self, request: IdentifiedRequest) -> Awaitable[web.StreamResponse]:
        return self.pipeline.handle(request, RESPONSES)

