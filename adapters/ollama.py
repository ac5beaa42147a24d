"""Ollama's native API (POST {base_url}/api/chat and /api/embed), translated to
and from OpenAI chat completions and embeddings.

Requests: messages (string or text/image parts; data: URL images become
base64 `images`), assistant `tool_calls` (arguments parsed to objects), tool
results (`tool_name` recovered from the earlier call id), `tools`, the
sampling options (temperature, top_p, seed, stop, max_tokens /
max_completion_tokens -> num_predict, presence/frequency_penalty), a client
`options` object (e.g. num_ctx) merged underneath them, `response_format`
(json_object -> "json", json_schema -> the schema), `keep_alive` and `think`,
and `stream`, always explicit since Ollama streams by default.
Answers: content, `thinking` (as `reasoning_content`), tool calls (ids
generated, arguments serialised), done_reason -> finish_reason, token counts
-> usage. Streams are NDJSON, one object a line, the last `done: true`;
errors are `{"error": "..."}` bodies, or such a line mid-stream.

Dropped: n, logprobs, logit_bias, tool_choice, parallel_tool_calls, user,
service_tier, and Ollama's timings. Refused with a 400: image URLs that are
not data: URLs, audio/file parts, token-array embedding inputs.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
import urllib.parse
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from gatewayd.adapters.base import (
    ChunkTranslator,
    HttpAdapter,
    ProviderType,
    TranslatedStream,
    expect_stream,
    openai_error_body,
    openai_usage,
    read_lines,
    translates_client_input,
    upstream_json,
    usage_chunk,
    wants_usage,
)
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.replies import Reply, Usage

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Deployment

OPTION_KEYS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
ERROR_TYPES = {
    FailureClass.CLIENT: "invalid_request_error", FailureClass.NOT_FOUND: "invalid_request_error",
    FailureClass.AUTH: "authentication_error", FailureClass.RATE_LIMIT: "rate_limit_error",
}


def client_error(message: str, param: str | None = None) -> UpstreamError:
    body = openai_error_body(message, "invalid_request_error", "unsupported_value", param)
    return UpstreamError(FailureClass.CLIENT, message, status=400, body=body)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# -- requests ----------------------------------------------------------------

def image_from_url(url: str) -> str:
    """A data: URL's payload as base64; Ollama cannot fetch remote images."""
    if not url.startswith("data:"):
        raise client_error("Ollama accepts images only as data: URLs", "messages")
    header, _, data = url[5:].partition(",")
    if header.endswith(";base64"):
        return data
    return base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()


def content_to_ollama(content) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise client_error("message content must be a string or an array of content parts", "messages")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image)
            images.append(image_from_url(url))
        else:
            raise client_error(f"Ollama does not accept {kind!r} content parts", "messages")
    return "\n".join(texts), images


def call_to_ollama(call: dict) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise client_error("tool calls need a function object", "messages")
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            arguments = None
    if not isinstance(arguments, dict):
        raise client_error("tool call arguments must be a JSON object", "messages")
    return {"function": {"name": function.get("name", ""), "arguments": arguments}}


