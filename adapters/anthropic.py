"""Anthropic Messages API: neutral chat requests and answers translated both ways.

Wire format: POST {base_url}/v1/messages with `x-api-key: KEY` and
`anthropic-version` (default 2023-06-01, or the provider option
`anthropic_version`). Streams are SSE `event: X` / `data: {...}` pairs
(message_start, content_block_start/_delta/_stop, message_delta, message_stop,
ping, error); errors are `{"type": "error", "error": {"type", "message"}}`.

Request (`to_upstream`):
  system / developer messages  -> top-level `system` (text parts joined, several joined by a blank line)
  user / assistant messages    -> `messages`, consecutive same-role messages merged (Anthropic alternates)
  text / image_url parts       -> text / image blocks (data: URL -> base64 source, http(s) -> url source)
  assistant `tool_calls`       -> `tool_use` blocks (arguments JSON parsed into `input`)
  `role: tool` messages        -> `tool_result` blocks in a user message (consecutive ones merged)
  tools, tool_choice           -> {name, description, input_schema}; auto / any / none / tool
  parallel_tool_calls: false   -> tool_choice.disable_parallel_tool_use
  max_completion_tokens, max_tokens -> max_tokens (4096 when absent: Anthropic requires it)
  temperature, top_p, stream   -> as they are (temperature is not rescaled: Anthropic's range is 0..1)
  stop                         -> stop_sequences;  user -> metadata.user_id
Dropped: n (n > 1 is refused with a 400), presence_penalty, frequency_penalty,
logit_bias, logprobs, top_logprobs, response_format, seed, stream_options
(the client's codec reads `include_usage`), store, metadata, service_tier, modalities,
audio, prediction, reasoning_effort, web_search_options, the legacy functions /
function_call, message `name`s and tools' `strict`. Content parts other than
text / image_url, non-function tools, tool calls or results without ids and
tool-call arguments that are not a JSON object are refused with a 400 (`client`).

Answer (`from_upstream`, `AnthropicStreamTranslator`): text blocks joined into
the text (None when the answer is only tool calls), `tool_use` blocks -> tool
calls, thinking blocks dropped. stop_reason -> finish reason: end_turn,
stop_sequence, pause_turn -> stop; max_tokens, model_context_window_exceeded ->
length; tool_use -> tool_calls; refusal -> content_filter. prompt_tokens
counts input_tokens plus cache creation and cache read tokens. Error types map
to failure classes and neutral kinds in ERROR_TYPES (billing_error counts as `auth`: the
deployment's account is unusable); an in-band stream `error` event is
`overloaded`, `server` or `rate_limit` by its type, else `protocol`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from gatewayd.adapters.base import (
    HttpAdapter,
    ProviderType,
    StreamTranslator,
    TranslatedStream,
    TypeKey,
    expect_stream,
    translates_client_input,
    unsupported,
    upstream_json,
)
from gatewayd.adapters.base import client_error as base_client_error
from gatewayd.adapters.sse import read_events
from gatewayd.daemon.core.conversation import ToolCall
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.replies import (
    Answer,
    Delta,
    Finish,
    Reply,
    Start,
    StreamEvent,
    ToolCallDelta,
    Usage,
)
from gatewayd.daemon.formats.anthropic_request import encode_chat

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

DEFAULT_MAX_TOKENS = 4096
DEFAULT_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}

# Anthropic error type -> (failure class, neutral error kind, error code)
ERROR_TYPES = {
    "invalid_request_error": (FailureClass.CLIENT, "invalid_request", None),
    "request_too_large": (FailureClass.CLIENT, "invalid_request", "request_too_large"),
    "authentication_error": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "permission_error": (FailureClass.AUTH, "permission", None),
    "billing_error": (FailureClass.AUTH, "billing", None),
    "not_found_error": (FailureClass.NOT_FOUND, "not_found", "model_not_found"),
    "rate_limit_error": (FailureClass.RATE_LIMIT, "rate_limit", "rate_limit_exceeded"),
    "api_error": (FailureClass.SERVER, "server", None),
    "timeout_error": (FailureClass.SERVER, "server", "timeout"),
    "overloaded_error": (FailureClass.OVERLOADED, "overloaded", "overloaded"),
}


def client_error(message: str, param: str | None = None) -> UpstreamError:
    """A request Anthropic cannot be sent: returned to the client as a 400."""
    return base_client_error(message, "invalid_request", param)


# --- request ---------------------------------------------------------------------------------

def _text_of(content, where: str) -> str:
    """The text of a string or of a list of text parts (system messages)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise client_error(f"{where}: content must be a string or a list of parts")


