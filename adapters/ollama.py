"""Ollama's native API (POST {base_url}/api/chat and /api/embed): neutral chat requests
written in its words, its answers, NDJSON streams and embeddings read as neutral values.

Requests (`encode_chat`):
  messages                     -> role (developer -> system, legacy function -> tool), content
                                  (text parts joined by newlines), `images` (data: URLs' base64)
  an assistant's tool calls    -> tool_calls with `arguments` parsed into an object
  tool results                 -> `tool_name`: the function of the call they answer (found by
                                  its id), else the message's name
  tools                        -> OpenAI's function tool shape, which Ollama shares: rebuilt
                                  {"type": "function", "function": {name, description,
                                  parameters, strict}} with what the tool says
  temperature, top_p, seed, presence/frequency_penalty, max_tokens (-> num_predict), stop
                               -> `options`, over the client's own `options` (extra: num_ctx ...)
  response_format              -> `format`: json_object -> "json", json_schema -> the schema
  extra keep_alive, think      -> as they are
  stream                       -> always written: Ollama streams by default
Left out: n, tool_choice, parallel_tool_calls, user, tools other than functions. Refused
with a 400: image URLs other than data: URLs, refusal and other unsupported parts, tool-call
arguments that are not a JSON object, malformed content, tool calls and stop.

Answers: content, `thinking` (as reasoning), tool calls (ids generated, arguments
serialised), done_reason -> finish reason, token counts -> usage. Streams are NDJSON, one
object a line, the last `done: true`; errors are `{"error": "..."}` bodies, or such a line
mid-stream. Embeddings: text inputs only (token arrays are refused with a 400), `dimensions`.
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
    upstream_json,
)
from gatewayd.daemon.core.conversation import (
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
    chat_encoder,
    json_body,
)
from gatewayd.daemon.core.conversation import client_error as neutral_client_error
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
from gatewayd.daemon.formats.openai import function_of

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

ERROR_KINDS = {  # the kind of error a client is told of, by failure class (else a server error)
    FailureClass.CLIENT: "invalid_request", FailureClass.NOT_FOUND: "not_found",
    FailureClass.AUTH: "authentication", FailureClass.RATE_LIMIT: "rate_limit",
}


def client_error(message: str, param: str | None = None) -> UpstreamError:
    return neutral_client_error(message, "unsupported_value", param)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# -- requests ----------------------------------------------------------------

@chat_encoder("ollama")
def encode_chat(chat: Chat, model: str) -> bytes:
    """A neutral chat request as the body of POST /api/chat."""
    out: dict = {"model": model, "messages": encode_messages(chat.messages), "stream": chat.stream}
    if chat.tools:
        out["tools"] = [{"type": "function", "function": function_of(tool)}
                        for tool in chat.tools if isinstance(tool, Tool)]
    if options := options_of(chat):
        out["options"] = options
    if (fmt := format_of(chat.response_format)) is not None:
        out["format"] = fmt
    for key in ("keep_alive", "think"):
        if chat.extra.get(key) is not None:
            out[key] = chat.extra[key]
    return json_body(out)


# --- messages ----------------------------------------------------------------------------------

def encode_messages(messages: tuple[Message, ...]) -> list[dict]:
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    out = []
    for message in messages:
        role = message.role
        text, images = encode_content(message.content)
        item: dict = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            item["images"] = images
        if role == "assistant" and message.tool_calls:
            item["tool_calls"] = encode_tool_calls(message.tool_calls)
            for call in message.tool_calls:
                names[id_key(call.id)] = call.name
        elif role in ("tool", "function"):
            item["role"] = "tool"
            if name := names.get(id_key(message.tool_call_id)) or message.name:
                item["tool_name"] = name
        out.append(item)
    return out


def id_key(call_id: str | None) -> str:
    """A call's id as the tool results look it up: a call and a result that both lack one match."""
    return "" if call_id is None else call_id


def encode_content(content: str | tuple[Part, ...] | Malformed | None) -> tuple[str, list[str]]:
    """The text (text parts joined by newlines) and the images (base64) of a message."""
    if content is None or isinstance(content, str):
        return content or "", []
    if isinstance(content, Malformed):
        raise client_error("message content must be a string or an array of content parts", "messages")
    texts, images = [], []
    for part in content:
        if isinstance(part, Text):
            texts.append(part.text)
        elif isinstance(part, Image):
            images.append(image_data(part.url))
        else:
            kind = "refusal" if isinstance(part, Refusal) else part.type
            raise client_error(f"Ollama does not accept {kind!r} content parts", "messages")
    return "\n".join(texts), images


def image_data(url: str) -> str:
    """A data: URL's payload as base64; Ollama cannot fetch remote images."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise client_error("Ollama accepts images only as data: URLs", "messages")
    header, _, data = url[5:].partition(",")
    if header.endswith(";base64"):
        return data
    return base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()


def encode_tool_calls(calls: tuple[ToolCall | Malformed, ...] | Malformed) -> list[dict]:
    if isinstance(calls, Malformed):
        raise client_error("tool_calls must be an array", "messages")
    return [encode_tool_call(call) for call in calls]


def encode_tool_call(call: ToolCall | Malformed) -> dict:
    if isinstance(call, Malformed):
        raise client_error("tool calls need a function object", "messages")
    arguments = call.arguments or "{}"
    if isinstance(arguments, str):  # else the client sent the object itself: carried as it came
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            arguments = None
    if not isinstance(arguments, dict):
        raise client_error("tool call arguments must be a JSON object", "messages")
    return {"function": {"name": "" if call.name is None else call.name, "arguments": arguments}}


# --- options -----------------------------------------------------------------------------------

def options_of(chat: Chat) -> dict:
    """Ollama's `options`: the client's own (extra `options`, e.g. num_ctx), then the sampling
    fields over them."""
    client_options = chat.extra.get("options")
    options = dict(client_options) if isinstance(client_options, dict) else {}
    for key, value in (("temperature", chat.temperature), ("top_p", chat.top_p), ("seed", chat.seed),
                       ("presence_penalty", chat.presence_penalty), ("frequency_penalty", chat.frequency_penalty)):
        if value is not None:
            options[key] = value
    if chat.max_tokens is not None:
        options["num_predict"] = chat.max_tokens
    if isinstance(chat.stop, Malformed):
        raise client_error("stop must be a string or an array of strings", "stop")
    if chat.stop:
        options["stop"] = chat.stop
    return options


def format_of(response_format: ResponseFormat | Malformed | None) -> str | dict | None:
    if not isinstance(response_format, ResponseFormat):
        return None
    if response_format.type == "json_object":
        return "json"
    if response_format.type == "json_schema":
        return response_format.schema or "json"
    return None


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

def encode_embed(embed: Embed, model: str) -> bytes:
    """An embeddings request as the body of POST /api/embed."""
    text = embed.input
    if not (isinstance(text, str) or (isinstance(text, list) and text
                                      and all(isinstance(item, str) for item in text))):
        raise client_error("Ollama embeds text only: input must be a string or a list of strings",
                           "input")
    out: dict = {"model": model, "input": text, "truncate": True}
    if embed.dimensions is not None:
        out["dimensions"] = embed.dimensions
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
        embed = request.embed()
        payload = await self._post(deployment, "/api/embed", encode_embed(embed, deployment.model))
        answer = embed_from_upstream(payload, embed.model or deployment.model)
        return Reply(None, answer.usage, answer=answer)


OLLAMA = ProviderType("ollama", OllamaAdapter, base_url="http://127.0.0.1:11434")
