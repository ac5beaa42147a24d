"""Anthropic Messages requests: a neutral `Chat` written as the body of POST /v1/messages.

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
"""

from __future__ import annotations

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
from gatewayd.daemon.core.failures import UpstreamError

DEFAULT_MAX_TOKENS = 4096


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
