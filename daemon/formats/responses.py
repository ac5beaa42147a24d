"""OpenAI's Responses API, the wire format of POST /v1/responses, as a client's format: its
request read as a neutral `Chat`, and neutral answers, stream events and errors written in it.
An `openai` / `azure-openai` deployment is sent the client's body itself; this codec serves every
other deployment, for the stateless part of the API.

Request (`decode_chat`), one pass that never raises, nothing copied:
  instructions                  -> a first `system` message ("" none; not a string: Malformed content)
  input: a string               -> one user message
  input: items, in order        (an item without `type` but with a `role` is a message)
    message {role, content}     -> Message(role, content): a string as it is; parts input_text /
                                   output_text -> Text, refusal -> Refusal, input_image with an
                                   image_url -> Image(url, detail), by file_id -> UnsupportedPart
                                   ("input_image with a file_id"), any other (input_file, audio)
                                   -> UnsupportedPart; parts of a role other than user that are all
                                   text -> one string (many OpenAI-compatible servers take a list
                                   of parts only from a user)
    function_call               -> ToolCall(call_id, name, arguments) of an assistant message:
                                   consecutive calls are one message, and join the assistant
                                   message right before them (chat completions writes a turn's
                                   text and calls as one message; some servers want them so)
    function_call_output        -> Message("tool", output, tool_call_id=call_id): a string as it
                                   is, parts as for messages (all text -> one string)
    reasoning                   -> dropped: only OpenAI reads them back (its encrypted content),
                                   and an OpenAI deployment gets the client's body itself
    another type                -> a message of one UnsupportedPart named by the type (assistant
                                   for `*_call` items, user otherwise), for the encoder to refuse
    not an object, or no type and no role -> Message(None, Malformed(item))
  input neither text nor a list -> Message(None, Malformed(input))
  tools                         -> function tools (flat: name, description, parameters, strict)
                                   -> Tool; any other type (web_search, file_search, mcp, custom,
                                   ...) -> UnsupportedTool(type). `strict` as sent: None when
                                   absent (OpenAI's default, true, is OpenAI's to apply)
  tool_choice                   -> auto / required / none / {type: function, name}; any other
                                   (allowed_tools, hosted tools) -> Malformed
  text.format                   -> ResponseFormat: text, json_object, or json_schema with its
                                   name, description, schema, strict (flat in the format object);
                                   `text` goes to `extra` too (verbosity has no neutral field)
  max_output_tokens -> max_tokens;  safety_identifier, else user -> user
  temperature, top_p, parallel_tool_calls, stream  -> as they are
  any other field               -> `extra`, by name (reasoning, include, store, metadata, ...)

Refused where a deployment keeps no state (`stateful_fields`, for the HTTP layer's 400
`unsupported_parameter`): previous_response_id, conversation, prompt (a stored prompt template),
background: true, and `item_reference` input items ("input[i]"). `store` is not refused: OpenAI
stores a response unless told `store: false`, and most clients say nothing, so a create is
served whatever `store` says; nothing is kept (the response says `store: false`), and what
would read it back later (previous_response_id, GET /v1/responses/{id}) is refused then.

Answer (`encode_answer`): a Response object
  {"id", "object": "response", "created_at", "status", "error": null, "incomplete_details",
   "model", "output", the request's settings echoed, "usage"}
  id            the upstream's, prefixed resp_ unless it is one already (a fresh one if none)
  output        a reasoning item (content [{reasoning_text}], summary []) if the answer has
                reasoning, a message item (one output_text part, annotations [] and logprobs [])
                if it has text or no tool calls, a function_call item per call. Item ids are
                rs_ / msg_ / fc_, the response id after its resp_, _<output index>
                (msg_chatcmpl-1_0); a call without an id gets call_..._<output index> the same
                way (clients match a call's output by it).
  status        finish length -> incomplete, reason max_output_tokens; content_filter ->
                incomplete, reason content_filter (the last item's status is incomplete too);
                any other -> completed
  settings      instructions, max_output_tokens, max_tool_calls, temperature, top_p, tools,
                tool_choice ("auto"), parallel_tool_calls (true), text ({format: text}), reasoning,
                truncation ("disabled"), metadata ({}), user, safety_identifier, prompt_cache_key
                as the client sent them (OpenAI's default when not; all defaults when one is
                nested deeper than orjson writes); background false, previous_response_id null,
                store false
  usage         input_tokens = prompt_tokens (both count cached tokens), input_tokens_details
                {cached_tokens, cache_write_tokens 0}, output_tokens, output_tokens_details
                {reasoning_tokens 0}, total_tokens; null in a stream whose usage never came

Stream (`StreamEncoder`), SSE `event: <type>` / `data: {..., "sequence_number"}` pairs, numbered
from 0, as OpenAI writes them:
  response.created, response.in_progress    (status in_progress, output [], usage null)
  per item, one open at a time, in the order the answer gives them (within one event:
  reasoning, then text, then tool calls):
    message     output_item.added, content_part.added (output_text ""), output_text.delta ...,
                then output_text.done, content_part.done, output_item.done
    reasoning   the same with reasoning_text parts and reasoning_text.delta / .done events
    function_call  output_item.added (arguments ""), function_call_arguments.delta ..., then
                function_call_arguments.done, output_item.done
  An item is done when the next one starts, or at the Finish (incomplete there when the
  answer is). A piece of a call whose item is done (calls interleaved, which no upstream
  decoder gives) is still written as a delta of its output index, and is in the final response.
  `end(usage)`  response.completed, or response.incomplete (length, content_filter: as OpenAI
                ends a response cut short), with the whole response and the usage
Errors: `error_body` is formats/openai's (`{"error": {"message", "type", "code", "param"}}`);
`upstream_error_body` is a Responses upstream's own body as it came, anyone else's written so;
a failed stream (`StreamEncoder.fail`, or `stream_error`) ends as OpenAI ends one: an `error`
event (code, message and param flat, as OpenAI's API reference documents it, and nested in
`error`, as its live API sends it) then `response.failed` (status failed, error {code,
message}: rate_limit_exceeded or server_error, the codes the SDK knows; the output so far, the
open item incomplete and not done), and no response.completed. Given the stream's encoder,
they go on from its response and numbering; without it, they name a response of their own,
numbered from 0.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
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
)
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import CONTENT_FILTER, LENGTH, Answer, Finish, Start, StreamEvent, Usage
from gatewayd.daemon.formats.openai import error_body

FORMAT = WireFormat.RESPONSES

# The body's fields that `Chat` models; every other goes to `extra` (`text` goes there too).
MODELLED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "stream", "user", "safety_identifier",
})
CHOICES = {"auto": AUTO, "required": REQUIRED, "none": NONE}
# fields whose value names state kept at OpenAI (set: refused), and a flag that asks to keep it
STATEFUL = ("previous_response_id", "conversation", "prompt")


# --- requests ----------------------------------------------------------------------------------

def decode_chat(body: dict) -> Chat:
    """The client's Responses body (parsed) as a neutral `Chat`. Never raises: what cannot be
    read is carried as `Malformed` / `UnsupportedPart` / `UnsupportedTool`, for the encoder to refuse."""
    instructions = body.get("instructions")
    messages: list[Message] = []
    if instructions is not None and instructions != "":
        messages.append(Message("system", instructions if isinstance(instructions, str) else Malformed(instructions)))
    decode_input(body.get("input"), messages)
    user = body.get("safety_identifier")
    extra = {key: value for key, value in body.items() if key not in MODELLED}
    return Chat(
        body.get("model"),
        tuple(messages),
        client_format=FORMAT,
        stream=bool(body.get("stream")),
        max_tokens=body.get("max_output_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        user=body.get("user") if user is None else user,
        tools=decode_tools(body.get("tools")),
        tool_choice=decode_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=body.get("parallel_tool_calls"),
        response_format=decode_text_format(body.get("text")),
        extra=MappingProxyType(extra) if extra else EMPTY,
    )


def decode_input(value: Any, out: list[Message]) -> list[Message]:
    """`input` as neutral messages, appended to `out`."""
    if value is None:
        return out
    if isinstance(value, str):
        out.append(Message("user", value))
        return out
    if not isinstance(value, list):
        out.append(Message(None, Malformed(value)))
        return out
    calls: list[ToolCall] | None = None  # the tool calls of out[-1], an assistant turn still taking more
    joinable = False  # out[-1] is an assistant message item's: calls right after it are its own
    for item in value:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call":
            if calls is None:
                calls = []
                if not joinable:
                    out.append(Message("assistant", None))
            calls.append(ToolCall(item.get("call_id"), item.get("name"), item.get("arguments", "")))
            continue
        if kind == "reasoning":
            continue
        if calls is not None:
            out[-1] = replace(out[-1], tool_calls=tuple(calls))
            calls = None
        joinable = False
        if kind == "message" or (kind is None and isinstance(item, dict) and "role" in item):
            role = item.get("role")
            out.append(Message(role, decode_content(item.get("content"), role)))
            joinable = role == "assistant"
        elif kind == "function_call_output":
            out.append(Message("tool", decode_output(item.get("output")), tool_call_id=item.get("call_id")))
        elif isinstance(kind, str):
            role = "assistant" if kind.endswith("_call") else "user"
            out.append(Message(role, (UnsupportedPart(kind),)))
        else:
            out.append(Message(None, Malformed(item)))
    if calls is not None:
        out[-1] = replace(out[-1], tool_calls=tuple(calls))
    return out


def decode_content(content: Any, role: Any) -> str | tuple[Part, ...] | Malformed | None:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        return Malformed(content)
    parts = tuple(map(decode_part, content))
    return parts if role == "user" else joined(parts)


def decode_output(output: Any) -> str | tuple[Part, ...] | Malformed | None:
    """A function call's output: text, or a list of input parts."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, list):
        return joined(tuple(map(decode_part, output)))
    return Malformed(output)


