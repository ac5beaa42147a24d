"""OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, LM Studio, Groq,
Together, OpenRouter, Mistral, DeepSeek).

Wire format: POST {base_url}/chat/completions and /embeddings with
`Authorization: Bearer KEY`; streams are SSE `data: {chat.completion.chunk}`
events ending with `data: [DONE]`; errors are `{"error": {...}}` bodies.

An OpenAI client's request goes on as it came, only `model` replaced, and the answer and
stream events come back as the upstream's bytes (each event still read). Any other client's
request is its `Chat` written by daemon/formats/openai.py, whose decoders read the answers
and events back into neutral values. A Responses API client's request goes to /responses as it
came (adapters/responses_relay.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Literal
from urllib.parse import quote

import msgspec

from gatewayd.adapters.base import (
    HttpAdapter,
    ProviderType,
    TranslatedStream,
    TypeKey,
    UpstreamStream,
    expect_stream,
    relayed_body,
    upstream_json,
)
from gatewayd.adapters.responses_relay import RelayedResponsesStream, relayed_response
from gatewayd.adapters.sse import read_events, relay_data_events
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Reply, Usage
from gatewayd.daemon.formats.openai import StreamDecoder, decode_answer, encode_chat

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment, Provider

WIRE = WireFormat.OPENAI  # what this adapter's upstreams speak
RESPONSES = WireFormat.RESPONSES  # their other API: its clients' requests are relayed too


class UsageFields(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class AnswerFields(msgspec.Struct):
    """The two fields the gateway reads from an OpenAI answer or stream event."""

    usage: UsageFields | None = None
    error: None = None  # an error of any kind takes the full reading


GLANCE = msgspec.json.Decoder(AnswerFields)


def usage_from_openai(payload: dict) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def glance(data: bytes) -> Usage | None | Literal[False]:
    """The usage of an OpenAI answer or stream event in its usual shape, read without building
    the rest; False when `data` needs the full reading (`orjson.loads`) instead.

    msgspec checks the syntax of the whole text but builds only the two fields above: an answer's
    choices, ids and details are skipped, for 40 % of the instructions of parsing them into
    objects (docs/performance.md). What it would let through and a full reading would not goes to the
    full reading: a shape other than an object with an integer usage and no error, text that is
    not UTF-8 (skipped strings are not decoded), nesting too deep to skip.
    """
    try:
        fields = GLANCE.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return False
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
    usage = fields.usage
    return None if usage is None else Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)


def from_upstream(raw: bytes) -> Reply:
    """Check an answer is a JSON object and read its usage; the bytes go on untouched."""
    usage = glance(raw)
    if usage is not False:
        return Reply(raw, usage, WIRE)
    payload = upstream_json(raw, "upstream answer is not JSON")
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a JSON object")
    if "error" in payload and isinstance(payload["error"], dict):
        raise UpstreamError(FailureClass.PROTOCOL, str(payload["error"].get("message", "in-band error")))
    return Reply(raw, usage_from_openai(payload), WIRE)


def translated_answer(raw: bytes) -> Reply:
    """Another format's client's answer, read as a neutral one."""
    payload = upstream_json(raw, "upstream answer is not JSON")
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a JSON object")
    answer = decode_answer(payload)
    return Reply(None, answer.usage, answer=answer)


def check_chunk(data: bytes) -> tuple[bytes | None, Usage | None]:
    """Validate one stream event's data; returns (event bytes to relay, usage seen).

    Every event is checked, so a malformed or truncated chunk is caught rather
    than relayed; the bytes go on as they came.
    """
    if data == b"[DONE]":
        return None, None
    usage = glance(data)
    if usage is not False:
        return b"data: " + data + b"\n\n", usage
    payload = upstream_json(data, "malformed stream event from upstream")
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "malformed stream event from upstream")
    error = payload.get("error")
    if error:  # OpenAI sends an object; some compatible servers a bare string
        message = error.get("message", "in-band error") if isinstance(error, dict) else error
        raise UpstreamError(FailureClass.PROTOCOL, str(message))
    return b"data: " + data + b"\n\n", usage_from_openai(payload)


class OpenAIStream(UpstreamStream):
    """Relays the events as they came, each once `check` has read it (sse.relay_data_events):
    the first event alone, so the first byte waits for no check of another, then every event
    one read of the upstream brought, in one item, so that the relay writes them at once.
    Events before a failing one come first, then the failure."""

    format = WIRE

    def __aiter__(self) -> AsyncIterator[bytes]:
        return relay_data_events(self.response.content, self.max_read, self.scrub, self.check)

    def check(self, data: bytes) -> bool:
        """One event's data read (`check_chunk`'s checks): the usage kept; True at [DONE]."""
        if data == b"[DONE]":
            self.done = True
            return True
        usage = glance(data)
        if usage is False:
            usage = check_chunk(data)[1]
        if usage is not None:
            self.usage = usage
        return False


class OpenAIAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream", "embeddings"})

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def url(self, deployment: Deployment, operation: str) -> str:
        return self.join(self.provider.base_url, f"/{operation}")

    def responses_url(self) -> str:
        """Where a Responses client's request goes (the Responses API names its model in the body)."""
        return self.join(self.provider.base_url, "/responses")

    # `chat` and `embeddings` return fetch's coroutine as their own (see HttpAdapter.fetch)
    def chat(self, deployment: Deployment, request: Request) -> Awaitable[Reply]:
        if request.format is RESPONSES:
            return self.fetch(deployment, self.responses_url(), relayed_body(request.body, deployment.model),
                              relayed_response)
        url = self.url(deployment, "chat/completions")
        if request.format is WIRE:
            return self.fetch(deployment, url, relayed_body(request.body, deployment.model), from_upstream)
        return self.fetch(deployment, url, encode_chat(request.chat(), deployment.model), translated_answer)

    def embeddings(self, deployment: Deployment, request: Request) -> Awaitable[Reply]:
        if request.format is not WIRE:  # no other client format asks for embeddings
            raise TypeError(f"a {request.format.value} client's embeddings request")
        return self.fetch(deployment, self.url(deployment, "embeddings"),
                          relayed_body(request.body, deployment.model), from_upstream)

    async def stream(self, deployment: Deployment,
                     request: Request) -> OpenAIStream | TranslatedStream | RelayedResponsesStream:
        if request.format is RESPONSES:
            body = request.body if request.body.get("stream") is True else {**request.body, "stream": True}
            response = await self.send(deployment, self.responses_url(), relayed_body(body, deployment.model))
            expect_stream(response, "text/event-stream", "an event stream")
            return RelayedResponsesStream(response, self.scrub, self._max_answer)
        url = self.url(deployment, "chat/completions")
        if request.format is WIRE:
            body = request.body if request.body.get("stream") is True else {**request.body, "stream": True}
            response = await self.send(deployment, url, relayed_body(body, deployment.model))
            expect_stream(response, "text/event-stream", "an event stream")
            return OpenAIStream(response, self.scrub, self._max_answer)
        response = await self.send(deployment, url, encode_chat(request.chat(), deployment.model))
        expect_stream(response, "text/event-stream", "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, StreamDecoder(), read_events)


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI: deployment URLs, `api-version`, key in the `api-key` header."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        # the query every URL of this provider ends with, quoted once rather than per request
        self._api_version = quote(str(provider.options.get("api_version", "2024-10-21")), safe="")

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key} if key else {}

    def url(self, deployment: Deployment, operation: str) -> str:
        return self.join(self.provider.base_url, f"/openai/deployments/{deployment.model}/{operation}"
                                                 f"?api-version={self._api_version}")

    def responses_url(self) -> str:
        # Azure's Responses API is not under a deployment: the body's `model` names it
        return self.join(self.provider.base_url, f"/openai/responses?api-version={self._api_version}")


OPENAI = ProviderType("openai", OpenAIAdapter, base_url="https://api.openai.com/v1")
AZURE_OPENAI = ProviderType("azure-openai", AzureOpenAIAdapter, base_url_example="https://RESOURCE.openai.azure.com",
                            keys={"api_version": TypeKey()})
