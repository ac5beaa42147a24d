"""OpenAI's chat completions and embeddings, the wire format of `/v1/chat/completions` and
`/v1/embeddings`: a client's request read as a neutral `Chat` (and a `Chat` written back as
one), and neutral answers, stream events and errors written in it.

    answer       {"id", "object": "chat.completion", "created", "model",
                  "choices": [{"index": 0, "message", "logprobs": null, "finish_reason"}], "usage"}
    stream       data: {"object": "chat.completion.chunk", ... "choices": [{"index": 0, "delta", ...}]}
                 ... then, if `stream_options.include_usage`, a chunk with no choices and the usage,
                 then data: [DONE]
    embeddings   {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}
                 (`encoding_format: base64`: each vector as little-endian float32, base64)
    error        {"error": {"message", "type", "code", "param"}}

Requests (`decode_chat`, `encode_chat`):

    messages[].role / content    -> Message role and content: a string as it is, a list of
                                    parts as Text / Refusal / Image (image_url.url and .detail),
                                    any other part as UnsupportedPart
    messages[].tool_calls        -> ToolCall(id, function.name, function.arguments)
    messages[].tool_call_id, name
    max_completion_tokens, max_tokens (the older name) -> max_tokens (the newer wins)
    stop (a string or a list)    -> a tuple of strings
    tools (function tools)       -> Tool(name, description, parameters, strict); others UnsupportedTool
    tool_choice                  -> AUTO / REQUIRED / NONE / ToolChoice("tool", name)
    response_format              -> ResponseFormat(type, and json_schema's name, description, schema, strict)
    stream, temperature, top_p, seed, presence_penalty, frequency_penalty, n, user,
    parallel_tool_calls          -> as they are
    any other field              -> `extra`, by name (logit_bias, stream_options, Ollama's keep_alive ...)

Written back, a `Chat` decoded here gives the same body with `model` replaced, with these
exceptions: the limit is always `max_completion_tokens` (OpenAI's reasoning models refuse the
older name), `stop` always a list, `stream` only when true, fields that were null are left out,
and a message's fields other than role, content, name, tool_calls and tool_call_id (a part's
other than those above) are not kept. A `Chat` from another format's decoder has its `extra`
left out: those fields are in that format's words.
"""

from __future__ import annotations

import base64
import struct
from types import MappingProxyType
from typing import Any

import orjson

from gatewayd.daemon.core.conversation import (
    AUTO,
    EMPTY,
    NONE,
    REQUIRED,
    Chat,
    Embed,
    Image,
    Malformed,
    Message,
    Part,
    Refusal,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    UnsupportedPart,
    UnsupportedTool,
    chat_encoder,
    client_error,
    json_body,
)
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.replies import Answer, Embeddings, Finish, Start, StreamEvent, Usage

FORMAT = WireFormat.OPENAI
DONE_EVENT = b"data: [DONE]\n\n"  # how an OpenAI stream ends

ERROR_TYPES = {  # neutral error kind -> OpenAI error type
    "invalid_request": "invalid_request_error", "not_found": "invalid_request_error",
    "authentication": "authentication_error", "permission": "permission_error", "billing": "billing_error",
    "rate_limit": "rate_limit_error", "server": "server_error", "overloaded": "server_error",
    "timeout": "timeout", "upstream": "upstream_error", "unavailable": "service_unavailable",
}


# The body's fields that `Chat` models; every other goes to `extra`.
MODELLED = frozenset({
    "model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "n", "user", "tools", "tool_choice", "parallel_tool_calls",
    "response_format",
})
CHOICES = {"auto": AUTO, "required": REQUIRED, "none": NONE}


# --- decoding ----------------------------------------------------------------------------------

