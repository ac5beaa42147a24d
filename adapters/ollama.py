"""Ollama's native API (POST {base_url}/api/chat and /api/embed), translated to
and from neutral chat requests, answers and embeddings.

Requests: messages (string or text/image parts; data: URL images become
base64 `images`), assistant `tool_calls` (arguments parsed to objects), tool
results (`tool_name` recovered from the earlier call id), `tools`, the
sampling options (temperature, top_p, seed, stop, max_tokens /
max_completion_tokens -> num_predict, presence/frequency_penalty), a client
`options` object (e.g. num_ctx) merged underneath them, `response_format`
(json_object -> "json", json_schema -> the schema), `keep_alive` and `think`,
and `stream`, always explicit since Ollama streams by default.
Answers: content, `thinking` (as reasoning), tool calls (ids generated,
arguments serialised), done_reason -> finish reason, token counts -> usage.
Streams are NDJSON, one object a line, the last `done: true`; errors are
`{"error": "..."}` bodies, or such a line mid-stream.

Dropped: n, logprobs, logit_bias, tool_choice, parallel_tool_calls, user,
service_tier, and Ollama's timings. Refused with a 400: image URLs that are
not data: URLs, audio/file parts, token-array embedding inputs.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from gatewayd.adapters.base import (
    HttpAdapter,
    ProviderType,
    StreamTranslator,
    TranslatedStream,
    expect_stream,
    read_lines,
    translates_client_input,
    upstream_json,
)
from gatewayd.adapters.base import client_error as base_client_error
from gatewayd.adapters.ollama_request import encode_chat
from gatewayd.daemon.core.conversation import ToolCall
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.replies import (
    Answer,
    Delta,
    Embeddings,
    Finish,
    Reply,
    Start,
    StreamEvent,
    ToolCallDelta,
    Usage,
)

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

OPTION_KEYS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
ERROR_KINDS = {  # the kind of error a client is told of, by failure class (else a server error)
    FailureClass.CLIENT: "invalid_request", FailureClass.NOT_FOUND: "not_found",
    FailureClass.AUTH: "authentication", FailureClass.RATE_LIMIT: "rate_limit",
}


def client_error(message: str, param: str | None = None) -> UpstreamError:
    return base_client_error(message, "unsupported_value", param)


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


def calls_from_ollama(calls, first_index: int = 0) -> list[ToolCallDelta]:
    """Ollama's tool calls (whole, never in pieces), numbered from `first_index` on."""
    out = []
    for i, call in enumerate(calls or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or {}
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        out.append(ToolCallDelta(first_index + i, arguments, call.get("id") or new_id("call_"),
                                 function.get("name", "")))
    return out


def finish_reason(done_reason: str | None, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage_from(payload: dict) -> Usage:
    return Usage(int(payload.get("prompt_eval_count") or 0), int(payload.get("eval_count") or 0))


def check_payload(payload, *, retryable: bool = False) -> dict:
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a JSON object")
    if "error" in payload:
        # An error line before any output: nothing was relayed, so it counts as a 5xx.
        failure = FailureClass.SERVER if retryable else FailureClass.PROTOCOL
        raise UpstreamError(failure, f"upstream error: {payload['error']}")
    return payload


def from_upstream(payload: dict, requested_model: str) -> Answer:
    """A non-streamed /api/chat answer as a neutral answer."""
    message = check_payload(payload).get("message") or {}
    calls = tuple(ToolCall(call.id, call.name, call.arguments) for call in calls_from_ollama(message.get("tool_calls")))
    return Answer(new_id("chatcmpl-"), requested_model, created_from(payload.get("created_at")),
                  message.get("content") or (None if calls else ""),
                  finish_reason(payload.get("done_reason"), bool(calls)), usage_from(payload), calls,
                  message.get("thinking") or None)


class OllamaStreamTranslator(StreamTranslator):
    """Ollama NDJSON lines in, neutral stream events out."""

    def __init__(self, model: str) -> None:
        self.id, self.model = new_id("chatcmpl-"), model
        self.started = self.done = False
        self.tool_calls = 0
        self.usage: Usage | None = None

    def feed(self, _event: bytes, line: bytes) -> list[StreamEvent]:  # an NDJSON line has no event type
        line = line.strip()
        if not line or self.done:
            return []
        payload = upstream_json(line, "malformed stream line")
        message = check_payload(payload, retryable=not self.started).get("message") or {}
        text, reasoning = message.get("content") or "", message.get("thinking") or ""
        calls: tuple[ToolCallDelta, ...] = ()
        if message.get("tool_calls"):
            calls = tuple(calls_from_ollama(message["tool_calls"], self.tool_calls))
            self.tool_calls += len(calls)
        events: list[StreamEvent] = []
        if not self.started:
            events.append(Start(text, reasoning, calls, id=self.id, model=self.model,
                                created=created_from(payload.get("created_at"))))
            self.started = True
        elif text or reasoning or calls:
            events.append(Delta(text, reasoning, calls))
        if payload.get("done"):
            self.done = True
            self.usage = usage_from(payload)
            events.append(Finish(finish_reason(payload.get("done_reason"), self.tool_calls > 0)))
        return events


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


def embed_from_upstream(payload: dict, requested_model: str) -> Embeddings:
    vectors = check_payload(payload).get("embeddings")
    if not isinstance(vectors, list):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer has no embeddings")
    return Embeddings(requested_model, vectors, Usage(int(payload.get("prompt_eval_count") or 0)))


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
        return UpstreamError(failure, message, status=status, retry_after=retry_after,
                             kind=ERROR_KINDS.get(failure, "server"), code="model_not_found" if not_found else None)

    async def _post(self, deployment: Deployment, path: str, payload: bytes) -> dict:
        raw = await self.fetch(deployment, self.join(self.provider.base_url, path), payload)
        return upstream_json(raw, "upstream answer is not JSON")

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        chat = request.chat()
        payload = await self._post(deployment, "/api/chat", encode_chat(chat, deployment.model))
        answer = from_upstream(payload, chat.model or deployment.model)
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream:
        chat = request.chat()
        response = await self.send(deployment, self.join(self.provider.base_url, "/api/chat"),
                                   encode_chat(chat, deployment.model))
        expect_stream(response, "application/x-ndjson", "NDJSON")
        translator = OllamaStreamTranslator(chat.model or deployment.model)
        return TranslatedStream(response, self.scrub, self._max_answer, translator, read_lines)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        body = request.body
        payload = await self._post(deployment, "/api/embed", embed_to_upstream(body, deployment.model))
        answer = embed_from_upstream(payload, body.get("model") or deployment.model)
        return Reply(None, answer.usage, answer=answer)


OLLAMA = ProviderType("ollama", OllamaAdapter, base_url="http://127.0.0.1:11434")