def decode_part(part: Any) -> Part:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "input_text" or kind == "output_text":
        return Text(part.get("text") or "")
    if kind == "refusal":
        return Refusal(part.get("refusal") or "")
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, str):
            return Image(url, part.get("detail"))
        # a file uploaded to OpenAI: no other deployment can read it
        return UnsupportedPart("input_image with a file_id" if part.get("file_id") is not None
                               else "input_image without an image_url")
    return UnsupportedPart(kind)


def joined(parts: tuple[Part, ...]) -> str | tuple[Part, ...]:
    """Parts that are all text as one string."""
    if all(type(part) is Text and isinstance(part.text, str) for part in parts):
        return "".join(part.text for part in parts)
    return parts


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
    if kind != "function":
        return UnsupportedTool(kind)
    return Tool(tool.get("name"), tool.get("description"), tool.get("parameters"), tool.get("strict"))


def decode_tool_choice(choice: Any) -> ToolChoice | Malformed | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return CHOICES.get(choice) or Malformed(choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return ToolChoice("tool", choice["name"])
    return Malformed(choice)


def decode_text_format(text: Any) -> ResponseFormat | Malformed | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        return Malformed(text)
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        return Malformed(form)
    kind = form.get("type")
    if kind != "json_schema":
        return ResponseFormat(kind)
    return ResponseFormat(kind, form.get("name"), form.get("description"), form.get("schema"), form.get("strict"))


def stateful_fields(body: dict) -> str | None:
    """The first field of `body` that needs state kept at OpenAI (the module's docstring says
    which), by name, for a 400 `unsupported_parameter` from a deployment that keeps none; an
    item reference in `input` is named `input[i]`. None when the request is stateless."""
    for name in STATEFUL:
        if body.get(name) is not None:
            return name
    if body.get("background") is True:
        return "background"
    items = body.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") == "item_reference":
                return f"input[{i}]"
    return None


# --- answers ----------------------------------------------------------------------------------

INCOMPLETE = {LENGTH: "max_output_tokens", CONTENT_FILTER: "content_filter"}  # finish -> why incomplete


def response_id(upstream_id: str) -> str:
    """Responses' ids read resp_...: another upstream's id, prefixed, still names its answer."""
    if not upstream_id:
        return "resp_" + uuid.uuid4().hex
    return upstream_id if upstream_id.startswith("resp_") else "resp_" + upstream_id


def status_of(finish: str | None) -> tuple[str, dict | None]:
    reason = INCOMPLETE.get(finish)
    return ("completed", None) if reason is None else ("incomplete", {"reason": reason})


def settings_of(body: dict) -> dict:
    """The request's settings as a Response echoes them (OpenAI's defaults for what was not sent)."""
    parallel, reasoning, text = body.get("parallel_tool_calls"), body.get("reasoning"), body.get("text")
    choice, tools, truncation, metadata = (body.get("tool_choice"), body.get("tools"), body.get("truncation"),
                                           body.get("metadata"))
    return {
        "background": False,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "store": False,  # nothing is kept: there is no response to retrieve
        "temperature": body.get("temperature"),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": "auto" if choice is None else choice,
        "tools": tools if isinstance(tools, list) else [],
        "top_p": body.get("top_p"),
        "truncation": "disabled" if truncation is None else truncation,
        "user": body.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


# what is echoed instead of settings nested deeper than orjson writes (a client's, which the
# upstream never saw: metadata, reasoning, ...): OpenAI's defaults, never a 500 for them
DEFAULT_SETTINGS = settings_of({})


def usage_of(counted: Usage | None) -> dict | None:
    if counted is None:
        return None
    return {"input_tokens": counted.prompt_tokens,
            "input_tokens_details": {"cached_tokens": counted.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": counted.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counted.prompt_tokens + counted.completion_tokens}


def response_of(id_: str, created: int, model: str, status: str, output: list, settings: dict,
                usage: dict | None, incomplete: dict | None = None, error: dict | None = None) -> dict:
    return {"id": id_, "object": "response", "created_at": created, "status": status, "error": error,
            "incomplete_details": incomplete, "model": model, "output": output, **settings, "usage": usage}


def output_text(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(id_: str, status: str, text: str | None = None) -> dict:
    return {"id": id_, "type": "message", "status": status, "content": [] if text is None else [output_text(text)],
            "role": "assistant"}


def reasoning_item(id_: str, status: str, text: str | None = None) -> dict:
    return {"id": id_, "type": "reasoning", "summary": [],
            "content": [] if text is None else [{"type": "reasoning_text", "text": text}], "status": status}


def call_item(id_: str, status: str, call_id: str, name: str, arguments: str) -> dict:
    return {"id": id_, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def model_of(body: dict) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else ""


def encode_answer(answer: Answer, body: dict) -> bytes:
    """A neutral answer as the Response object for the client's `body` (whose settings it echoes)."""
    id_ = response_id(answer.id)
    suffix = id_[5:]
    status, incomplete = status_of(answer.finish)
    output: list[dict] = []
    if answer.reasoning:
        output.append(reasoning_item(f"rs_{suffix}_0", "completed", answer.reasoning))
    if answer.text or not answer.tool_calls:
        output.append(message_item(f"msg_{suffix}_{len(output)}", "completed", answer.text or ""))
    for call in answer.tool_calls:
        n = len(output)
        output.append(call_item(f"fc_{suffix}_{n}", "completed", call.id or f"call_{suffix}_{n}", call.name,
                                call.arguments))
    if incomplete is not None:
        output[-1]["status"] = "incomplete"  # the item the answer was cut in
    response = response_of(id_, answer.created, answer.model or model_of(body), status, output, settings_of(body),
                           usage_of(answer.usage), incomplete)
    try:
        return orjson.dumps(response)
    except TypeError:  # see DEFAULT_SETTINGS
        response.update(DEFAULT_SETTINGS)
        return orjson.dumps(response)


# --- streams ----------------------------------------------------------------------------------

class StreamEncoder:
    """Neutral stream events in, Responses SSE events out, for one client's stream (the
    module's docstring says in what order)."""

    __slots__ = ("settings", "model", "seq", "started", "id", "suffix", "created", "output", "open", "pieces",
                 "calls", "reason")

    def __init__(self, body: dict) -> None:
        self.settings = settings_of(body)
        self.model = model_of(body)  # for a stream that never says its own
        self.seq = 0
        self.started = False
        self.id = self.suffix = ""
        self.created = 0
        self.output: list[dict] = []  # every item started, at its output index
        self.open: str | int | None = None  # the open item: "reasoning", "text", or a tool call's index
        self.pieces: list[str] = []  # the open item's text or arguments so far
        self.calls: dict[int, int] = {}  # a tool call's index -> its item's output index
        self.reason: str | None = None  # the Finish's, which `end` says

    def encode(self, event: StreamEvent) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.start(out, event)
        if isinstance(event, Finish):
            self.reason = event.reason
            self.close(out, status_of(event.reason)[0])
            return b"".join(out)
        if event.reasoning:
            index = self.into(out, "reasoning")
            self.pieces.append(event.reasoning)
            self.emit(out, "response.reasoning_text.delta", item_id=self.output[index]["id"], output_index=index,
                      content_index=0, delta=event.reasoning)
        if event.text:
            index = self.into(out, "text")
            self.pieces.append(event.text)
            self.emit(out, "response.output_text.delta", item_id=self.output[index]["id"], output_index=index,
                      content_index=0, delta=event.text, logprobs=[])
        for piece in event.tool_calls:
            index = self.calls.get(piece.index)
            if index is None:
                self.close(out, "completed")
                index = self.calls[piece.index] = len(self.output)
                item = call_item(f"fc_{self.suffix}_{index}", "in_progress",
                                 piece.id or f"call_{self.suffix}_{index}", piece.name or "", "")
                self.output.append(item)
                self.emit(out, "response.output_item.added", output_index=index, item=item)
                self.open, self.pieces = piece.index, []
            if piece.arguments:
                if self.open == piece.index:
                    self.pieces.append(piece.arguments)
                else:  # its item is done already: the final response still has all of it
                    self.output[index]["arguments"] += piece.arguments
                self.emit(out, "response.function_call_arguments.delta", item_id=self.output[index]["id"],
                          output_index=index, delta=piece.arguments)
        return b"".join(out)

    def end(self, counted: Usage | None) -> bytes:
        """The stream's last events: the open item done, then response.completed (or
        response.incomplete) with the whole response and the usage."""
        out: list[bytes] = []
        if not self.started:
            self.start(out, None)
        status, incomplete = status_of(self.reason)
        self.close(out, status)
        response = response_of(self.id, self.created, self.model, status, self.output, self.settings,
                               usage_of(counted), incomplete)
        self.emit(out, f"response.{status}", response=response)
        return b"".join(out)

    def fail(self, error: UpstreamError) -> bytes:
        """The events that end a stream the upstream failed after its first byte: `error`, then
        response.failed with what came (the open item incomplete, not done). No
        response.completed follows: the client must not take it for a complete answer."""
        out: list[bytes] = []
        if not self.id:  # no event was written: the failure still names a response
            self.begin(None)
        self.settle("incomplete")
        code, kind = (("rate_limit_exceeded", "rate_limit_error") if error.failure is FailureClass.RATE_LIMIT
                      else ("server_error", "server_error"))
        message = "the upstream stream failed: " + error.message
        self.emit(out, "error", code=code, message=message, param=None,
                  error={"type": kind, "code": code, "message": message, "param": None})
        self.emit(out, "response.failed", response=response_of(
            self.id, self.created, self.model, "failed", self.output, self.settings, None,
            error={"code": code, "message": message}))
        return b"".join(out)

    # --- the pieces ---

    def emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        try:
            payload = orjson.dumps(data)
        except TypeError:  # see DEFAULT_SETTINGS: only a response holds the client's values
            self.settings = DEFAULT_SETTINGS
            fields["response"].update(DEFAULT_SETTINGS)
            payload = orjson.dumps(data)
        out.append(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

    def begin(self, event: StreamEvent | None) -> None:
        if isinstance(event, Start):
            self.id, self.created, self.model = response_id(event.id), event.created, event.model or self.model
        else:
            self.id, self.created = response_id(""), int(time.time())
        self.suffix = self.id[5:]

    def start(self, out: list[bytes], event: StreamEvent | None) -> None:
        self.started = True
        self.begin(event)
        response = response_of(self.id, self.created, self.model, "in_progress", [], self.settings, None)
        self.emit(out, "response.created", response=response)
        self.emit(out, "response.in_progress", response=response)

    def into(self, out: list[bytes], kind: str) -> int:
        """Make an item of `kind` ("reasoning" or "text") the open one, unless it is already;
        its output index."""
        if self.open == kind:
            return len(self.output) - 1
        self.close(out, "completed")
        index = len(self.output)
        if kind == "text":
            item, part = message_item(f"msg_{self.suffix}_{index}", "in_progress"), output_text("")
        else:
            item, part = reasoning_item(f"rs_{self.suffix}_{index}", "in_progress"), {"type": "reasoning_text",
                                                                                       "text": ""}
        self.output.append(item)
        self.emit(out, "response.output_item.added", output_index=index, item=item)
        self.emit(out, "response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                  part=part)
        self.open, self.pieces = kind, []
        return index

    def settle(self, status: str) -> tuple[int, dict, str] | None:
        """Give the open item what came of it and `status`, and close it: its output index, the
        item and its text (or arguments); None when no item is open."""
        kind = self.open
        if kind is None:
            return None
        text = "".join(self.pieces)
        self.open, self.pieces = None, []
        if type(kind) is int:
            index = self.calls[kind]
            item = self.output[index]
            item["arguments"] = text
        else:
            index = len(self.output) - 1  # a text or reasoning item is open only while it is the last
            item = self.output[index]
            item["content"] = [output_text(text) if kind == "text" else {"type": "reasoning_text", "text": text}]
        item["status"] = status
        return index, item, text

    def close(self, out: list[bytes], status: str) -> None:
        """The open item's done events."""
        settled = self.settle(status)
        if settled is None:
            return
        index, item, text = settled
        item_id = item["id"]
        if item["type"] == "function_call":
            self.emit(out, "response.function_call_arguments.done", item_id=item_id, output_index=index,
                      arguments=text)
        else:
            part = item["content"][0]
            if item["type"] == "message":
                self.emit(out, "response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                          text=text, logprobs=[])
            else:
                self.emit(out, "response.reasoning_text.done", item_id=item_id, output_index=index,
                          content_index=0, text=text)
            self.emit(out, "response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                      part=part)
        self.emit(out, "response.output_item.done", output_index=index, item=item)


# --- errors -----------------------------------------------------------------------------------

def upstream_error_body(error: UpstreamError) -> bytes:
    """What a client is told of an upstream's refusal of its request: an OpenAI upstream's own
    error answer as it came (its two APIs share the shape), anyone else's in that shape."""
    if error.body is not None and error.body_format in (FORMAT, WireFormat.OPENAI):
        return error.body
    return error_body(error.message, error.kind, error.code, error.param)


def stream_error(error: UpstreamError, encoder: StreamEncoder | None = None) -> bytes:
    """The events that end a stream the upstream failed after its first byte: `encoder.fail`,
    so that they go on from the stream's own response and numbering. Without the encoder (a
    stream relayed as the upstream sent it) they name a response of their own, numbered from 0."""
    return (encoder or StreamEncoder({})).fail(error)