def decode_chat(body: dict) -> Chat:
    """The client's chat-completions body (parsed, its `messages` a list of objects with a string
    `role`, as the HTTP layer checks) as a neutral `Chat`. Never raises: what cannot be read is
    carried as `Malformed`, for the encoder to refuse."""
    limit = body.get("max_completion_tokens")
    extra = {key: value for key, value in body.items() if key not in MODELLED}
    return Chat(
        body.get("model"),
        tuple(map(decode_message, body.get("messages") or ())),
        client_format=FORMAT,
        stream=bool(body.get("stream")),
        max_tokens=body.get("max_tokens") if limit is None else limit,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=decode_stop(body.get("stop")),
        seed=body.get("seed"),
        presence_penalty=body.get("presence_penalty"),
        frequency_penalty=body.get("frequency_penalty"),
        n=body.get("n"),
        user=body.get("user"),
        tools=tuple(map(decode_tool, body.get("tools") or ())),
        tool_choice=decode_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=body.get("parallel_tool_calls"),
        response_format=decode_response_format(body.get("response_format")),
        extra=MappingProxyType(extra) if extra else EMPTY,
    )


def decode_message(message: dict) -> Message:
    return Message(message.get("role"), decode_content(message.get("content")),
                   decode_tool_calls(message.get("tool_calls")), message.get("tool_call_id"), message.get("name"))


def decode_content(content: Any) -> str | tuple[Part, ...] | Malformed | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return tuple(map(decode_part, content))
    return Malformed(content)


def decode_part(part: Any) -> Part:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return Text(part.get("text") or "")
    if kind == "image_url":
        image = part.get("image_url")
        # `image_url` is an object with the url; some clients send the url alone
        return Image(image.get("url"), image.get("detail")) if isinstance(image, dict) else Image(image)
    if kind == "refusal":
        return Refusal(part.get("refusal") or "")
    return UnsupportedPart(kind)


def decode_tool_calls(calls: Any) -> tuple[ToolCall | Malformed, ...] | Malformed:
    if not calls:
        return ()
    if isinstance(calls, list):
        return tuple(map(decode_tool_call, calls))
    return Malformed(calls)


def decode_tool_call(call: Any) -> ToolCall | Malformed:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return Malformed(call)
    return ToolCall(call.get("id"), function.get("name"), function.get("arguments", ""))


def decode_stop(stop: Any) -> tuple[str, ...] | Malformed:
    if not stop:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return tuple(stop)
    return Malformed(stop)


def decode_tool(tool: dict) -> Tool | UnsupportedTool:
    kind = tool.get("type")
    function = tool.get("function") if kind == "function" else None
    if not isinstance(function, dict):
        return UnsupportedTool(kind)
    return Tool(function.get("name"), function.get("description"), function.get("parameters"),
                function.get("strict"))


def decode_tool_choice(choice: Any) -> ToolChoice | Malformed | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return CHOICES.get(choice) or Malformed(choice)
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and function.get("name"):
        return ToolChoice("tool", function["name"])
    return Malformed(choice)


def decode_response_format(response_format: Any) -> ResponseFormat | Malformed | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        return Malformed(response_format)
    kind = response_format.get("type")
    schema = response_format.get("json_schema") if kind == "json_schema" else None
    if not isinstance(schema, dict):
        return ResponseFormat(kind)
    return ResponseFormat(kind, schema.get("name"), schema.get("description"), schema.get("schema"),
                          schema.get("strict"))


def decode_embed(body: dict) -> Embed:
    """The client's embeddings body (its `input` checked by the HTTP layer) in neutral terms."""
    return Embed(body.get("model"), body.get("input"), body.get("dimensions"))


# --- encoding ----------------------------------------------------------------------------------

def refused(message: str, param: str) -> UpstreamError:
    """What OpenAI cannot be sent, because the neutral request holds no more of it than its kind."""
    return client_error(message, "invalid_value", param)


