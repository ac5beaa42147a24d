"""Anthropic Messages API. An Anthropic client's request goes on as it came, with only
`model` replaced and the client's `anthropic-version` and `anthropic-beta`, and the answer
and every stream event come back as the upstream's bytes (each event still read, for the
usage, the end and in-band errors). Any other client's request is its `Chat` written by
daemon/formats/anthropic.py, and the answers and events are read by that module's decoders.

Wire format: POST {base_url}/v1/messages with `x-api-key: KEY` and `anthropic-version`
(default 2023-06-01, or the provider option `anthropic_version`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from multidict import CIMultiDictProxy

from gatewayd.adapters.base import (
    HttpAdapter,
    ProviderType,
    TranslatedStream,
    TypeKey,
    expect_stream,
    glance_at,
    relayed_body,
    unsupported,
    upstream_json,
)
from gatewayd.adapters.sse import RelayedEvents, read_events
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Reply, Usage
from gatewayd.daemon.formats.anthropic import StreamDecoder, decode_answer, decode_error, encode_chat

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

DEFAULT_VERSION = "2023-06-01"
WIRE = WireFormat.ANTHROPIC
FORWARDED = ("anthropic-version", "anthropic-beta")  # a client's headers its upstream reads
MAX_FORWARDED_FORMS = 64  # header sets kept built, by the forwarded values


class UsageFields(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageFields(msgspec.Struct):
    """What the gateway reads of a relayed answer: its usage; the rest is skipped unread."""

    type: str = ""
    usage: UsageFields | None = None


GLANCE = msgspec.json.Decoder(MessageFields)


def relayed_answer(raw: bytes) -> Reply:
    """An Anthropic client's answer, as the upstream's bytes, once its usage is read."""
    fields = glance_at(GLANCE, raw, "a message")
    if fields.type != "message":
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a message")
    usage = fields.usage
    if usage is None:
        return Reply(raw, None, WIRE)
    cached = usage.cache_read_input_tokens or 0
    prompt = usage.input_tokens + (usage.cache_creation_input_tokens or 0) + cached
    return Reply(raw, Usage(prompt, usage.output_tokens, cached), WIRE)


class RelayedStream(RelayedEvents):
    """An Anthropic stream relayed to an Anthropic client: every event goes on as its bytes, once
    the decoder has read it (the usage, the end, an in-band error, a malformed event)."""

    format = WIRE

    def __init__(self, response, scrub, max_read: int) -> None:
        super().__init__(response, scrub, max_read)
        self.decoder = StreamDecoder()

    @property
    def usage(self) -> Usage | None:  # type: ignore[override]
        return self.decoder.usage

    @property
    def done(self) -> bool:  # type: ignore[override]
        return self.decoder.done

    def check(self, event: bytes, data: bytes) -> None:
        self.decoder.feed(event, data)


class AnthropicAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream"})

    def auth_headers(self, key: str) -> dict[str, str]:
        version = str(self.provider.options.get("anthropic_version") or DEFAULT_VERSION)
        return {"x-api-key": key, "anthropic-version": version} if key else {"anthropic-version": version}

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        return decode_error(status, payload, retry_after, raw)

    def __init__(self, provider) -> None:
        super().__init__(provider)
        self._forwarded: dict[tuple, CIMultiDictProxy] = {}

    def forwarded_headers(self, request: Request) -> CIMultiDictProxy | None:
        """The provider's headers with the client's `anthropic-version` and `anthropic-beta`."""
        values = tuple(request.headers.get(name) for name in FORWARDED)
        headers = self._forwarded.get(values)
        if headers is None:
            if len(self._forwarded) >= MAX_FORWARDED_FORMS:
                self._forwarded.clear()
            extra = {name: value for name, value in zip(FORWARDED, values, strict=True) if value is not None}
            headers = self._forwarded[values] = self.with_headers(extra)
        return headers

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        url = self.join(self.provider.base_url, "/v1/messages")
        if request.format is WIRE:
            return await self.fetch(deployment, url, relayed_body(request.body, deployment.model),
                                    relayed_answer, self.forwarded_headers(request))
        raw = await self.fetch(deployment, url, encode_chat(request.chat(), deployment.model))
        answer = decode_answer(upstream_json(raw, "upstream answer is not JSON"))
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream | RelayedStream:
        url = self.join(self.provider.base_url, "/v1/messages")
        if request.format is WIRE:
            body = request.body if request.body.get("stream") is True else {**request.body, "stream": True}
            response = await self.send(deployment, url, relayed_body(body, deployment.model),
                                       self.forwarded_headers(request))
            expect_stream(response, "text/event-stream", "an event stream")
            return RelayedStream(response, self.scrub, self._max_answer)
        response = await self.send(deployment, url, encode_chat(request.chat(), deployment.model))
        expect_stream(response, "text/event-stream", "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, StreamDecoder(), read_events)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        raise unsupported("anthropic", "embeddings")

    async def count_tokens(self, deployment: Deployment, request: Request) -> bytes:
        """An Anthropic client's `POST /v1/messages/count_tokens`, relayed: the upstream's answer."""
        url = self.join(self.provider.base_url, "/v1/messages/count_tokens")
        return await self.fetch(deployment, url, relayed_body(request.body, deployment.model),
                                headers=self.forwarded_headers(request))


ANTHROPIC = ProviderType("anthropic", AnthropicAdapter, base_url="https://api.anthropic.com",
                         keys={"anthropic_version": TypeKey()})
