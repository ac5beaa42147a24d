"""The Gemini API's wire format (generativelanguage.googleapis.com, v1beta), one way: a neutral
`Chat` or `Embed` written as its request, and its answers, SSE stream chunks and embeddings
read back as neutral values. Pure functions; the I/O is adapters/gemini.py's.

Request (`encode_chat`, the body of POST models/{model}:generateContent; the model is in the URL):
  system / developer messages  -> `systemInstruction.parts`: their text parts, one part each
  user / assistant messages    -> `contents` with role user / model; consecutive turns of one
                                  role merged (a tool result is the user's)
  Text / Refusal parts         -> {"text"} (empty text left out: Gemini refuses it)
  Image parts                  -> {"inlineData": {mimeType, data}} from a data: URL (base64, or
                                  percent-encoded, encoded here)
  an assistant's tool calls    -> {"functionCall": {name, args}} parts (arguments parsed into an
                                  object), with the call's `thoughtSignature` when its id carries
                                  one (see below)
  tool / function messages     -> {"functionResponse": {name, response}}: the function of the call
                                  they answer (found by its id), else the message's name; content
                                  that is a JSON object is the response, any other text is
                                  {"output": text}
  tools                        -> one {"functionDeclarations": [...]}, each {name, description,
                                  parametersJsonSchema}: the JSON Schema as the client wrote it
  tool_choice                  -> toolConfig.functionCallingConfig: auto -> AUTO, required -> ANY,
                                  none -> NONE, a named one -> ANY with allowedFunctionNames
  max_tokens, temperature, top_p, stop, seed, presence/frequency_penalty
                               -> generationConfig: maxOutputTokens, temperature, topP,
                                  stopSequences, seed, presencePenalty, frequencyPenalty;
                                  an Anthropic client's extra `top_k` -> topK
  response_format              -> json_object: responseMimeType application/json; json_schema:
                                  that and responseJsonSchema
Left out: user, parallel_tool_calls, tools' `strict`, message names, other extra fields.
Refused with a 400: n other than 1, roles other than these, image URLs other than data: URLs,
content parts other than text and images (tool results take text only), tool calls without a
name or whose arguments are not a JSON object, a tool result whose call is unknown, tools
other than named functions, malformed content, stop, tool_choice and response_format.

Answer (`decode_answer`, `StreamDecoder`): the first candidate's parts: text parts joined
(`thought: true` ones are the reasoning), `functionCall` parts -> tool calls, ids from
Gemini's own `id`, else made here. Gemini signs a call with a `thoughtSignature` that it wants
back with the call in the conversation's history; a client knows only the call's id, so the
signature rides in it (`<id>__thought__<signature, URL-safe base64>`) and is restored from it.
finishReason: STOP -> stop (tool_calls when the answer calls functions), MAX_TOKENS -> length,
SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII and the IMAGE_ ones -> content_filter,
any other -> stop. A prompt Gemini blocked (`promptFeedback.blockReason`, no candidates) is an
empty answer finished by content_filter. usageMetadata: prompt tokens = promptTokenCount (which
counts the cached ones) + toolUsePromptTokenCount; completion tokens = candidatesTokenCount +
thoughtsTokenCount (thinking is billed as output); cached = cachedContentTokenCount.

Streams (`?alt=sse`) are `data: {GenerateContentResponse}` events and no end marker: the
chunk with a finishReason ends the answer (its usageMetadata is the whole request's), and a
stream that ends before one was cut. Function calls come whole, never in pieces. An
`{"error": {...}}` chunk is an in-band error.

Errors (`decode_error`) are google.rpc statuses, `{"error": {"code", "message", "status",
"details"}}`, classified by ERROR_STATUSES (and ERROR_REASONS, an ErrorInfo reason that says
more); a RetryInfo detail's `retryDelay` is the Retry-After when the answer has no header.

Embeddings (`encode_embed`): one text -> models/{model}:embedContent
{"content": {"parts": [{"text"}]}}; a list of texts -> models/{model}:batchEmbedContents
{"requests": [{"model", "content"}, ...]}; `dimensions` -> outputDimensionality. Answers:
`embedding.values`, `embeddings[].values`; the Gemini API reports no token count for them.
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
    Embeddings,
    Finish,
    Start,
    StreamEvent,
    StreamTranslator,
    ToolCallDelta,
    Usage,
)

THOUGHT_MARK = "__thought__"  # between a tool call's id and the signature it carries

FINISH_REASONS = {
    "STOP": STOP, "MAX_TOKENS": LENGTH,
    "SAFETY": CONTENT_FILTER, "RECITATION": CONTENT_FILTER, "BLOCKLIST": CONTENT_FILTER,
    "PROHIBITED_CONTENT": CONTENT_FILTER, "SPII": CONTENT_FILTER, "IMAGE_SAFETY": CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": CONTENT_FILTER, "IMAGE_RECITATION": CONTENT_FILTER,
}
CHOICE_MODES = {AUTO: "AUTO", REQUIRED: "ANY", NONE: "NONE"}


def client_error(message: str, param: str | None = None) -> UpstreamError:
    """A request Gemini cannot be sent: the client's 400."""
    return neutral_client_error(message, "unsupported_value", param)


