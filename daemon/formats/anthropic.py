"""Anthropic Messages, the wire format of POST /v1/messages, from both sides: for an Anthropic
upstream, a neutral `Chat` written as its request, and its answers, stream events and errors
read as neutral values; for an Anthropic client served by another format's upstream, its
request read as a `Chat`, and neutral answers, stream events and errors written for it.

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

Client request (`decode_chat`), one pass that never raises, nothing copied:
  system (a string, or blocks)  -> a first `system` message
  messages[].content            -> a string as it is; blocks: text -> Text, image -> Image (base64
                                   source -> data:<media_type>;base64,<data>, url source -> its URL),
                                   any other -> UnsupportedPart (a document, a server tool's blocks, ...);
                                   a system prompt's or an assistant's blocks that are all text -> one
                                   string, joined as `encode_chat` joins a system prompt's (many
                                   OpenAI-compatible servers take a list of parts only from a user)
  an assistant's tool_use       -> its tool_calls: ToolCall(id, name, `input` as JSON text)
  a user's tool_result blocks   -> a `tool` message each (tool_use_id; content a string, or text /
                                   image parts; none -> ""), then the turn's other blocks as a user
                                   message: OpenAI wants a call's results right after the call
  thinking, redacted_thinking   -> dropped: no other upstream reads them (an Anthropic deployment
                                   gets the client's body itself, so they never need restoring)
  max_tokens, temperature, top_p, stream  -> as they are;  stop_sequences -> stop;  metadata.user_id -> user
  tools                         -> custom tools: Tool(name, description, input_schema, strict);
                                   server tools (another `type`): UnsupportedTool
  tool_choice                   -> auto / any / none / tool -> AUTO / REQUIRED / NONE / ToolChoice("tool", name);
                                   disable_parallel_tool_use: true -> parallel_tool_calls false
  output_config.format          -> ResponseFormat("json_schema", schema) (output_config goes to `extra` too)
  any other field               -> `extra`, by name (top_k, thinking, service_tier, ...)
Dropped: cache_control, citations, a tool result's is_error (its content says what failed).
Unreadable shapes: content or system neither text nor a list, stop_sequences not a list of
strings, tool_choice not one of the above -> Malformed; a message that is not an object ->
Message(None, Malformed). Written back by `encode_chat`, a body is the same for what both
model, but for: one text block reads as a string, the system's and an assistant's text blocks
joined, an assistant's text before its tool_use blocks, consecutive turns of one role merged,
a tool result's empty content left out.

Client answer (`encode_answer`):
  {"id", "type": "message", "role": "assistant", "model", "content", "stop_reason",
   "stop_sequence": null, "usage"}
  content       reasoning as a thinking block (signature "": only Anthropic can sign one), the
                text block (if any text), tool_use blocks (arguments that are not a JSON
                object: input {}, as Anthropic's input is always an object)
  stop_reason   stop -> end_turn (tool_use when the answer calls tools), length -> max_tokens,
                tool_calls -> tool_use, content_filter -> refusal; stop_sequence is always null
                (which sequence stopped an upstream is not known)
  usage         input_tokens = prompt_tokens - cached_tokens (neutral prompt tokens count the
                cached ones, Anthropic's input tokens do not), output_tokens, and
                cache_read_input_tokens when any were cached
  id            the upstream's, prefixed msg_ unless it is one already (chatcmpl-1 -> msg_chatcmpl-1)

Client stream (`StreamEncoder`), SSE `event: X` / `data: {...}` pairs as Anthropic writes them:
  message_start  (usage 0 and 0: an upstream of another format tells it only at the end)
  per block      content_block_start (thinking with signature "", text, or tool_use with id,
                 name and input {}), its deltas (thinking_delta, text_delta, input_json_delta),
                 content_block_stop when the next block starts or at Finish; within one event
                 reasoning, then text, then tool calls. A tool call's piece that comes after its
                 block stopped (calls interleaved, which OpenAI never sends) goes to that block's index.
  `end(usage)`   message_delta (the held Finish's stop_reason, the usage in full: cumulative, as
                 Anthropic's) then message_stop. The usage comes after the Finish in an OpenAI
                 stream, so the Finish is held until then.
Errors: `error_body` names a neutral kind by Anthropic's error type (ERROR_NAMES: billing_error
and timeout_error are Anthropic's own, as its errors page lists them); `upstream_error_body` is
an Anthropic upstream's own body as it came, anyone else's written so; `stream_error` ends a
failed stream with `event: error` (overloaded_error or api_error) and no message_stop.
"""

