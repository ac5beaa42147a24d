"""Amazon Bedrock's Converse API, the wire format of POST /model/{modelId}/converse and
/converse-stream: a neutral `Chat` written as its request, its answers, stream events and
errors read as neutral values. Pure functions; the I/O, the signing and the binary framing of
the stream are adapters/bedrock.py's.

Request (`encode_chat`); the model is in the URL, the stream is the endpoint's:
  system / developer messages  -> `system`: a {text} block each (empty ones left out)
  user / assistant messages    -> `messages` of content blocks, consecutive turns of one role
                                  merged (Converse alternates user and assistant)
  Text / Refusal parts         -> {text}; empty text left out (Converse refuses blank text)
  Image parts                  -> {image: {format, source: {bytes: BASE64}}} from a data: URL
                                  (png, jpeg, gif, webp); an s3:// URL -> source.s3Location
  an assistant's tool calls    -> {toolUse: {toolUseId, name, input}} (arguments parsed into an object)
  tool messages                -> {toolResult: {toolUseId, content: [{text}]}} in a user turn (an
                                  empty result's text is "(empty)": Converse refuses blank text)
  max_tokens, temperature, top_p, stop -> inferenceConfig {maxTokens, temperature, topP, stopSequences}
  tools                        -> toolConfig.tools[].toolSpec {name, description, inputSchema: {json}}
  tool_choice                  -> toolConfig.toolChoice: auto -> {auto}, required -> {any},
                                  a named function -> {tool: {name}}; none -> no toolConfig (Converse
                                  has no "none"), unless the conversation holds tool blocks, which
                                  Converse reads only with a toolConfig: then the tools, no choice
Left out: seed, presence/frequency penalties, parallel_tool_calls, response_format, user,
message names, tools' `strict`, `extra`. Refused with a 400: n other than 1, other roles,
content parts other than text and images, image URLs other than data: and s3://, image types
Converse does not read, tool calls or results without ids, arguments that are not a JSON
object, malformed content, stop and tool_choice, tools other than named functions.

Answer (`decode_answer`): output.message.content's text blocks joined (None when the answer is
only tool calls), toolUse blocks -> tool calls (input written as JSON text), reasoningContent
-> reasoning. stopReason -> finish reason (FINISH_REASONS). usage: prompt tokens are
inputTokens plus cacheReadInputTokens and cacheWriteInputTokens (Converse counts neither in
inputTokens), cached tokens cacheReadInputTokens. Converse gives an answer no id: one is made.

Stream (`StreamDecoder`), one decoded event-stream message at a time, by its `:event-type`:
messageStart opens the answer; contentBlockStart with toolUse -> a tool call's first piece (id,
name); contentBlockDelta text / toolUse.input / reasoningContent.text -> more of the answer;
messageStop -> Finish; metadata (always last) -> the usage, and the end. The Start goes out with
the answer's first piece, so that an exception right after messageStart comes before the
client's first byte and the attempt is retried. An exception message (`:exception-type`) is an
error of the class EXCEPTIONS gives it.

Errors (`decode_error`): the type is the `x-amzn-ErrorType` header's name (before any ':'), else
the body's `__type` / `code`; the message the body's `message`. EXCEPTIONS maps each of the
service's error shapes to a failure class: throttling and ModelNotReadyException are retried
(429), ServiceUnavailableException is overloaded, ModelTimeoutException a timeout, access and
signature failures `auth`, ValidationException the client's own.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from typing import Any

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

FINISH_REASONS = {
    "end_turn": STOP, "stop_sequence": STOP, "malformed_model_output": STOP, "malformed_tool_use": STOP,
    "max_tokens": LENGTH, "model_context_window_exceeded": LENGTH,
    "tool_use": TOOL_CALLS,
    "guardrail_intervened": CONTENT_FILTER, "content_filtered": CONTENT_FILTER,
}

# the service's error shapes, by name with its first letter in lower case (as a stream's
# `:exception-type` names them; an HTTP answer's x-amzn-ErrorType capitalises it):
# (failure class, neutral error kind, code)
EXCEPTIONS = {
    "throttlingException": (FailureClass.RATE_LIMIT, "rate_limit", "rate_limit_exceeded"),
    "modelNotReadyException": (FailureClass.RATE_LIMIT, "rate_limit", "model_not_ready"),
    "serviceUnavailableException": (FailureClass.OVERLOADED, "overloaded", "overloaded"),
    "internalServerException": (FailureClass.SERVER, "server", None),
    "modelStreamErrorException": (FailureClass.SERVER, "server", "model_error"),
    "modelErrorException": (FailureClass.SERVER, "server", "model_error"),
    "modelTimeoutException": (FailureClass.TIMEOUT, "timeout", "timeout"),
    "validationException": (FailureClass.CLIENT, "invalid_request", None),
    "accessDeniedException": (FailureClass.AUTH, "permission", None),
    "unrecognizedClientException": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "invalidSignatureException": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "expiredTokenException": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "resourceNotFoundException": (FailureClass.NOT_FOUND, "not_found", "model_not_found"),
}

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
EMPTY_SCHEMA = {"type": "object", "properties": {}}
EMPTY_RESULT = "(empty)"  # the text of a tool result that has none


def client_error(message: str, param: str | None = None) -> UpstreamError:
    """A request Converse cannot be sent: returned to the client as a 400."""
    return neutral_client_error(message, "invalid_request", param)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- requests ----------------------------------------------------------------------------------

@chat_encoder("bedrock")
def encode_chat(chat: Chat, model: str) -> bytes:
    """The chat request as a Converse body (raises a 400 UpstreamError if it cannot be)."""
    if (chat.n or 1) != 1:
        raise client_error("provider type bedrock returns one choice: n must be 1", "n")
    system, messages, tool_blocks = encode_messages(chat.messages)
    out: dict = {"messages": messages}
    if system:
        out["system"] = system
    if config := inference_config(chat):
        out["inferenceConfig"] = config
    if chat.tools and (chat.tool_choice != NONE or tool_blocks):
        tools: dict = {"tools": [encode_tool(tool, i) for i, tool in enumerate(chat.tools)]}
        if chat.tool_choice is not None and chat.tool_choice != NONE:
            tools["toolChoice"] = encode_tool_choice(chat.tool_choice)
        out["toolConfig"] = tools
    return json_body(out)


def inference_config(chat: Chat) -> dict:
    config: dict = {}
    if chat.max_tokens is not None:
        config["maxTokens"] = chat.max_tokens
    if chat.temperature is not None:
        config["temperature"] = chat.temperature
    if chat.top_p is not None:
        config["topP"] = chat.top_p
    if isinstance(chat.stop, Malformed):
        raise client_error("stop must be a string or an array of strings", "stop")
    if chat.stop:
        config["stopSequences"] = list(chat.stop)
    return config


def encode_messages(messages: tuple[Message, ...]) -> tuple[list[dict], list[dict], bool]:
    """The system blocks, the turns (consecutive turns of one role merged: a tool result is the
    user's), and whether any turn holds a tool block."""
    if not messages:
        raise client_error("messages must be a non-empty list", "messages")
    system: list[dict] = []
    out: list[dict] = []
    tool_blocks = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            system.extend({"text": text} for text in texts_of(message.content, where) if text)
            continue
        if role == "user":
            blocks = encode_blocks(message.content, where)
        elif role == "assistant":
            blocks = encode_blocks(message.content, where)
            if message.tool_calls:
                blocks += encode_tool_uses(message.tool_calls, where)
                tool_blocks = True
        elif role == "tool":
            role, blocks, tool_blocks = "user", [tool_result(message, where)], True
        else:
            raise client_error(f"{where}: role {role!r} is not supported by provider type bedrock")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out, tool_blocks


def texts_of(content: str | tuple[Part, ...] | Malformed | None, where: str) -> list[str]:
    """A system message's texts; Converse's system blocks take no other content."""
    if content is None or isinstance(content, str):
        return [content] if content else []
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts")
    return [part.text for part in content if isinstance(part, Text)]


def encode_blocks(content: str | tuple[Part, ...] | Malformed | None, where: str) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts")
    blocks = []
    for part in content:
        if isinstance(part, (Text, Refusal)):
            if part.text:
                blocks.append({"text": part.text})
        elif isinstance(part, Image):
            blocks.append({"image": encode_image(part.url, where)})
        else:
            raise client_error(f"{where}: content part type {part.type!r} is not supported "
                               "by provider type bedrock")
    return blocks


def encode_image(url: str, where: str) -> dict:
    """An image block: a data: URL's bytes (base64, as Converse's JSON carries a blob), or an
    s3:// object; Converse fetches no http(s) URL."""
    if not isinstance(url, str):
        raise client_error(f"{where}: image_url needs a url")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        kind = IMAGE_FORMATS.get(media_type.lower())
        if not sep or kind is None:
            raise client_error(f"{where}: Bedrock reads png, jpeg, gif and webp images, "
                               "as data:<media type>;base64,<data> URLs")
        if encoding != "base64":
            data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
        return {"format": kind, "source": {"bytes": data}}
    if url.startswith("s3://"):
        kind = IMAGE_FORMATS.get("image/" + url.rpartition(".")[2].lower())
        if kind is None:
            raise client_error(f"{where}: an s3:// image must end in .png, .jpeg, .jpg, .gif or .webp")
        return {"format": kind, "source": {"s3Location": {"uri": url}}}
    raise client_error(f"{where}: Bedrock takes images as data: or s3:// URLs")


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
    return {"toolUse": {"toolUseId": call.id, "name": call.name, "input": parsed}}


def tool_result(message: Message, where: str) -> dict:
    if not message.tool_call_id:
        raise client_error(f"{where}: tool messages need a tool_call_id")
    blocks = encode_blocks(message.content, where)
    # Converse requires a result's content, and refuses blank text: an empty result says so
    return {"toolResult": {"toolUseId": message.tool_call_id, "content": blocks or [{"text": EMPTY_RESULT}]}}


def encode_tool(tool: Tool | UnsupportedTool, index: int) -> dict:
    if not isinstance(tool, Tool) or not tool.name:
        raise client_error(f"tools[{index}]: only function tools with a name are supported", "tools")
    spec: dict = {"name": tool.name}
    if tool.description:
        spec["description"] = tool.description
    spec["inputSchema"] = {"json": tool.parameters or EMPTY_SCHEMA}
    return {"toolSpec": spec}


def encode_tool_choice(choice: ToolChoice | Malformed) -> dict:
    if choice == AUTO:
        return {"auto": {}}
    if choice == REQUIRED:
        return {"any": {}}
    if isinstance(choice, ToolChoice) and choice.mode == "tool" and choice.name:
        return {"tool": {"name": choice.name}}
    raise client_error("tool_choice must be auto, required, none or a named function", "tool_choice")


# --- answers -----------------------------------------------------------------------------------

def protocol(message: str) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, message)