def protocol(message: str) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, message)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# === requests ===================================================================================

@chat_encoder("gemini")
def encode_chat(chat: Chat, model: str) -> bytes:
    """A neutral chat request as the body of generateContent / streamGenerateContent."""
    if (chat.n or 1) != 1:
        raise client_error("provider type gemini returns one choice: n must be 1", "n")
    system, contents = encode_contents(chat.messages)
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    if chat.tools:
        out["tools"] = [{"functionDeclarations": [declaration(tool, i) for i, tool in enumerate(chat.tools)]}]
        if chat.tool_choice is not None:
            out["toolConfig"] = {"functionCallingConfig": calling_config(chat.tool_choice)}
    if config := generation_config(chat):
        out["generationConfig"] = config
    return json_body(out)


def encode_contents(messages: tuple[Message, ...]) -> tuple[list[dict], list[dict]]:
    """The system instruction's parts, and the turns."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # a tool call's id (less any signature) -> its function's name
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role == "system" or role == "developer":
            system += system_parts(message.content, where)
            continue
        if role == "user":
            turn, parts = "user", encode_parts(message.content, where)
        elif role == "assistant":
            turn = "model"
            parts = encode_parts(message.content, where) + function_calls(message.tool_calls, where, names)
        elif role == "tool" or role == "function":
            turn, parts = "user", [function_response(message, where, names)]
        else:
            raise client_error(f"{where}: role {role!r} is not supported by provider type gemini", "messages")
        if not parts:
            continue
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": turn, "parts": parts})
    if not contents:
        raise client_error("messages must hold at least one user or assistant message with content", "messages")
    return system, contents


def system_parts(content: str | tuple[Part, ...] | Malformed | None, where: str) -> list[dict]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts", "messages")
    return [{"text": part.text} for part in content if isinstance(part, Text) and part.text]


def encode_parts(content: str | tuple[Part, ...] | Malformed | None, where: str) -> list[dict]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts", "messages")
    parts = []
    for part in content:
        if isinstance(part, (Text, Refusal)):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, Image):
            parts.append(inline_image(part.url, where))
        else:
            raise client_error(f"{where}: content part type {part.type!r} is not supported "
                               "by provider type gemini", "messages")
    return parts


def inline_image(url: str, where: str) -> dict:
    """A data: URL as Gemini's inline data; Gemini fetches no URLs of the gateway's clients."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise client_error(f"{where}: provider type gemini takes images only as data: URLs", "messages")
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or not media_type:
        raise client_error(f"{where}: image data URLs must be data:<media type>;base64,<data>", "messages")
    if encoding != "base64":
        data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
    return {"inlineData": {"mimeType": media_type, "data": data}}


