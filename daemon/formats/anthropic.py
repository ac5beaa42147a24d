"""Anthropic Messages, the wire format of POST /v1/messages: a neutral `Chat` written as its
request, and its answers, stream events and errors read as neutral values.

Streams are SSE `event: X` / `data: {...}` pairs (message_start, content_block_start/_delta/
_stop, message_delta, message_stop, ping, error); errors are
`{"type": "error", "error": {"type", "message"}}`.

Request (`encode_chat`):
  system / developer messages  -> top-level `system` (text parts joined, several joined by a blank line)
  user / assistant messages    -> `messages`, consecutive same-role messages merged (Anthropic alternates)
  Text / Refusal / Image parts -> text / image blocks (data: URL -> base64 source, http(s) -> url source)
  an assistant's tool calls    -> `tool_use` blocks (arguments JSON parsed into `input`)
  tool messages                -> `tool_result` blocks in a user message (consecutive ones merged)
  tools, tool_choice           -> {name, description, input_schema}; auto / any / none / tool
  parallel_tool_calls: false   -> tool_choice.disable_parallel_tool_use
  max_tokens                   -> max_tokens (4096 when absent: Anthropic requires it)
  temperature, top_p, stream   -> as they are (temperature is not rescaled: Anthropic's range is 0..1)
  stop                         -> stop_sequences;  user -> metadata.user_id
Left out: seed, presence/frequency penalties, response_format, message names, tools'
`strict`, `extra`. Refused with a 400 (`client`): n other than 1, other roles, unsupported
content parts and tools, image URLs other than data: (base64) and http(s), tool calls or
results without ids, tool-call arguments that are not a JSON object, malformed content,
stop and tool_choice.

Answer (`decode_answer`, `StreamDecoder`): text blocks joined into the text (None when the
answer is only tool calls), `tool_use` blocks -> tool calls, thinking blocks dropped.
stop_reason -> finish reason: end_turn, stop_sequence, pause_turn -> stop; max_tokens,
model_context_window_exceeded -> length; tool_use -> tool_calls; refusal -> content_filter.
prompt_tokens counts input_tokens plus cache creation and cache read tokens. Error types map
to failure classes and neutral kinds in ERROR_TYPES (billing_error counts as `auth`: the
deployment's account is unusable); an in-band stream `error` event is `overloaded`, `server`
or `rate_limit` by its type, else `protocol`.
"""

from __future__ import annotations

import time

import orjson

from gatewayd.daemon.core.conversation import (
    AUTO,
    NONE,
    REQUIRED,
    Chat,
    Image,
    Malformed,
    Message,
    Part,
    Refusal,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    UnsupportedTool,
    chat_encoder,
    json_body,
)
from gatewayd.daemon.core.conversation import client_error as neutral_client_error
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status, upstream_json
from gatewayd.daemon.core.replies import (
    Answer,
    Delta,
    Finish,
    Start,
    StreamEvent,
    StreamTranslator,
    ToolCallDelta,
    Usage,
)

FORMAT = WireFormat.ANTHROPIC
DEFAULT_MAX_TOKENS = 4096

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
    return neutral_client_error(message, "invalid_request", param)