from __future__ import annotations

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
    json_body,
)
from gatewayd.daemon.core.conversation import client_error as neutral_client_error
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status, upstream_json
from gatewayd.daemon.core.replies import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
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


# === the client side: an Anthropic client served by an upstream of another format ==============

# --- requests ---------------------------------------------------------------------------------

# The body's fields that `Chat` models; every other goes to `extra`.
MODELLED = frozenset({
    "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata",
    "tools", "tool_choice",
})
CHOICES = {"auto": AUTO, "any": REQUIRED, "none": NONE}
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def decode_chat(body: dict) -> Chat:
    """The client's Messages body (parsed) as a neutral `Chat`. Never raises: what cannot be
    read is carried as `Malformed` / `UnsupportedPart` / `UnsupportedTool`, for the encoder to refuse."""
    messages = body.get("messages")
    if isinstance(messages, list):
        turns = [neutral for message in messages for neutral in decode_turn(message)]
    else:
        turns = [] if messages is None else [Message(None, Malformed(messages))]
    system = decode_system(body.get("system"))
    choice = body.get("tool_choice")
    metadata = body.get("metadata")
    extra = {key: value for key, value in body.items() if key not in MODELLED}
    return Chat(
        body.get("model"),
        tuple(turns) if system is None else (system, *turns),
        client_format=FORMAT,
        stream=bool(body.get("stream")),
        max_tokens=body.get("max_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=decode_stop(body.get("stop_sequences")),
        user=metadata.get("user_id") if isinstance(metadata, dict) else None,
        tools=decode_tools(body.get("tools")),
        tool_choice=decode_tool_choice(choice),
        # only a `true` says anything: parallel calls are the default
        parallel_tool_calls=(False if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
                             else None),
        response_format=decode_output_format(body.get("output_config")),
        extra=MappingProxyType(extra) if extra else EMPTY,
    )


def decode_system(system: Any) -> Message | None:
    if not system:
        return None
    if isinstance(system, str):
        return Message("system", system)
    if isinstance(system, list):
        return Message("system", joined(tuple(map(decode_block, system))))
    return Message("system", Malformed(system))


def joined(parts: tuple[Part, ...]) -> str | tuple[Part, ...]:
    """Parts that are all text as one string (as Anthropic's encoder joins a system prompt's):
    many OpenAI-compatible servers take a list of parts only from a user."""
    if all(type(part) is Text and isinstance(part.text, str) for part in parts):
        return "".join(part.text for part in parts) if len(parts) != 1 else parts[0].text
    return parts


def decode_turn(message: Any) -> list[Message]:
    """One Anthropic turn as neutral messages: one, or for a user turn with tool results, a
    `tool` message per result followed by a user message with the turn's other blocks."""
    if not isinstance(message, dict):
        return [Message(None, Malformed(message))]
    role, content = message.get("role"), message.get("content")
    if content is None or isinstance(content, str):
        return [Message(role, content)]
    if not isinstance(content, list):
        return [Message(role, Malformed(content))]
    if role == "assistant":
        return [decode_assistant(content)]
    results, parts = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and role == "user":
            results.append(decode_tool_result(block))
        elif kind not in THINKING_BLOCKS:
            parts.append(decode_block(block))
    if parts or not results:
        results.append(Message(role, tuple(parts)))
    return results


def decode_assistant(content: list) -> Message:
    parts, calls = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            calls.append(decode_tool_use(block))
        elif kind not in THINKING_BLOCKS:
            parts.append(decode_block(block))
    # a turn that is only tool calls has no content, as OpenAI writes one
    return Message("assistant", joined(tuple(parts)) if parts or not calls else None, tuple(calls))


def decode_block(block: Any) -> Part:
    """A content block other than tool_use / tool_result as a neutral part."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return Text(block.get("text") or "")
    if kind == "image":
        return decode_image(block.get("source"))
    return UnsupportedPart(kind)


def decode_image(source: Any) -> Part:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and isinstance(data, str):
            return Image(f"data:{media_type};base64,{data}")
    elif kind == "url":
        return Image(source.get("url"))
    # a file id (the Files API) or an unreadable source: no neutral image says it
    return UnsupportedPart(f"image with a {kind} source" if isinstance(kind, str) else "image without a source")


def decode_tool_use(block: dict) -> ToolCall | Malformed:
    try:  # the input as JSON text; nesting deeper than orjson writes leaves it unreadable
        arguments = orjson.dumps(block.get("input") or {}).decode()
    except TypeError:
        return Malformed(block)
    return ToolCall(block.get("id"), block.get("name"), arguments)


def decode_tool_result(block: dict) -> Message:
    content = block.get("content")
    if content is None:
        content = ""  # Anthropic takes a result without content; OpenAI wants one
    elif isinstance(content, list):
        content = tuple(map(decode_block, content))
    elif not isinstance(content, str):
        content = Malformed(content)
    return Message("tool", content, tool_call_id=block.get("tool_use_id"))


def decode_stop(stop: Any) -> tuple[str, ...] | Malformed:
    if stop is None or stop == []:
        return ()
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return tuple(stop)
    return Malformed(stop)  # a lone string too: Anthropic takes only a list


def decode_tools(tools: Any) -> tuple[Tool | UnsupportedTool, ...]:
    if not tools:
        return ()
    if not isinstance(tools, list):
        return (UnsupportedTool(None),)
    return tuple(map(decode_tool, tools))


def decode_tool(tool: Any) -> Tool | UnsupportedTool:
    if not isinstance(tool, dict):
        return UnsupportedTool(None)
    kind = tool.get("type")
    if kind not in (None, "custom"):  # a server tool: web_search_..., bash_..., text_editor_...
        return UnsupportedTool(kind)
    return Tool(tool.get("name"), tool.get("description"), tool.get("input_schema"), tool.get("strict"))


def decode_tool_choice(choice: Any) -> ToolChoice | Malformed | None:
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in CHOICES:
        return CHOICES[kind]
    if kind == "tool" and choice.get("name"):
        return ToolChoice("tool", choice["name"])
    return Malformed(choice)


def decode_output_format(config: Any) -> ResponseFormat | Malformed | None:
    output_format = config.get("format") if isinstance(config, dict) else None
    if output_format is None:
        return None
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        return ResponseFormat("json_schema", schema=output_format.get("schema"))
    return Malformed(output_format)


# --- answers ----------------------------------------------------------------------------------

STOP_REASONS = {STOP: "end_turn", LENGTH: "max_tokens", TOOL_CALLS: "tool_use", CONTENT_FILTER: "refusal"}


def message_id(upstream_id: str) -> str:
    """Anthropic's ids read msg_...: another upstream's id, prefixed, still names its answer."""
    return upstream_id if upstream_id.startswith("msg_") else "msg_" + upstream_id


def stop_reason(finish: str | None, called: bool) -> str:
    reason = STOP_REASONS.get(finish, "end_turn")  # a reason added later ends the turn
    # Anthropic ends a turn that calls tools with tool_use, and agents loop on it; some
    # OpenAI-compatible servers finish such a turn with "stop"
    return "tool_use" if called and reason == "end_turn" else reason


def usage_of(counted: Usage | None) -> dict:
    counted = counted or Usage()
    out = {"input_tokens": max(counted.prompt_tokens - counted.cached_tokens, 0),
           "output_tokens": counted.completion_tokens}
    if counted.cached_tokens:
        out["cache_read_input_tokens"] = counted.cached_tokens
    return out


def tool_input(arguments: str) -> dict:
    """A call's JSON arguments as Anthropic's `input`, always an object: {} for arguments that
    are not one (the model wrote them so; the client's tool refuses them as it would {})."""
    try:
        parsed = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def encode_answer(answer: Answer) -> bytes:
    content: list[dict] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    content += ({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}
                for call in answer.tool_calls)
    return orjson.dumps({
        "id": message_id(answer.id), "type": "message", "role": "assistant", "model": answer.model,
        "content": content, "stop_reason": stop_reason(answer.finish, bool(answer.tool_calls)),
        "stop_sequence": None, "usage": usage_of(answer.usage),
    })


# --- streams ----------------------------------------------------------------------------------

PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'  # Anthropic's keep-alive, for a relay that idles


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """Neutral stream events in, Anthropic's SSE events out, for one client's stream (the
    module's docstring says in what order)."""

    __slots__ = ("model", "started", "blocks", "open", "tools", "reason")

    def __init__(self, body: dict) -> None:
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""  # for a stream that never said its own
        self.started = False
        self.blocks = 0  # content blocks started
        self.open: str | int | None = None  # the open block: "thinking", "text", or a tool call's index
        self.tools: dict[int, int] = {}  # a tool call's index -> its block's index
        self.reason: str | None = None  # the Finish's, written by `end`

    def encode(self, event: StreamEvent) -> bytes:
        out = [] if self.started else [self.message_start(event)]
        if isinstance(event, Finish):
            self.close(out)
            self.reason = event.reason
            return b"".join(out)
        if event.reasoning:
            self.into(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self.delta(self.blocks - 1, {"type": "thinking_delta", "thinking": event.reasoning}))
        if event.text:
            self.into(out, "text", {"type": "text", "text": ""})
            out.append(self.delta(self.blocks - 1, {"type": "text_delta", "text": event.text}))
        for piece in event.tool_calls:
            if piece.index not in self.tools:
                self.into(out, piece.index, {"type": "tool_use", "id": piece.id or "", "name": piece.name or "",
                                             "input": {}})
                self.tools[piece.index] = self.blocks - 1
            if piece.arguments:
                out.append(self.delta(self.tools[piece.index],
                                      {"type": "input_json_delta", "partial_json": piece.arguments}))
        return b"".join(out)

    def fail(self, error: UpstreamError) -> bytes:
        return stream_error(error)

    def end(self, counted: Usage | None) -> bytes:
        """The stream's last events: message_delta with the stop reason and the usage, then message_stop."""
        out = [] if self.started else [self.message_start(None)]
        self.close(out)
        out.append(sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.reason, bool(self.tools)), "stop_sequence": None},
            "usage": usage_of(counted)}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def message_start(self, event: StreamEvent | None) -> bytes:
        self.started = True
        upstream_id, model = (event.id, event.model or self.model) if isinstance(event, Start) else ("", self.model)
        return sse("message_start", {"type": "message_start", "message": {
            "id": message_id(upstream_id), "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def into(self, out: list[bytes], block: str | int, start: dict) -> None:
        """Make `block` the open one: the open block stops, `block` starts, unless it is open already."""
        if self.open == block:
            return
        self.close(out)
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.blocks,
                                               "content_block": start}))
        self.open = block
        self.blocks += 1

    def close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1}))
            self.open = None

    @staticmethod
    def delta(index: int, delta: dict) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