def function_calls(calls: tuple[ToolCall | Malformed, ...] | Malformed, where: str,
                   names: dict[str, str]) -> list[dict]:
    if isinstance(calls, Malformed):
        raise client_error(f"{where}: tool_calls must be an array", "messages")
    parts = []
    for call in calls:
        if isinstance(call, Malformed) or not call.name:
            raise client_error(f"{where}: tool calls need a function.name", "messages")
        arguments = call.arguments or "{}"
        try:  # a client may have sent the arguments object itself: it is carried as it came
            args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise client_error(f"{where}: function.arguments is not a JSON object", "messages")
        call_id, signature = split_id(call.id)
        names[call_id] = call.name
        part: dict = {"functionCall": {"name": call.name, "args": args}}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def function_response(message: Message, where: str, names: dict[str, str]) -> dict:
    call_id, _ = split_id(message.tool_call_id)
    name = names.get(call_id) or message.name
    if not name:
        raise client_error(f"{where}: a tool result must answer an earlier tool call (tool_call_id)", "messages")
    content = message.content
    if isinstance(content, Malformed):
        raise client_error(f"{where}: content must be a string or a list of parts", "messages")
    if isinstance(content, tuple):
        if not all(isinstance(part, Text) for part in content):
            raise client_error(f"{where}: provider type gemini takes tool results as text only", "messages")
        content = "".join(part.text for part in content)
    text = content or ""
    try:
        parsed = orjson.loads(text) if text.lstrip()[:1] == "{" else None
    except orjson.JSONDecodeError:
        parsed = None
    return {"functionResponse": {"name": name, "response": parsed if isinstance(parsed, dict) else {"output": text}}}


def split_id(call_id: Any) -> tuple[str, str | None]:
    """A tool call's id as a client has it: the id itself, and the signature it carries."""
    if not isinstance(call_id, str):
        return "", None
    base, mark, signature = call_id.partition(THOUGHT_MARK)
    if not mark or not signature:
        return call_id, None
    return base, signature.replace("-", "+").replace("_", "/") + "=" * (-len(signature) % 4)


def joined_id(call_id: str, signature: Any) -> str:
    if not isinstance(signature, str) or not signature:
        return call_id
    return call_id + THOUGHT_MARK + signature.replace("+", "-").replace("/", "_").rstrip("=")


def declaration(tool: Tool | UnsupportedTool, index: int) -> dict:
    if not isinstance(tool, Tool) or not tool.name:
        raise client_error(f"tools[{index}]: only function tools with a name are supported", "tools")
    out: dict = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    if tool.parameters:
        out["parametersJsonSchema"] = tool.parameters
    return out


def calling_config(choice: ToolChoice | Malformed) -> dict:
    if isinstance(choice, ToolChoice):
        if choice.mode == "tool" and choice.name:
            return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
        if choice in CHOICE_MODES:
            return {"mode": CHOICE_MODES[choice]}
    raise client_error("tool_choice must be auto, required, none or a named function", "tool_choice")


def generation_config(chat: Chat) -> dict:
    config: dict = {}
    if chat.max_tokens is not None:
        config["maxOutputTokens"] = chat.max_tokens
    if chat.temperature is not None:
        config["temperature"] = chat.temperature
    if chat.top_p is not None:
        config["topP"] = chat.top_p
    if isinstance(chat.extra.get("top_k"), int):
        config["topK"] = chat.extra["top_k"]
    if isinstance(chat.stop, Malformed):
        raise client_error("stop must be a string or an array of strings", "stop")
    if chat.stop:
        config["stopSequences"] = list(chat.stop)
    if chat.seed is not None:
        config["seed"] = chat.seed
    if chat.presence_penalty is not None:
        config["presencePenalty"] = chat.presence_penalty
    if chat.frequency_penalty is not None:
        config["frequencyPenalty"] = chat.frequency_penalty
    if chat.response_format is not None:
        response_format(chat.response_format, config)
    return config


def response_format(fmt: ResponseFormat | Malformed, config: dict) -> None:
    kind = fmt.type if isinstance(fmt, ResponseFormat) else None
    if kind == "json_object" or kind == "json_schema":
        config["responseMimeType"] = "application/json"
        if kind == "json_schema" and fmt.schema:
            config["responseJsonSchema"] = fmt.schema
    elif kind != "text":
        raise client_error("response_format must be text, json_object or json_schema", "response_format")


# === answers ====================================================================================

def read_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    prompt = count(usage, "promptTokenCount") + count(usage, "toolUsePromptTokenCount")
    output = count(usage, "candidatesTokenCount") + count(usage, "thoughtsTokenCount")
    return Usage(prompt, output, count(usage, "cachedContentTokenCount"))


def count(usage: dict, key: str) -> int:
    value = usage.get(key)
    return value if type(value) is int else 0  # absent when zero, as protobuf's JSON leaves defaults out


