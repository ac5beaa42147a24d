"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/embeddings, /v1/models.

Chat and embeddings go through the format-neutral pipeline (pipeline.py) with this
module's codec for OpenAI's wire format (`OpenAIInbound`): the checks OpenAI makes of a
body, and the writers of daemon/formats/openai.py. An OpenAI upstream's answers are
forwarded as its bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable

import orjson
from aiohttp import web

from gatewayd.daemon.core.exchange import Operation, WireFormat
from gatewayd.daemon.formats import anthropic as anthropic_codec
from gatewayd.daemon.formats import openai as codec
from gatewayd.daemon.formats.openai import decode_chat, decode_embed
from gatewayd.daemon.http import catalog
from gatewayd.daemon.http.errors import ApiError, error_body, error_kind
from gatewayd.daemon.http.guard import authenticate, refuse_cross_origin
from gatewayd.daemon.http.pipeline import Pipeline, gateway_headers
from gatewayd.daemon.http.requestid import IdentifiedRequest
from gatewayd.daemon.observe.accesslog import AccessRecord

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime

MODEL_PATH = "/v1/models/"  # + a model id: GET /v1/models/{id}


# optional fields every adapter relies on the type of: name, type, how a message says it
TYPED_FIELDS = (("stream", bool, "a boolean"), ("stream_options", dict, "an object"),
                ("tools", list, "an array of tool objects"))


def check_embeddings(body: dict) -> bool:
    """An embeddings body's `input`, checked as OpenAI checks it. (Embeddings never stream.)"""
    text = body.get("input")
    if not (isinstance(text, str) and text or isinstance(text, list) and text and all(
            isinstance(item, (str, int, list)) and not isinstance(item, bool) for item in text)):
        raise ApiError(400, "invalid_value", "'input' must be a non-empty string, or an array of strings "
                       "or token arrays", param="input")
    return False


def check_chat(body: dict) -> bool:
    """The fields every adapter relies on, checked as OpenAI checks them: a 400 now, never a 500
    later. Says whether the client asks for a stream."""
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
        return body.get("stream") is True
    return False


def check_typed_fields(body: dict) -> None:
    """`stream`, `stream_options` and `tools`, when present, of the type OpenAI gives them."""
    for name, kind, what in TYPED_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise ApiError(400, "invalid_type", f"'{name}' must be {what}", param=name)
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            raise ApiError(400, "invalid_type", "'tools' must be an array of tool objects", param="tools")


class OpenAIInbound:
    """OpenAI's wire format for one operation, as the pipeline reads and answers it."""

    format = WireFormat.OPENAI
    label = format.value
    encode_reply = staticmethod(codec.encode_reply)
    stream_writer = staticmethod(codec.StreamEncoder)
    stream_error = staticmethod(codec.stream_error)
    upstream_error_body = staticmethod(codec.upstream_error_body)
    error_body = staticmethod(error_body)

    @staticmethod
    def error_event(status: int, code: str, message: str) -> bytes:
        return b"data: " + error_body(status, code, message) + b"\n\n"

    def __init__(self, operation: str) -> None:
        self.operation = operation
        chat = operation == Operation.CHAT
        self.decode = decode_chat if chat else decode_embed
        self.check = check_chat if chat else check_embeddings  # an attribute: one call, no method frame


CHAT = OpenAIInbound(Operation.CHAT)
EMBEDDINGS = OpenAIInbound(Operation.EMBEDDINGS)


class OpenAIHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pipeline = Pipeline(runtime)

    def chat_completions(self, request: IdentifiedRequest) -> Awaitable[web.StreamResponse]:
        return self.pipeline.handle(request, CHAT)  # the pipeline's own coroutine: one frame less on every resume

    def embeddings(self, request: IdentifiedRequest) -> Awaitable[web.StreamResponse]:
        return self.pipeline.handle(request, EMBEDDINGS)

    def models(self, request: IdentifiedRequest) -> Awaitable[web.Response]:
        """`GET /v1/models`: what the key may use and can be served (catalog.py)."""
        return self.listing(request, AccessRecord(request.method, request.path, request_id=request.request_id), None)

    def model(self, request: IdentifiedRequest) -> Awaitable[web.Response]:
        """`GET /v1/models/{id}`: one entry of that list, or 404 `model_not_found`. The id is
        the rest of the decoded path, `/` and `:` included; the access line names it as
        `model` (quoted when it must be) under the route's path, never the raw path."""
        name = request.path[len(MODEL_PATH):]
        return self.listing(request, AccessRecord(request.method, MODEL_PATH + "{id}", model=name,
                                                  request_id=request.request_id), name)

    async def listing(self, request: IdentifiedRequest, record: AccessRecord, name: str | None) -> web.Response:
        """The list (`name` None) or the entry of `name`, after the same checks, with its access line;
        in Anthropic's shapes for a client that sends `anthropic-version` (the `anthropic` SDKs do)."""
        snapshot = self.runtime.holder.current
        graph = snapshot.graph
        record.config = graph.version
        headers = gateway_headers(snapshot, None, 0)
        anthropic = "anthropic-version" in request.headers
        try:
            refuse_cross_origin(request)
            key = authenticate(request, graph)
            record.key = key.name if key else None
            if name is None:
                names = catalog.listed(graph, key)
                body = catalog.anthropic_list(names) if anthropic else {
                    "object": "list", "data": [catalog.entry(listed) for listed in names]}
            elif catalog.is_listed(graph, key, name):
                body = catalog.anthropic_entry(name) if anthropic else catalog.entry(name)
            else:
                raise ApiError(404, "model_not_found", f"the model '{name}' does not exist", param="model")
        except ApiError as error:
            record.status, record.error = error.status, error.message
            self.runtime.access.emit(record, graph.server.log_format)
            request_id = record.request_id
            if anthropic:
                body = anthropic_codec.error_body(error.message, error_kind(error.status), error.code,
                                                  request_id=request_id)
                return web.Response(status=error.status, body=body, content_type="application/json",
                                    headers={**error.headers, **headers})
            return error.response(headers, request_id)
        record.status = 200
        self.runtime.access.emit(record, graph.server.log_format)
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)