# --- errors -----------------------------------------------------------------------------------

ERROR_NAMES = {  # neutral error kind -> Anthropic error type
    "invalid_request": "invalid_request_error", "authentication": "authentication_error",
    "permission": "permission_error", "billing": "billing_error", "not_found": "not_found_error",
    "rate_limit": "rate_limit_error", "server": "api_error", "overloaded": "overloaded_error",
    "timeout": "timeout_error", "upstream": "api_error",
    # no deployment can answer now: Anthropic's word for "try again shortly"
    "unavailable": "overloaded_error",
}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None,
               request_id: str | None = None) -> bytes:
    """Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}` (no place for a
    code or a param), with `request_id` where Anthropic puts its own, when given."""
    payload: dict = {"type": "error", "error": {"type": ERROR_NAMES.get(kind, "api_error"), "message": message}}
    if request_id is not None:
        payload["request_id"] = request_id
    return orjson.dumps(payload)


def upstream_error_body(error: UpstreamError) -> bytes:
    """What a client is told of an upstream's refusal of its request: an Anthropic upstream's own
    error answer as it came, anyone else's in Anthropic's shape."""
    if error.body is not None and error.body_format == FORMAT:
        return error.body
    return error_body(error.message, error.kind, error.code, error.param)


def stream_error(error: UpstreamError) -> bytes:
    """The event that ends a stream the upstream failed after its first byte (no message_stop
    follows: the client must not take it for a complete answer)."""
    kind = "overloaded" if error.failure is FailureClass.OVERLOADED else "server"
    return b"event: error\ndata: " + error_body("the upstream stream failed: " + error.message, kind) + b"\n\n"