@chat_encoder("openai")
def encode_chat(chat: Chat, model: str) -> bytes:
    """A neutral chat request as an OpenAI chat-completions body for `model` (raises a 400
    UpstreamError for what the neutral request carries but OpenAI cannot be sent)."""
    out: dict = {"model": model, "messages": [encode_message(m, i) for i, m in enumerate(chat.messages)]}
    if chat.stream:
        out["stream"] = True
    for key, value in (("max_completion_tokens", chat.max_tokens), ("temperature", chat.temperature),
                       ("top_p", chat.top_p)):
        if value is not None:
            out[key] = value
    if isinstance(chat.stop, Malformed):
        raise refused("stop must be a string or an array of strings", "stop")
    if chat.stop:
        out["stop"] = chat.stop
    for key, value in (("seed", chat.seed), ("presence_penalty", chat.presence_penalty),
                       ("frequency_penalty", chat.frequency_penalty), ("n", chat.n), ("user", chat.user)):
        if value is not None:
            out[key] = value
    if chat.tools:
        out["tools"] = [encode_tool(tool, i) for i, tool in enumerate(chat.tools)]
    if chat.tool_choice is not None:
        out["tool_choice"] = encode_tool_choice(chat.tool_choice)
    if chat.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = chat.parallel_tool_calls
    if chat.response_format is not None:
        out["response_format"] = encode_response_format(chat.response_format)
    if chat.client_format == FORMAT:  # another format's fields would mean nothing here
        out.update(chat.extra)
    return json_body(out)


def encode_message(message: Message, index: int) -> dict:
    out: dict = {"role": message.role, "content": encode_content(message.content, index)}
    if message.name is not None:
        out["name"] = message.name
    if isinstance(message.tool_calls, Malformed):
        raise refused(f"messages[{index}]: tool_calls must be an array of function tool calls", "messages")
    if message.tool_calls:
        out["tool_calls"] = [encode_tool_call(call, index) for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def encode_content(content: str | tuple[Part, ...] | Malformed | None, index: int) -> str | list | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Malformed):
        raise refused(f"messages[{index}]: content must be a string or an array of content parts", "messages")
    return [encode_part(part, index) for part in content]


def encode_part(part: Part, index: int) -> dict:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        image = {"url": part.url} if part.detail is None else {"url": part.url, "detail": part.detail}
        return {"type": "image_url", "image_url": image}
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.text}
    raise refused(f"messages[{index}]: content part type {part.type!r} cannot be sent to provider type openai",
                  "messages")


def encode_tool_call(call: ToolCall | Malformed, index: int) -> dict:
    if isinstance(call, Malformed):
        raise refused(f"messages[{index}]: tool calls need a function object", "messages")
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def encode_tool(tool: Tool | UnsupportedTool, index: int) -> dict:
    if isinstance(tool, UnsupportedTool):
        raise refused(f"tools[{index}]: tools of type {tool.type!r} cannot be sent to provider type openai",
                      "tools")
    return {"type": "function", "function": function_of(tool)}


def function_of(tool: Tool) -> dict:
    """A function tool's definition in OpenAI's words (which Ollama shares): what is not known is left out."""
    function: dict = {}
    for key, value in (("name", tool.name), ("description", tool.description), ("parameters", tool.parameters),
                       ("strict", tool.strict)):
        if value is not None:
            function[key] = value
    return function


def encode_tool_choice(choice: ToolChoice | Malformed) -> str | dict:
    if isinstance(choice, Malformed):
        raise refused("tool_choice must be auto, required, none or a named function", "tool_choice")
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def encode_response_format(response_format: ResponseFormat | Malformed) -> dict:
    if isinstance(response_format, Malformed):
        raise refused("response_format must be an object", "response_format")
    if response_format.type != "json_schema":
        return {"type": response_format.type}
    schema: dict = {}
    for key, value in (("name", response_format.name), ("description", response_format.description),
                       ("schema", response_format.schema), ("strict", response_format.strict)):
        if value is not None:
            schema[key] = value
    return {"type": "json_schema", "json_schema": schema}


