"""Anthropic Messages API: a `Chat` sent as daemon/formats/anthropic.py writes it, the
answers and stream events read by that module's decoders.

Wire format: POST {base_url}/v1/messages with `x-api-key: KEY` and `anthropic-version`
(default 2023-06-01, or the provider option `anthropic_version`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gatewayd.adapters.base import (
    HttpAdapter,
    ProviderType,
    TranslatedStream,
    TypeKey,
    expect_stream,
    unsupported,
    upstream_json,
)
from gatewayd.adapters.sse import read_events
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.replies import Reply
from gatewayd.daemon.formats.anthropic import StreamDecoder, decode_answer, decode_error, encode_chat

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

DEFAULT_VERSION = "2023-06-01"


class AnthropicAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream"})

    def auth_headers(self, key: str) -> dict[str, str]:
        version = str(self.provider.options.get("anthropic_version") or DEFAULT_VERSION)
        return {"x-api-key": key, "anthropic-version": version} if key else {"anthropic-version": version}

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        return decode_error(status, payload, retry_after, raw)

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        url = self.join(self.provider.base_url, "/v1/messages")
        raw = await self.fetch(deployment, url, encode_chat(request.chat(), deployment.model))
        answer = decode_answer(upstream_json(raw, "upstream answer is not JSON"))
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream:
        url = self.join(self.provider.base_url, "/v1/messages")
        response = await self.send(deployment, url, encode_chat(request.chat(), deployment.model))
        expect_stream(response, "text/event-stream", "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, StreamDecoder(), read_events)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        raise unsupported("anthropic", "embeddings")


ANTHROPIC = ProviderType("anthropic", AnthropicAdapter, base_url="https://api.anthropic.com",
                         keys={"anthropic_version": TypeKey()})