def read_parts(parts: list) -> tuple[str, str, list[tuple[str, str, str]]]:
    """A candidate's parts: its text, its thoughts, and its calls as (id, name, JSON arguments)."""
    texts, thoughts, calls = [], [], []
    for part in parts:
        if "text" in part:
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif "functionCall" in part:
            call = part["functionCall"]
            calls.append((joined_id(call.get("id") or new_id("call_"), part.get("thoughtSignature")),
                          call["name"], orjson.dumps(call.get("args") or {}).decode()))
    return "".join(texts), "".join(thoughts), calls


def finish_of(reason: Any, called: bool) -> str:
    finish = FINISH_REASONS.get(reason, STOP)
    return TOOL_CALLS if called and finish == STOP else finish


def blocked(payload: dict) -> bool:
    """Whether Gemini refused the prompt itself: then no candidate comes."""
    feedback = payload.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def decode_answer(payload: Any, model: str, created: int | None = None) -> Answer:
    """A generateContent answer as a neutral answer."""
    if not isinstance(payload, dict):
        raise protocol("upstream answer is not a JSON object")
    created = int(time.time()) if created is None else created
    answer_id = payload.get("responseId") or new_id("chatcmpl-")
    model = payload.get("modelVersion") or model
    usage = read_usage(payload.get("usageMetadata"))
    candidates = payload.get("candidates")
    if not candidates:
        if blocked(payload):
            return Answer(answer_id, model, created, "", CONTENT_FILTER, usage)
        raise protocol("upstream answer has no candidates")
    try:
        candidate = candidates[0]
        text, thoughts, calls = read_parts((candidate.get("content") or {}).get("parts") or [])
    except (AttributeError, KeyError, TypeError):
        raise protocol("upstream answer's candidate is malformed") from None
    return Answer(answer_id, model, created, text if text or not calls else None,
                  finish_of(candidate.get("finishReason"), bool(calls)), usage,
                  tuple(ToolCall(*call) for call in calls), thoughts or None)


class StreamDecoder(StreamTranslator):
    """streamGenerateContent's SSE chunks in, neutral stream events out. Pure: no I/O."""

    def __init__(self, model: str, created: int | None = None) -> None:
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.started = self.done = False
        self.calls = 0  # tool calls so far: the next one's index
        self.usage: Usage | None = None

    def feed(self, _event: bytes, data: bytes) -> list[StreamEvent]:
        if self.done:
            return []
        payload = upstream_json(data, "malformed stream event from upstream")
        if not isinstance(payload, dict):
            raise protocol("malformed stream event from upstream")
        if "error" in payload:
            raise in_band_error(payload)
        try:
            return self.read(payload)
        except (AttributeError, KeyError, TypeError):
            raise protocol("malformed stream event from upstream") from None

    def read(self, payload: dict) -> list[StreamEvent]:
        if "usageMetadata" in payload:
            self.usage = read_usage(payload["usageMetadata"])
        candidates = payload.get("candidates")
        candidate = candidates[0] if candidates else None
        text = thoughts = ""
        calls: tuple[ToolCallDelta, ...] = ()
        if candidate is not None:
            text, thoughts, read = read_parts((candidate.get("content") or {}).get("parts") or [])
            if read:
                calls = tuple(ToolCallDelta(self.calls + i, arguments, call_id, name)
                              for i, (call_id, name, arguments) in enumerate(read))
                self.calls += len(read)
        events: list[StreamEvent] = []
        if not self.started:
            self.started = True
            events.append(Start(text, thoughts, calls, id=payload.get("responseId") or new_id("chatcmpl-"),
                                model=payload.get("modelVersion") or self.model, created=self.created))
        elif text or thoughts or calls:
            events.append(Delta(text, thoughts, calls))
        reason = candidate.get("finishReason") if candidate is not None else None
        if reason or (candidate is None and blocked(payload)):
            self.done = True
            events.append(Finish(finish_of(reason, self.calls > 0) if reason else CONTENT_FILTER))
        return events


def in_band_error(payload: dict) -> UpstreamError:
    """An error chunk inside a stream: retryable as its status says (before the first byte went
    out), anything else the upstream's protocol failure."""
    error = decode_error(None, payload)
    if error.failure not in (FailureClass.OVERLOADED, FailureClass.SERVER, FailureClass.RATE_LIMIT):
        error.failure = FailureClass.PROTOCOL
    return error


