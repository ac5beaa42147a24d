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

An OpenAI-compatible upstream's answers and streams, read as neutral values (`decode_answer`,
`StreamDecoder`) for a client of another format: see "an OpenAI upstream's answers, read" below.
"""

from __future__ import annotations

import base64
import struct
import time
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
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    Answer,
    Delta,
    Embeddings,
    Finish,
    Start,
    StreamEvent,
    StreamTranslator,
    ToolCallDelta,
    Usage,
)

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
    elif chat.stream:  # the gateway books the usage, and another format's stream ends with it
        out["stream_options"] = {"include_usage": True}
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

def error_body(message: str, kind: str, code: str | None = None, param: str | None = None,
               request_id: str | None = None) -> bytes:
    """OpenAI's error shape, `{"error": {"message", "type", "code", "param"}}`, and the gateway's
    `request_id` beside it when given (clients read `error` and leave the rest)."""
    type_ = ERROR_TYPES.get(kind, "server_error")
    payload: dict = {"error": {"message": message, "type": type_, "code": code, "param": param}}
    if request_id is not None:
        payload["request_id"] = request_id
    return orjson.dumps(payload)


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

    def fail(self, error: UpstreamError) -> bytes:
        return stream_error(error)

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


# --- an OpenAI upstream's answers, read ------------------------------------------------------
#
# What an OpenAI-compatible upstream (OpenAI, Azure OpenAI, vLLM, Groq, DeepSeek, Mistral,
# OpenRouter, llama.cpp, ...) answers, read as neutral values for a client of another format.
# (An OpenAI client's answer is relayed as it came: adapters/openai.py.) Error answers, those
# with an error status, are read by HttpAdapter.error_from_answer; these readers see only the
# 200s, in-band errors included.
#
#   answer (`decode_answer`)       the first choice only (n > 1: the others are left out)
#     message.content              -> text: a string as it is, null as None; a list of parts
#                                     (Mistral) as its text parts joined, its thinking parts
#                                     as reasoning
#     message.refusal              -> appended to the text, and a `stop` becomes content_filter
#                                     (a refusal is the model declining: Anthropic's `refusal`)
#     message.tool_calls           -> ToolCall(id, function.name, function.arguments); arguments
#                                     sent as an object (some servers) as its JSON text
#     message.function_call        -> (legacy functions API) one ToolCall with an empty id
#     reasoning_content (vLLM, DeepSeek), else reasoning (vLLM, Groq, OpenRouter) -> reasoning
#                                     ("" read as None; a value other than text is left out)
#     usage                        -> prompt / completion tokens; cached: prompt_tokens_details.
#                                     cached_tokens, else DeepSeek's prompt_cache_hit_tokens
#   finish_reason                  stop, length, tool_calls, content_filter as they are;
#                                  function_call -> tool_calls; Mistral's model_length -> length;
#                                  null, missing or any other -> stop; the reasons that say the
#                                  upstream failed mid-answer (OpenRouter's and Mistral's `error`,
#                                  vLLM's `abort`, DeepSeek's `insufficient_system_resource`)
#                                  raise a `server` UpstreamError: the answer is incomplete.
#   in-band error                  {"error": {...}} (or a string), or an object whose `object` is
#                                  "error" (vLLM's ErrorResponse): an UpstreamError whose class its
#                                  type or code names (`in_band_error`); `protocol` otherwise.
#   malformed                      not an object, no choices, a choice or tool call of the wrong
#                                  shape: a `protocol` UpstreamError.
#
# Streams (`StreamDecoder`): `chat.completion.chunk` events, then `data: [DONE]`.
#   - Only the choice with index 0 is read (n > 1: the other choices' chunks are left out).
#   - The first chunk with that choice is the `Start` (its id, model, created, and whatever
#     piece its delta already holds); a chunk with no choices before it (Azure's
#     prompt_filter_results) gives nothing. Each later delta with text, reasoning, a refusal or
#     tool calls is a `Delta`; an empty one (a `role`-only delta) gives nothing.
#   - Tool-call pieces: by `index`; a call's first piece carries its id and name ("" where the
#     server sent none), later pieces never (servers that repeat them on every piece are read as
#     OpenAI writes it). A piece without an index continues the last call, or starts the next
#     one when it has a new id.
#   - finish_reason -> one `Finish`, read as for answers (a streamed refusal turns stop into
#     content_filter); a chunk with content for the answer after it is malformed (`protocol`).
#   - `usage` (stream_options.include_usage's last chunk, or any chunk that carries it) sets
#     `self.usage`; Groq's `x_groq.usage` on the finishing chunk too.
#   - `done` is set by `[DONE]`, and only by it: a stream that ends without it, even after a
#     finish_reason and the usage, reads as cut (the upstream may have failed between them;
#     `finished` tells an adapter that knows better). A `[DONE]` after a Start with no finish
#     reason adds a `Finish("stop")`: the upstream said the answer is complete. A `[DONE]` before
#     any chunk gives no event (the router reads a stream without a first event as `protocol`).
#   - An in-band error (a chunk with an `error` member, or an SSE `event: error`) raises as for
#     answers; a mid-stream error is then `server`, `overloaded` or `rate_limit` when its type or
#     code says so (OpenAI's `server_error`, vLLM's 500 code, ...), else `protocol`.

FINISH_REASONS = {
    "stop": STOP, "length": LENGTH, "tool_calls": TOOL_CALLS, "content_filter": CONTENT_FILTER,
    "function_call": TOOL_CALLS, "model_length": LENGTH,
}
# finish reasons that say the upstream gave up mid-answer: what came is not the whole answer
FAILED_FINISHES = frozenset({"error", "abort", "insufficient_system_resource"})

# an in-band error's type or code -> the failure it is (any other: protocol)
IN_BAND_FAILURES = {
    "server_error": FailureClass.SERVER, "api_error": FailureClass.SERVER, "internal_error": FailureClass.SERVER,
    "InternalServerError": FailureClass.SERVER, "timeout": FailureClass.SERVER,
    "overloaded": FailureClass.OVERLOADED, "overloaded_error": FailureClass.OVERLOADED,
    "service_unavailable": FailureClass.OVERLOADED, "ServiceUnavailableError": FailureClass.OVERLOADED,
    "rate_limit_exceeded": FailureClass.RATE_LIMIT, "rate_limit_error": FailureClass.RATE_LIMIT,
    "RateLimitError": FailureClass.RATE_LIMIT,
}


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, message)


def in_band_error(error: Any) -> UpstreamError:
    """An error an upstream sent inside a 200 answer or stream (`{"error": X}`'s X, or vLLM's
    bare ErrorResponse) as an UpstreamError: `server`, `overloaded` or `rate_limit` when its
    `type` or `code` names one (an integer code is read as an HTTP status: vLLM, OpenRouter),
    else `protocol` (the deployment misbehaved)."""
    if isinstance(error, dict):
        message, kinds = error.get("message"), (error.get("type"), error.get("code"))
    else:
        message, kinds = error, ()
    failure = FailureClass.PROTOCOL
    for kind in kinds:
        if isinstance(kind, str) and kind in IN_BAND_FAILURES:
            failure = IN_BAND_FAILURES[kind]
            break
        if isinstance(kind, int) and not isinstance(kind, bool) and (kind == 429 or kind >= 500):
            failure = (FailureClass.RATE_LIMIT if kind == 429 else
                       FailureClass.OVERLOADED if kind in (503, 529) else FailureClass.SERVER)
            break
    text = message if isinstance(message, str) and message else "in-band error from upstream"
    return UpstreamError(failure, text)


def finish_of(reason: Any, refused: bool) -> str:
    """The neutral finish reason for an OpenAI `finish_reason` (raises for one that says the
    upstream failed)."""
    neutral = FINISH_REASONS.get(reason) if reason is not None else STOP
    if neutral is None:
        if reason in FAILED_FINISHES:
            raise UpstreamError(FailureClass.SERVER, f"the upstream ended the answer early (finish_reason {reason})")
        neutral = STOP
    return CONTENT_FILTER if refused and neutral == STOP else neutral


def read_usage(counted: dict) -> Usage:
    """An OpenAI `usage` object as neutral usage."""
    details = counted.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:
        cached = counted.get("prompt_cache_hit_tokens")  # DeepSeek
    return Usage(int(counted.get("prompt_tokens") or 0), int(counted.get("completion_tokens") or 0),
                 int(cached or 0))


def read_parts(parts: list) -> tuple[str, str]:
    """Content sent as a list of parts (Mistral's reasoning models) as (text, reasoning)."""
    text, reasoning = [], []
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            text.append(part.get("text") or "")
        elif kind == "thinking":  # {"type": "thinking", "thinking": [{"type": "text", "text": ...}]}
            thinking = part.get("thinking")
            if isinstance(thinking, str):
                reasoning.append(thinking)
            elif isinstance(thinking, list):
                reasoning.extend(item.get("text") or "" for item in thinking if item.get("type") == "text")
    return "".join(text), "".join(reasoning)


def read_arguments(arguments: Any) -> str:
    if arguments is None or isinstance(arguments, str):
        return arguments or ""
    return orjson.dumps(arguments).decode()  # an object (or array) some servers send as it is


def read_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("a text field is not a string")


def read_tool_call(call: dict) -> ToolCall:
    function = call["function"]
    if not isinstance(function, dict):
        raise TypeError("a tool call without a function object")
    return ToolCall(read_text(call.get("id")) or "", read_text(function.get("name")) or "",
                    read_arguments(function.get("arguments")))


def decode_answer(payload: dict, created: int | None = None) -> Answer:
    """An OpenAI `chat.completion` (parsed) as a neutral answer: its first choice, read as the
    section's comment says. `created` stands in where the answer has none (some servers).
    Raises UpstreamError: in-band errors by their type, malformed answers as `protocol`."""
    if not isinstance(payload, dict):
        raise _protocol("upstream answer is not a JSON object")
    error = payload.get("error")
    if error or payload.get("object") == "error":
        raise in_band_error(error or payload)
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _protocol("upstream answer has no choices")
    try:
        choice = choices[0]
        message = choice["message"]
        content = message.get("content")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(content, list):
            content, from_parts = read_parts(content)
            reasoning = reasoning or from_parts
        text = read_text(content)
        refusal = read_text(message.get("refusal"))
        if refusal:
            text = (text or "") + refusal
        calls = message.get("tool_calls")
        tool_calls = tuple(map(read_tool_call, calls)) if calls else ()
        legacy = message.get("function_call")
        if not tool_calls and legacy:  # the deprecated functions API: one call, no id
            tool_calls = (read_tool_call({"function": legacy}),)
        counted = payload.get("usage")
        stamp = payload.get("created")
        return Answer(
            read_text(payload.get("id")) or "", read_text(payload.get("model")) or "",
            stamp if type(stamp) is int else (int(time.time()) if created is None else created),
            text, finish_of(choice.get("finish_reason"), bool(refusal)),
            read_usage(counted) if isinstance(counted, dict) else Usage(), tool_calls,
            reasoning if isinstance(reasoning, str) and reasoning else None,
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        raise _protocol("malformed chat.completion from upstream") from None


class StreamDecoder(StreamTranslator):
    """OpenAI `chat.completion.chunk` events in (`feed(event, data)`, `data` without its
    `data: ` prefix), neutral stream events out, read as the section's comment says. Pure: no I/O.

    `usage` is the last usage seen; `done` is set by `[DONE]` alone; `finished` once the
    Finish is out."""

    def __init__(self, created: int | None = None) -> None:
        self.created = int(time.time()) if created is None else created  # for chunks without one
        self.usage: Usage | None = None
        self.done = False
        self.finished = False
        self.started = False
        self._refused = False
        self._calls: set[int] | None = None  # the tool-call indexes seen, once there is one
        self._last_call: tuple[int, str | None] | None = None  # (index, id) of the last call started

    def feed(self, event: bytes, data: bytes) -> list[StreamEvent]:
        if self.done:
            return []
        if data == b"[DONE]":
            return self._end()
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            if data.strip() == b"[DONE]":
                return self._end()
            raise _protocol("malformed stream event from upstream") from None
        if type(payload) is not dict:
            raise _protocol("malformed stream event from upstream")
        error = payload.get("error")
        if error or event == b"error":
            raise in_band_error(error or payload)
        try:
            return self._chunk(payload)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise _protocol("malformed chat.completion.chunk from upstream") from None

    def _end(self) -> list[StreamEvent]:
        self.done = True
        if self.started and not self.finished:
            self.finished = True
            return [Finish(STOP)]
        return []

    def _chunk(self, chunk: dict) -> list[StreamEvent]:
        counted = chunk.get("usage")
        if counted:
            self.usage = read_usage(counted)
        choices = chunk.get("choices")
        if not choices:
            if chunk.get("object") == "error":  # vLLM's bare ErrorResponse
                raise in_band_error(chunk)
            return []
        choice = choices[0]
        if choice.get("index"):  # another choice's (n > 1): look for the first's
            for choice in choices:
                if not choice.get("index"):
                    break
            else:
                return []
        delta = choice.get("delta") or EMPTY
        content = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        if content is None:
            text = ""
        elif type(content) is str:
            text = content
        else:
            text, more = read_parts(content)
            reasoning = reasoning or more
        if type(reasoning) is not str:  # auxiliary: a shape other than text is left out
            reasoning = ""
        refusal = delta.get("refusal")
        if refusal:
            text += refusal
            self._refused = True
        calls = delta.get("tool_calls")
        pieces = self._pieces(calls) if calls else ()
        reason = choice.get("finish_reason")
        if self.finished:
            if text or reasoning or pieces:
                raise _protocol("upstream stream went on after its finish_reason")
            return []
        if not self.started:
            self.started = True
            stamp = chunk.get("created")
            out: list[StreamEvent] = [Start(text, reasoning, pieces, id=read_text(chunk.get("id")) or "",
                                            model=read_text(chunk.get("model")) or "",
                                            created=stamp if type(stamp) is int else self.created)]
        elif text or reasoning or pieces:
            out = [Delta(text, reasoning, pieces)]
        else:
            out = []
        if reason:
            if counted is None:  # Groq counts in the finishing chunk's x_groq
                extra = chunk.get("x_groq")
                if isinstance(extra, dict) and isinstance(extra.get("usage"), dict):
                    self.usage = read_usage(extra["usage"])
            out.append(Finish(finish_of(reason, self._refused)))
            self.finished = True
        return out

    def _pieces(self, calls: list) -> tuple[ToolCallDelta, ...]:
        seen = self._calls
        if seen is None:
            seen = self._calls = set()
        out = []
        for call in calls:
            function = call.get("function") or EMPTY
            index, id_ = call.get("index"), call.get("id")
            if index is None:  # a server that leaves it out: one call after the other
                last = self._last_call
                index = last[0] if last is not None and (id_ is None or id_ == last[1]) else len(seen)
            elif type(index) is not int:
                raise TypeError("a tool call's index is not an integer")
            arguments = read_arguments(function.get("arguments"))
            if index in seen:
                out.append(ToolCallDelta(index, arguments))
            else:
                seen.add(index)
                self._last_call = (index, id_)
                out.append(ToolCallDelta(index, arguments, read_text(id_) or "",
                                         read_text(function.get("name")) or ""))
        return tuple(out)