@chat_encoder("anthropic")
def encode_chat(chat: Chat, model: str) -> bytes:
    """The chat request as an Anthropic Messages request (raises a 400 UpstreamError if it cannot be)."""
    if (chat.n or 1) != 1:
        raise client_error("provider type anthropic returns one choice: n must be 1", "n")
    system, messages = encode_messages(chat.messages)
    out: dict = {"model": model, "messages": messages,
                 "max_tokens": DEFAULT_MAX_TOKENS if chat.max_tokens is None else chat.max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    if chat.temperature is not None:
        out["temperature"] = chat.temperature
    if chat.top_p is not None:
        out["top_p"] = chat.top_p
    if isinstance(chat.stop, Malformed):
        raise client_error("stop must be a string or an array of strings", "stop")
    if chat.stop:
        out["stop_sequences"] = chat.stop
    if chat.stream:
        out["stream"] = True
    if chat.user:
        out["metadata"] = {"user_id": chat.user}
    if chat.tools:
        out["tools"] = [encode_tool(tool, i) for i, tool in enumerate(chat.tools)]
        if chat.tool_choice is not None or chat.parallel_tool_calls is False:
            out["tool_choice"] = encode_tool_choice(chat.tool_choice, chat.parallel_tool_calls)
    return json_body(out)


# --- messages ----------------------------------------------------------------------------------

def encode_messages(messages: tuple[Message, ...]) -> tuple[list[str], list[dict]]:
    """The system texts, and the turns: Anthropic alternates user and assistant, so consecutive
    turns of one role (a tool result is the user's) are merged into one."""
    if not messages:
        raise client_error("messages must be a non-empty list", "messages")
    system: list[str] = []
    out: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            if text := system_text(message.content, where):
                system.append(text)
            continue
        if role == "user":
            blocks = encode_blocks(message.content, where)
        elif role == "assistant":
            blocks = encode_blocks(message.content, where)
            blocks += encode_tool_uses(message.tool_calls, where)
        elif role == "tool":
            role, blocks = "user", [tool_result(message, where)]
        else:
            raise client_error(f"{where}: role {role!r} is not supported by provider type anthropic")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for turn in out:  # one text block reads best as a plain string
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return system, out


def system_text(content: str | tuple[Part, ...] | Malformed | None, where: str) -> str:
    """A system message's text: its text parts joined; Anthropic's system prompt takes no other."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts")
    return "".join(part.text for part in content if isinstance(part, Text))


def encode_blocks(content: str | tuple[Part, ...] | Malformed | None, where: str) -> list[dict]:
    """User / assistant / tool content as Anthropic blocks; empty text is left out (Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts")
    blocks = []
    for part in content:
        if isinstance(part, (Text, Refusal)):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            blocks.append(encode_image(part.url, where))
        else:
            raise client_error(f"{where}: content part type {part.type!r} is not supported "
                               "by provider type anthropic")
    return blocks


def encode_image(url: str, where: str) -> dict:
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


def encode_tool_uses(calls: tuple[ToolCall | Malformed, ...] | Malformed, where: str) -> list[dict]:
    if isinstance(calls, Malformed):
        raise client_error(f"{where}: tool calls need an id and a function.name")
    return [encode_tool_use(call, where) for call in calls]


def encode_tool_use(call: ToolCall | Malformed, where: str) -> dict:
    if isinstance(call, Malformed) or not call.name or not call.id:
        raise client_error(f"{where}: tool calls need an id and a function.name")
    arguments = call.arguments or "{}"
    try:  # a client may have sent the arguments object itself: it is carried as it came
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise client_error(f"{where}: function.arguments is not a JSON object")
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": parsed}


def tool_result(message: Message, where: str) -> dict:
    if not message.tool_call_id:
        raise client_error(f"{where}: tool messages need a tool_call_id")
    block: dict = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    result = content if content is None or isinstance(content, str) else encode_blocks(content, where)
    if result:  # Anthropic refuses an empty result's content; it takes no content at all
        block["content"] = result
    return block


# --- tools -------------------------------------------------------------------------------------

def encode_tool(tool: Tool | UnsupportedTool, index: int) -> dict:
    if not isinstance(tool, Tool) or not tool.name:
        raise client_error(f"tools[{index}]: only function tools with a name are supported", "tools")
    spec: dict = {"name": tool.name}
    if tool.description:
        spec["description"] = tool.description
    spec["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
    return spec


def encode_tool_choice(choice: ToolChoice | Malformed | None, parallel: bool | None) -> dict:
    if choice is None or choice == AUTO:
        out: dict = {"type": "auto"}
    elif choice == REQUIRED:
        out = {"type": "any"}
    elif choice == NONE:
        return {"type": "none"}  # no tool is called, so none in parallel
    elif isinstance(choice, ToolChoice) and choice.mode == "tool" and choice.name:
        out = {"type": "tool", "name": choice.name}
    else:
        raise client_error("tool_choice must be auto, required, none or a named function", "tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


# --- answer ----------------------------------------------------------------------------------

def _usage(usage: dict) -> Usage:
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cache_read
    return Usage(prompt, usage.get("output_tokens") or 0, cache_read)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, message)


def decode_answer(payload: dict, created: int | None = None) -> Answer:
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


def decode_error(status: int | None, payload, retry_after: float | None = None,
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


class StreamDecoder(StreamTranslator):
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
            error = decode_error(None, event)
            if error.failure not in (FailureClass.OVERLOADED, FailureClass.SERVER, FailureClass.RATE_LIMIT):
                error.failure = FailureClass.PROTOCOL
            raise error
        return []  # ping, content_block_stop, and event types added later