def usage_of(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    cached = usage.get("cacheReadInputTokens") or 0
    prompt = (usage.get("inputTokens") or 0) + (usage.get("cacheWriteInputTokens") or 0) + cached
    return Usage(prompt, usage.get("outputTokens") or 0, cached)


def decode_answer(payload: Any, model: str) -> Answer:
    """A Converse answer as a neutral answer from `model` (the name the client asked for)."""
    try:
        content = payload["output"]["message"]["content"]
        texts, reasoning, calls = [], [], []
        for block in content:
            if "text" in block:
                texts.append(block["text"])
            elif "toolUse" in block:
                use = block["toolUse"]
                calls.append(ToolCall(use["toolUseId"], use["name"], orjson.dumps(use.get("input") or {}).decode()))
            elif "reasoningContent" in block:
                reasoning.append(block["reasoningContent"].get("reasoningText", {}).get("text") or "")
        reason = payload.get("stopReason")
    except (KeyError, TypeError, AttributeError):
        raise protocol("upstream answer is not a Converse answer") from None
    return Answer(new_id("chatcmpl-"), model, int(time.time()), "".join(texts) if texts or not calls else None,
                  FINISH_REASONS.get(reason, STOP), usage_of(payload.get("usage")), tuple(calls),
                  "".join(reasoning) or None)


def error_name(name: str) -> str:
    """An error type as EXCEPTIONS names it: `ThrottlingException:http://...` or
    `com.amazon...#ThrottlingException` -> throttlingException."""
    name = name.partition(":")[0].rpartition("#")[2].strip()
    return name[:1].lower() + name[1:]


def decode_error(status: int | None, error_type: str | None, payload: Any,
                 retry_after: float | None = None) -> UpstreamError:
    """A Converse error answer (`error_type`: its x-amzn-ErrorType header) as an UpstreamError."""
    body = payload if isinstance(payload, dict) else {}
    name = error_name(str(error_type or body.get("__type") or body.get("code") or ""))
    message = body.get("message") or body.get("Message")
    message = str(message) if message else (f"upstream answered HTTP {status}" if status else "upstream error")
    if name in EXCEPTIONS:
        failure, kind, code = EXCEPTIONS[name]
    else:
        failure = classify_status(status) if status else FailureClass.PROTOCOL
        kind, code = ("invalid_request" if failure is FailureClass.CLIENT else "upstream"), None
    if name:
        message = f"{name[:1].upper()}{name[1:]}: {message}"
    return UpstreamError(failure, message, status=status, retry_after=retry_after, kind=kind, code=code)


class StreamDecoder(StreamTranslator):
    """ConverseStream messages in (each `(event type, JSON payload)`), neutral events out. Pure.

    The answer's `Start` waits for its first piece (or its end): an exception that comes right
    after messageStart is then still before the client's first byte, and the attempt can be retried."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.done = False
        self.opened = False  # messageStart came
        self.started = False  # the Start went out
        self._tools: dict[int, int] = {}  # content block index -> the answer's tool call index

    def feed(self, event: bytes, data: bytes) -> list[StreamEvent]:
        if self.done:
            return []
        payload = upstream_json(data, "malformed stream event from upstream")
        if not isinstance(payload, dict):
            raise protocol("malformed stream event from upstream")
        kind = event.decode("ascii", "replace")
        try:
            return self._dispatch(kind, payload)
        except (AttributeError, KeyError, TypeError):
            raise protocol(f"malformed {kind} event from upstream") from None

    def _piece(self, text: str = "", reasoning: str = "", calls: tuple[ToolCallDelta, ...] = ()) -> list[StreamEvent]:
        if not self.opened:
            raise protocol("a stream event came before messageStart")
        if self.started:
            return [Delta(text, reasoning, calls)]
        self.started = True
        return [Start(text, reasoning, calls, id=new_id("chatcmpl-"), model=self.model, created=int(time.time()))]

    def _dispatch(self, kind: str, event: dict) -> list[StreamEvent]:
        if kind == "contentBlockDelta":
            delta = event["delta"]
            if "text" in delta:
                return self._piece(delta["text"]) if delta["text"] else []
            if "toolUse" in delta:
                index = self._tools.get(event["contentBlockIndex"])
                if index is None:
                    raise protocol("a tool call's input came before its contentBlockStart")
                piece = delta["toolUse"]["input"]
                return self._piece(calls=(ToolCallDelta(index, piece),)) if piece else []
            if "reasoningContent" in delta:
                text = delta["reasoningContent"].get("text")
                return self._piece(reasoning=text) if text else []
            return []  # a signature, redacted reasoning, a citation: no neutral counterpart
        if kind == "messageStart":
            self.opened = True
            return []
        if kind == "contentBlockStart":
            use = event["start"].get("toolUse")
            if use is None:
                return []
            index = self._tools[event["contentBlockIndex"]] = len(self._tools)
            return self._piece(calls=(ToolCallDelta(index, "", use["toolUseId"], use["name"]),))
        if kind == "messageStop":
            finish = Finish(FINISH_REASONS.get(event["stopReason"], STOP))
            return [finish] if self.started else [*self._piece(), finish]
        if kind == "metadata":
            self.usage = usage_of(event["usage"])
            self.done = True
            return []
        if kind in EXCEPTIONS or kind.endswith("Exception"):
            error = decode_error(None, kind, event)
            if error.failure is FailureClass.CLIENT:
                error.status = 400  # the request's own fault, told as Converse would have answered it
            raise error
        return []  # contentBlockStop, and event types added later