# --- errors -----------------------------------------------------------------------------------

def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error shape, `{"error": {"message", "type", "code", "param"}}`."""
    type_ = ERROR_TYPES.get(kind, "server_error")
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": param}})


def upstream_error_body(error: UpstreamError) -> bytes:
    """What a client is told of an upstream's refusal of its request: an OpenAI upstream's own
    error answer as it came, anyone else's in OpenAI's shape."""
    if error.body is not None and error.body_format is FORMAT:
        return error.body
    return error_body(error.message, error.kind, error.code, error.param)


# --- answers ----------------------------------------------------------------------------------

def usage(counted: Usage) -> dict:
    out = {"prompt_tokens": counted.prompt_tokens, "completion_tokens": counted.completion_tokens,
           "total_tokens": counted.prompt_tokens + counted.completion_tokens}
    if counted.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": counted.cached_tokens}
    return out


def tool_call(call) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def encode_answer(answer: Answer) -> bytes:
    message: dict = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = [tool_call(call) for call in answer.tool_calls]
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    return orjson.dumps({
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}],
        "usage": usage(answer.usage),
    })


def encode_embeddings(embeddings: Embeddings, encoding_format: str | None) -> bytes:
    vectors: list = embeddings.vectors
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends them
        vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    tokens = embeddings.usage.prompt_tokens
    return orjson.dumps({"object": "list", "model": embeddings.model,
                         "data": [{"object": "embedding", "index": i, "embedding": vector}
                                  for i, vector in enumerate(vectors)],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def encode_reply(answer: Answer | Embeddings, body: dict) -> bytes:
    """A neutral answer to the client's `body` (which says how embeddings are encoded)."""
    if isinstance(answer, Embeddings):
        return encode_embeddings(answer, body.get("encoding_format"))
    return encode_answer(answer)


# --- streams ----------------------------------------------------------------------------------

def wants_usage(body: dict) -> bool:
    """Whether the client asked for a last chunk with the usage (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def tool_call_delta(piece) -> dict:
    if piece.id is None:
        return {"index": piece.index, "function": {"arguments": piece.arguments}}
    return {"index": piece.index, "id": piece.id, "type": "function",
            "function": {"name": piece.name, "arguments": piece.arguments}}


class StreamEncoder:
    """Neutral stream events in, `chat.completion.chunk` SSE events out, for one client's stream."""

    __slots__ = ("include_usage", "id", "model", "created")

    def __init__(self, body: dict) -> None:
        self.include_usage = wants_usage(body)
        self.id = ""
        self.model = ""
        self.created = 0

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, Finish):
            return b"data: " + orjson.dumps(self.chunk({}, event.reason)) + b"\n\n"
        delta: dict = {}
        if isinstance(event, Start):
            self.id, self.model, self.created = event.id, event.model, event.created
            delta["role"] = "assistant"
            delta["content"] = event.text
        elif event.text:
            delta["content"] = event.text
        if event.reasoning:
            delta["reasoning_content"] = event.reasoning
        if event.tool_calls:
            delta["tool_calls"] = [tool_call_delta(piece) for piece in event.tool_calls]
        return b"data: " + orjson.dumps(self.chunk(delta)) + b"\n\n"

    def end(self, counted: Usage | None) -> bytes:
        """The stream's last events: the usage chunk if the client asked for it, then [DONE]."""
        if not self.include_usage:
            return DONE_EVENT
        last = {**self.chunk({}), "choices": [], "usage": usage(counted or Usage())}
        return b"data: " + orjson.dumps(last) + b"\n\n" + DONE_EVENT


def stream_error(error: UpstreamError) -> bytes:
    """The event that ends a stream the upstream failed after its first byte (no [DONE] follows:
    the client must not take it for a complete answer)."""
    body = error_body("the upstream stream failed: " + error.message, "upstream", error.failure.value)
    return b"data: " + body + b"\n\n"

