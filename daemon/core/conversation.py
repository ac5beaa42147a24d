"""The neutral chat request: what a client asks of a chat model, in no wire format's words.

A client format's codec decodes the client's body into a `Chat` once; each provider's
encoder writes that `Chat` in its upstream's format. The vocabulary is what OpenAI chat
completions and Anthropic Messages both express:

    Chat          model, messages, sampling (max_tokens, temperature, top_p, seed, penalties,
                  stop, n), user, tools, tool_choice, parallel_tool_calls, response_format,
                  stream, and `extra`: the client's fields nothing here models, by name
    Message       role, content (text, or a tuple of parts), tool calls, tool_call_id, name
    parts         Text, Refusal, Image, and UnsupportedPart for a kind none of these covers
    ToolCall      id, name, arguments (JSON text)
    Tool          a function the model may call: name, description, parameters (JSON Schema),
                  strict; UnsupportedTool for any other kind of tool
    ToolChoice    auto, required, none, or one named tool
    ResponseFormat  text, json_object, or json_schema with its schema

Decoding reshapes, it does not validate, so that it is one pass that never fails and each
upstream keeps its own refusals, in its own words:

- a scalar of an unexpected type (a number where text belongs, an object for tool-call
  arguments) is carried as it was sent, in the field that names it; the annotations name the
  types a well-formed request gives. An encoder that trips on one raises through its guard
  (`chat_encoder`): the client's 400;
- a structure a decoder cannot reshape (content neither text nor a list of parts, `stop`
  neither text nor a list of texts, a tool call without a function object, ...) is carried as
  `Malformed`; content parts and tools of a kind the vocabulary has no type for are carried as
  `UnsupportedPart` / `UnsupportedTool`. Each encoder refuses these as its upstream would.

Nothing is copied: parts, schemas and extra fields are the client's own (parsed) values.
Every encoder is wrapped in `chat_encoder` and writes its body with `json_body`.
"""

from __future__ import annotations

import functools
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import orjson

from gatewayd.daemon.core.failures import FailureClass, UpstreamError

# The roles a message may have. `developer` is OpenAI's name for system instructions to
# reasoning models: kept apart so that an OpenAI upstream gets it back as it came (other
# encoders read it as `system`). `function` is OpenAI's legacy tool-result role, which Ollama
# still reads. A decoder carries any other role as sent, for each encoder to refuse or pass on.
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Malformed:
    """A value of a shape the decoder could not read as its neutral type (OpenAI or Anthropic
    would refuse it too): each encoder refuses it in its own words. `value` is what was sent,
    for the record."""

    value: Any


# --- content ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """An assistant's refusal to answer, as OpenAI records it in a conversation's history."""

    text: str


@dataclass(frozen=True, slots=True)
class Image:
    # a data: URL or an http(s) URL, exactly as given: each encoder reads what its upstream takes
    url: str
    detail: str | None = None  # OpenAI's low / high / auto; None when not given


@dataclass(frozen=True, slots=True)
class UnsupportedPart:
    """A content part of a kind no neutral part covers (audio, a file, ...)."""

    type: Any  # as the client named it; None for a part that is not an object


Part = Text | Refusal | Image | UnsupportedPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: `arguments` is the JSON text of an object, as the model wrote
    it (it may not parse: the encoder whose upstream needs the object refuses it then)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role | str  # another as sent
    content: str | tuple[Part, ...] | Malformed | None
    tool_calls: tuple[ToolCall | Malformed, ...] | Malformed = ()  # an assistant's
    tool_call_id: str | None = None  # a tool result's: the call it answers
    name: str | None = None  # the author's name; a legacy `function` result's function


# --- tools and what to answer with -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call. None: the client did not say."""

    name: str | None
    description: str | None = None
    parameters: Mapping[str, Any] | None = None  # JSON Schema of the arguments object
    strict: bool | None = None  # whether the arguments must follow the schema exactly


@dataclass(frozen=True, slots=True)
class UnsupportedTool:
    """A tool of a kind other than a function (a provider's built-in tool, OpenAI's custom tools)."""

    type: Any  # as the client named it


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "required", "none", "tool"]
    name: str | None = None  # mode "tool": the one tool to call


AUTO, REQUIRED, NONE = ToolChoice("auto"), ToolChoice("required"), ToolChoice("none")


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: str  # "text", "json_object" or "json_schema"; another as sent
    name: str | None = None  # json_schema: the schema's name, description and strictness
    description: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None


# --- the request -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Chat:
    model: str | None  # as the client named it (an alias): each encoder is given the upstream's own
    messages: tuple[Message, ...]
    _: KW_ONLY
    # The wire format the request came in (a WireFormat): `extra` is in its words. Only an
    # encoder of that same format writes `extra` whole; any other reads the fields it knows by name.
    client_format: str
    stream: bool = False
    max_tokens: int | None = None  # of the answer
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | Malformed = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None  # answers wanted
    user: str | None = None  # an id of the end user, for the provider's abuse monitoring
    tools: tuple[Tool | UnsupportedTool, ...] = ()
    tool_choice: ToolChoice | Malformed | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | Malformed | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # e.g. Ollama's keep_alive, think, options


@dataclass(frozen=True, slots=True)
class Embed:
    """An embeddings request: `input` as the client sent it, a text, or a list of texts or of
    token arrays (each encoder refuses what its upstream cannot embed)."""

    model: str | None
    input: str | list
    dimensions: int | None = None


# --- encoding --------------------------------------------------------------------------------

MAX_NESTING = 254  # levels of arrays and objects orjson writes; it reads up to 1024


def client_error(message: str, code: str, param: str | None = None) -> UpstreamError:
    """A request the upstream cannot be sent: the client's 400, no failure of the deployment."""
    return UpstreamError(FailureClass.CLIENT, message, status=400, code=code, param=param)


def too_deep_to_forward() -> UpstreamError:
    """A body that parsed but cannot be written again for the upstream (nested deeper than
    orjson writes): the client's error, a 400, and no failure of the deployment."""
    return client_error(f"the request body is nested too deeply to forward (at most {MAX_NESTING} levels)",
                        "invalid_body")


def json_body(out: dict) -> bytes:
    """An encoder's body as JSON. Its values came from a JSON parser, so orjson refuses one only
    for its nesting limit (its JSONEncodeError is TypeError): the client's 400, as a body too deep."""
    try:
        return orjson.dumps(out)
    except TypeError:
        raise too_deep_to_forward() from None


Encoder = Callable[[Chat, str], bytes]


def chat_encoder(provider_type: str) -> Callable[[Encoder], Encoder]:
    """Decorate an encoder `(chat, model) -> bytes` that writes its body with `json_body`. Values
    are carried as the client sent them (see above), so an encoder may meet a shape it did not
    expect: that is the client's error, a 400, never a 500 of the gateway."""

    def decorate(encode: Encoder) -> Encoder:
        @functools.wraps(encode)
        def guarded(chat: Chat, model: str) -> bytes:
            try:
                return encode(chat, model)
            except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
                raise client_error(f"the request cannot be translated for provider type {provider_type}: "
                                   f"a field has an unexpected shape ({exc})", "invalid_value") from None
        return guarded

    return decorate