def messages_to_ollama(messages: list[dict]) -> list[dict]:
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    out = []
    for message in messages:
        role = message.get("role")
        text, images = content_to_ollama(message.get("content"))
        item: dict = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            if not isinstance(message["tool_calls"], list):
                raise client_error("tool_calls must be an array", "messages")
            item["tool_calls"] = [call_to_ollama(call) for call in message["tool_calls"]]
            for call in message["tool_calls"]:
                names[call.get("id", "")] = (call.get("function") or {}).get("name", "")
        elif role in ("tool", "function"):
            item["role"] = "tool"
            name = names.get(message.get("tool_call_id", "")) or message.get("name")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def options_from(body: dict) -> dict:
    options = dict(body["options"]) if isinstance(body.get("options"), dict) else {}
    options.update({key: body[key] for key in OPTION_KEYS if body.get(key) is not None})
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop:
        if not (isinstance(stop, str) or isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise client_error("stop must be a string or an array of strings", "stop")
        options["stop"] = [stop] if isinstance(stop, str) else stop
    return options


def format_from(response_format) -> str | dict | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema")
        return (schema.get("schema") if isinstance(schema, dict) else None) or "json"
    return None


@translates_client_input("ollama")
def to_upstream(body: dict, model: str) -> bytes:
    """An OpenAI chat request as the body of POST /api/chat."""
    out: dict = {"model": model, "messages": messages_to_ollama(body.get("messages") or []),
                 "stream": bool(body.get("stream", False))}
    if body.get("tools"):
        out["tools"] = [tool for tool in body["tools"] if tool.get("type") == "function"]
    if options := options_from(body):
        out["options"] = options
    if (fmt := format_from(body.get("response_format"))) is not None:
        out["format"] = fmt
    for key in ("keep_alive", "think"):
        if body.get(key) is not None:
            out[key] = body[key]
    return orjson.dumps(out)


# -- answers -----------------------------------------------------------------

def created_from(value) -> int:
    """Unix seconds from Ollama's RFC 3339 `created_at` (nanoseconds allowed)."""
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except (TypeError, ValueError):
        return int(time.time())


def calls_from_ollama(calls, first_index: int = 0) -> list[dict]:
    out = []
    for i, call in enumerate(calls or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or {}
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        out.append({"index": first_index + i, "id": call.get("id") or new_id("call_"),
                    "type": "function",
                    "function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def finish_reason(done_reason: str | None, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage_from(payload: dict) -> dict:
    return openai_usage(int(payload.get("prompt_eval_count") or 0), int(payload.get("eval_count") or 0))


def check_payload(payload, *, retryable: bool = False) -> dict:
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a JSON object")
    if "error" in payload:
        # An error line before any output: nothing was relayed, so it counts as a 5xx.
        failure = FailureClass.SERVER if retryable else FailureClass.PROTOCOL
        raise UpstreamError(failure, f"upstream error: {payload['error']}")
    return payload


def from_upstream(payload: dict, requested_model: str) -> dict:
    """A non-streamed /api/chat answer as an OpenAI chat.completion."""
    message = check_payload(payload).get("message") or {}
    calls = calls_from_ollama(message.get("tool_calls"))
    for call in calls:
        del call["index"]
    out: dict = {"role": "assistant", "content": message.get("content") or (None if calls else "")}
    if calls:
        out["tool_calls"] = calls
    if message.get("thinking"):
        out["reasoning_content"] = message["thinking"]
    return {
        "id": new_id("chatcmpl-"), "object": "chat.completion",
        "created": created_from(payload.get("created_at")), "model": requested_model,
        "choices": [{"index": 0, "message": out, "logprobs": None,
                     "finish_reason": finish_reason(payload.get("done_reason"), bool(calls))}],
        "usage": usage_from(payload),
    }


class StreamTranslator(ChunkTranslator):
    """Ollama NDJSON lines in, OpenAI `chat.completion.chunk` dicts out."""

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.id, self.model, self.include_usage = new_id("chatcmpl-"), model, include_usage
        self.created: int | None = None
        self.started = self.done = False
        self.tool_calls = 0
        self.usage: Usage | None = None

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def feed(self, line: bytes) -> list[dict]:
        line = line.strip()
        if not line or self.done:
            return []
        payload = upstream_json(line, "malformed stream line")
        message = check_payload(payload, retryable=not self.started).get("message") or {}
        if self.created is None:
            self.created = created_from(payload.get("created_at"))
        delta: dict = {"role": "assistant", "content": ""} if not self.started else {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            delta["tool_calls"] = calls_from_ollama(message["tool_calls"], self.tool_calls)
            self.tool_calls += len(delta["tool_calls"])
        chunks = [self.chunk(delta)] if delta else []
        self.started = True
        if payload.get("done"):
            self.done = True
            usage = usage_from(payload)
            self.usage = Usage(usage["prompt_tokens"], usage["completion_tokens"])
            reason = finish_reason(payload.get("done_reason"), self.tool_calls > 0)
            chunks.append(self.chunk({}, reason))
            if self.include_usage:
                chunks.append(usage_chunk(self.chunk({}), usage))
        return chunks

    def chunks(self, _event: bytes, line: bytes) -> list[dict]:  # an NDJSON line has no event type
        return self.feed(line)


# -- embeddings --------------------------------------------------------------

def embed_to_upstream(body: dict, model: str) -> bytes:
    """An OpenAI embeddings request as the body of POST /api/embed."""
    text = body.get("input")
    if not (isinstance(text, str) or (isinstance(text, list) and text
                                      and all(isinstance(item, str) for item in text))):
        raise client_error("Ollama embeds text only: input must be a string or a list of strings",
                           "input")
    out: dict = {"model": model, "input": text, "truncate": True}
    if body.get("dimensions") is not None:
        out["dimensions"] = body["dimensions"]
    return orjson.dumps(out)


def embed_from_upstream(payload: dict, requested_model: str,
                        encoding_format: str | None = None) -> dict:
    vectors = check_payload(payload).get("embeddings")
    if not isinstance(vectors, list):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer has no embeddings")
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends them
        vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    tokens = int(payload.get("prompt_eval_count") or 0)
    return {"object": "list", "model": requested_model,
            "data": [{"object": "embedding", "index": i, "embedding": vector}
                     for i, vector in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- I/O ---------------------------------------------------------------------

class OllamaAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream", "embeddings"})

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}  # an Ollama behind a proxy

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        failure = classify_status(status)
        message = f"upstream answered HTTP {status}"
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            message = error
        not_found = failure is FailureClass.NOT_FOUND and "model" in message
        body = openai_error_body(message, ERROR_TYPES.get(failure, "server_error"),
                                 "model_not_found" if not_found else None)
        return UpstreamError(failure, message, status=status, retry_after=retry_after, body=body)

    async def _post(self, deployment: Deployment, path: str, payload: bytes) -> dict:
        raw = await self.fetch(deployment, self.join(self.provider.base_url, path), payload)
        return upstream_json(raw, "upstream answer is not JSON")

    async def chat(self, deployment: Deployment, body: dict) -> Reply:
        request = to_upstream({**body, "stream": False}, deployment.model)
        payload = await self._post(deployment, "/api/chat", request)
        answer = from_upstream(payload, body.get("model") or deployment.model)
        tokens = answer["usage"]
        usage = Usage(tokens["prompt_tokens"], tokens["completion_tokens"])
        return Reply(orjson.dumps(answer), usage)

    async def stream(self, deployment: Deployment, body: dict) -> TranslatedStream:
        response = await self.send(deployment, self.join(self.provider.base_url, "/api/chat"),
                                   to_upstream({**body, "stream": True}, deployment.model))
        expect_stream(response, "application/x-ndjson", "NDJSON")
        translator = StreamTranslator(body.get("model") or deployment.model, wants_usage(body))
        return TranslatedStream(response, self.scrub, self._max_answer, translator, read_lines)

    async def embeddings(self, deployment: Deployment, body: dict) -> Reply:
        request = embed_to_upstream(body, deployment.model)
        payload = await self._post(deployment, "/api/embed", request)
        answer = embed_from_upstream(
            payload, body.get("model") or deployment.model, body.get("encoding_format"))
        return Reply(orjson.dumps(answer), Usage(answer["usage"]["prompt_tokens"], 0))


OLLAMA = ProviderType("ollama", OllamaAdapter, base_url="http://127.0.0.1:11434")