def _image(part: dict, where: str) -> dict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise client_error(f"{where}: image_url needs a url")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise client_error(f"{where}: image data URLs must be data:<media type>;base64,<data>")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise client_error(f"{where}: image URLs must be data: or http(s) URLs")


def _blocks(content, where: str) -> list[dict]:
    """User / assistant / tool content as Anthropic blocks; empty text is left out (Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise client_error(f"{where}: content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part, where))
        else:
            raise client_error(f"{where}: content part type {kind!r} is not supported by provider type anthropic")
    return blocks


def _tool_use(call: dict, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not function.get("name") or not call.get("id"):
        raise client_error(f"{where}: tool calls need an id and a function.name")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise client_error(f"{where}: function.arguments is not a JSON object")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _messages(messages) -> tuple[list[str], list[dict]]:
    if not isinstance(messages, list) or not messages:
        raise client_error("messages must be a non-empty list", "messages")
    system: list[str] = []
    out: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if role else None
        if role in ("system", "developer"):
            text = _text_of(content, where)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content, where)
        elif role == "assistant":
            blocks = _blocks(content, where)
            blocks += [_tool_use(call, where) for call in message.get("tool_calls") or ()]
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise client_error(f"{where}: tool messages need a tool_call_id")
            role, block = "user", {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
            result = content if isinstance(content, str) or content is None else _blocks(content, where)
            if result:
                block["content"] = result
            blocks = [block]
        else:
            raise client_error(f"{where}: role {role!r} is not supported by provider type anthropic")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for message in out:  # one text block reads best as a plain string
        if len(message["content"]) == 1 and message["content"][0]["type"] == "text":
            message["content"] = message["content"][0]["text"]
    return system, out


def _tools(tools) -> list[dict]:
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            raise client_error(f"tools[{i}]: only function tools with a name are supported", "tools")
        spec = {"name": function["name"]}
        if function.get("description"):
            spec["description"] = function["description"]
        spec["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        out.append(spec)
    return out


def _tool_choice(choice, parallel) -> dict:
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise client_error("tool_choice must be auto, required, none or a named function", "tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


@translates_client_input("anthropic")
def to_upstream(body: dict, model: str) -> bytes:
    """The OpenAI chat request as an Anthropic Messages request (raises a 400 UpstreamError if it cannot be)."""
    if (body.get("n") or 1) != 1:
        raise client_error("provider type anthropic returns one choice: n must be 1", "n")
    system, messages = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out: dict = {"model": model, "messages": messages,
                 "max_tokens": DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        if not (isinstance(stop, str) or isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise client_error("stop must be a string or an array of strings", "stop")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None or body.get("parallel_tool_calls") is False:
            out["tool_choice"] = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    return orjson.dumps(out)


# --- answer ----------------------------------------------------------------------------------

def _usage(usage: dict) -> Usage:
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cache_read
    return Usage(prompt, usage.get("output_tokens") or 0, cache_read)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, message)


def from_upstream(payload: dict, created: int | None = None) -> Answer:
    """An Anthropic Message as a neutral answer."""
    if not isinstance(payload, dict) or payload.get("type") == "error":
        raise _protocol("upstream answer is not a message")
    content = payload.get("content")
    if not isinstance(content, list):
        raise _protocol("upstream message has no content list")
    texts, calls = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(ToolCall(block.get("id"), block.get("name"), orjson.dumps(block.get("input") or {}).decode()))
    usage = payload.get("usage")
    return Answer(payload.get("id"), payload.get("model"), int(time.time()) if created is None else created,
                  "".join(texts) if texts or not calls else None,
                  FINISH_REASONS.get(payload.get("stop_reason"), "stop"),
                  _usage(usage if isinstance(usage, dict) else {}), tuple(calls))


def error_from_upstream(status: int | None, payload, retry_after: float | None = None,
                        raw: bytes | None = None) -> UpstreamError:
    """An Anthropic error body (or anything else that came with an error status) as an UpstreamError;
    `raw`, the body as it came, goes to an Anthropic client untouched."""
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    message = str(error.get("message") or kind or "") if isinstance(error, dict) else ""
    if kind in ERROR_TYPES:
        failure, neutral, code = ERROR_TYPES[kind]
    else:
        failure = classify_status(status) if status else FailureClass.PROTOCOL
        neutral, code = ("invalid_request" if failure == FailureClass.CLIENT else "upstream"), kind
    message = message or (f"upstream answered HTTP {status}" if status else "upstream error")
    return UpstreamError(failure, message, status=status, retry_after=retry_after, kind=neutral, code=code,
                         body=raw if error is not None else None, body_format=WireFormat.ANTHROPIC)


class AnthropicStreamTranslator(StreamTranslator):
    """Anthropic stream events in, neutral stream events out. Pure: no I/O."""

    def __init__(self, created: int | None = None) -> None:
        self.created = int(time.time()) if created is None else created
        self.usage: Usage | None = None
        self.done = False
        self._tools: dict[int, int] = {}  # Anthropic block index -> the answer's tool call index
        self._blocks: set[int] = set()  # every block index started
        self._usage: dict = {}

    def _count(self, usage) -> None:
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if isinstance(v, int)})
            self.usage = _usage(self._usage)

    def feed(self, event: bytes, data: bytes) -> list[StreamEvent]:
        """One SSE event (name, data) in; the neutral events it becomes out."""
        if self.done:
            return []
        payload = upstream_json(data, "malformed stream event from upstream")
        if not isinstance(payload, dict):
            raise _protocol("malformed stream event from upstream")
        kind = payload.get("type") or event.decode("ascii", "replace")
        try:
            return self._dispatch(kind, payload)
        except (AttributeError, KeyError, TypeError):
            raise _protocol(f"malformed {kind} event from upstream") from None

    def _dispatch(self, kind: str, event: dict) -> list[StreamEvent]:
        if kind == "message_start":
            message = event["message"]
            self._count(message.get("usage"))
            return [Start(id=message.get("id") or "", model=message.get("model") or "", created=self.created)]
        if kind == "content_block_start":
            block = event["content_block"]
            self._blocks.add(event["index"])
            if block["type"] == "tool_use":
                index = self._tools[event["index"]] = len(self._tools)
                return [Delta(tool_calls=(ToolCallDelta(index, "", block["id"], block["name"]),))]
            if block["type"] == "text" and block.get("text"):
                return [Delta(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = event["delta"]
            if event["index"] not in self._blocks:
                raise _protocol("stream delta for a content block that never started")
            if delta["type"] == "text_delta":
                return [Delta(delta["text"])] if delta["text"] else []
            if delta["type"] == "input_json_delta" and event["index"] in self._tools and delta["partial_json"]:
                return [Delta(tool_calls=(ToolCallDelta(self._tools[event["index"]], delta["partial_json"]),))]
            return []  # thinking, signature, citation deltas and server tool input: no neutral counterpart
        if kind == "message_delta":
            self._count(event.get("usage"))
            reason = event["delta"].get("stop_reason")
            return [Finish(FINISH_REASONS.get(reason, "stop"))] if reason else []
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            error = error_from_upstream(None, event)
            if error.failure not in (FailureClass.OVERLOADED, FailureClass.SERVER, FailureClass.RATE_LIMIT):
                error.failure = FailureClass.PROTOCOL
            raise error
        return []  # ping, content_block_stop, and event types added later


class AnthropicAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream"})

    def auth_headers(self, key: str) -> dict[str, str]:
        version = str(self.provider.options.get("anthropic_version") or DEFAULT_VERSION)
        return {"x-api-key": key, "anthropic-version": version} if key else {"anthropic-version": version}

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        return error_from_upstream(status, payload, retry_after, raw)

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        url = self.join(self.provider.base_url, "/v1/messages")
        raw = await self.fetch(deployment, url, encode_chat(request.chat(), deployment.model))
        answer = from_upstream(upstream_json(raw, "upstream answer is not JSON"))
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream:
        url = self.join(self.provider.base_url, "/v1/messages")
        response = await self.send(deployment, url, encode_chat(request.chat(), deployment.model))
        expect_stream(response, "text/event-stream", "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, AnthropicStreamTranslator(), read_events)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        raise unsupported("anthropic", "embeddings")


ANTHROPIC = ProviderType("anthropic", AnthropicAdapter, base_url="https://api.anthropic.com",
                         keys={"anthropic_version": TypeKey()})
