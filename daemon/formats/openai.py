"""OpenAI's chat completions and embeddings, the wire format of `/v1/chat/completions` and
`/v1/embeddings`: how neutral answers, stream events and errors are written in it.

    answer       {"id", "object": "chat.completion", "created", "model",
                  "choices": [{"index": 0, "message", "logprobs": null, "finish_reason"}], "usage"}
    stream       data: {"object": "chat.completion.chunk", ... "choices": [{"index": 0, "delta", ...}]}
                 ... then, if `stream_options.include_usage`, a chunk with no choices and the usage,
                 then data: [DONE]
    embeddings   {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}
                 (`encoding_format: base64`: each vector as little-endian float32, base64)
    error        {"error": {"message", "type", "code", "param"}}
"""

from __future__ import annotations

import base64
import struct

import orjson

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

