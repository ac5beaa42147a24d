"""Ollama /api/chat requests: a neutral `Chat` written as the body of POST /api/chat.

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
"""

from __future__ import annotations

import base64
import urllib.parse

import orjson

from gatewayd.daemon.core.conversation import (
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
    chat_encoder,
    json_body,
)
from gatewayd.daemon.core.conversation import client_error as neutral_client_error
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.formats.openai_request import function_of


def client_error(message: str, param: str | None = None) -> UpstreamError:
    return neutral_client_error(message, "unsupported_value", param)


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