# === embeddings =================================================================================

def model_path(model: str) -> str:
    """The resource name of a model: `models/NAME` (a name given whole, `tunedModels/...`, as is)."""
    return model if "/" in model else "models/" + model


def encode_embed(embed: Embed, model: str) -> tuple[str, bytes]:
    """The method (embedContent or batchEmbedContents) and the body of an embeddings request."""
    text = embed.input
    dimensions = {} if embed.dimensions is None else {"outputDimensionality": embed.dimensions}
    if isinstance(text, str):
        return "embedContent", orjson.dumps({"content": {"parts": [{"text": text}]}, **dimensions})
    if isinstance(text, list) and text and all(isinstance(item, str) for item in text):
        name = model_path(model)
        return "batchEmbedContents", orjson.dumps({"requests": [
            {"model": name, "content": {"parts": [{"text": item}]}, **dimensions} for item in text]})
    raise client_error("provider type gemini embeds text only: input must be a string or a list of strings",
                       "input")


def decode_embeddings(payload: Any, model: str) -> Embeddings:
    try:
        if "embedding" in payload:
            vectors = [payload["embedding"]["values"]]
        else:
            vectors = [item["values"] for item in payload["embeddings"]]
    except (KeyError, TypeError):
        raise protocol("upstream answer has no embeddings") from None
    if not all(isinstance(vector, list) for vector in vectors):
        raise protocol("upstream answer has no embeddings")
    return Embeddings(model, vectors, Usage())


# === errors =====================================================================================

# google.rpc status -> (failure class, neutral error kind, error code)
ERROR_STATUSES = {
    "INVALID_ARGUMENT": (FailureClass.CLIENT, "invalid_request", None),
    "OUT_OF_RANGE": (FailureClass.CLIENT, "invalid_request", None),
    # the deployment cannot serve anyone: a region without access, a free tier needing billing
    "FAILED_PRECONDITION": (FailureClass.AUTH, "permission", "failed_precondition"),
    "UNAUTHENTICATED": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "PERMISSION_DENIED": (FailureClass.AUTH, "permission", None),
    "NOT_FOUND": (FailureClass.NOT_FOUND, "not_found", "model_not_found"),
    "RESOURCE_EXHAUSTED": (FailureClass.RATE_LIMIT, "rate_limit", "rate_limit_exceeded"),
    "INTERNAL": (FailureClass.SERVER, "server", None),
    "UNAVAILABLE": (FailureClass.OVERLOADED, "overloaded", "overloaded"),
    "DEADLINE_EXCEEDED": (FailureClass.SERVER, "server", "timeout"),
}
# an ErrorInfo reason that says more than the status: a wrong key is INVALID_ARGUMENT (400),
# yet the deployment's fault, not the client's
ERROR_REASONS = {
    "API_KEY_INVALID": (FailureClass.AUTH, "authentication", "invalid_api_key"),
    "API_KEY_SERVICE_BLOCKED": (FailureClass.AUTH, "permission", None),
}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def retry_delay(details: list) -> float | None:
    """RetryInfo's `retryDelay` (a protobuf Duration: "30s", "47.43s") in seconds."""
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None


def reason_of(details: list) -> Any:
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == ERROR_INFO:
            return detail.get("reason")
    return None


def decode_error(status: int | None, payload: Any, retry_after: float | None = None) -> UpstreamError:
    """A Gemini error body, `{"error": {"code", "message", "status", "details"}}` (or anything
    else that came with an error status), as an UpstreamError: a client is told of it in its own
    format from the neutral kind, code and message."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    details = error.get("details") if isinstance(error.get("details"), list) else []
    rpc_status = error.get("status")
    known = ERROR_REASONS.get(reason_of(details)) or ERROR_STATUSES.get(rpc_status)
    if known is not None:
        failure, kind, code = known
    else:
        code_number = error.get("code")
        status_code = status or (code_number if isinstance(code_number, int) else None)
        failure = classify_status(status_code) if status_code else FailureClass.PROTOCOL
        kind, code = ("invalid_request" if failure is FailureClass.CLIENT else "upstream"), None
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"upstream answered HTTP {status}" if status else "upstream error"
    if retry_after is None:
        retry_after = retry_delay(details)
    return UpstreamError(failure, message, status=status, retry_after=retry_after, kind=kind, code=code)
