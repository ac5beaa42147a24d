"""The Gemini API (Google AI Studio keys): every client's request written as a Gemini request
and its answers read back as neutral values, by adapters/gemini_codec.py.

Wire format: POST {base_url}/v1beta/models/{model}:generateContent,
:streamGenerateContent?alt=sse, :embedContent (one text) and :batchEmbedContents (several),
with `x-goog-api-key: KEY`; base_url defaults to https://generativelanguage.googleapis.com.
Errors are google.rpc statuses, `{"error": {"code", "message", "status", "details"}}`,
classified by their status (and an ErrorInfo reason): RESOURCE_EXHAUSTED is a rate limit whose
RetryInfo `retryDelay` counts as Retry-After, UNAVAILABLE an overload, INVALID_ARGUMENT the
client's error, except a key Gemini refuses (API_KEY_INVALID), which is the deployment's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gatewayd.adapters.base import HttpAdapter, ProviderType, TranslatedStream, expect_stream, upstream_json
from gatewayd.adapters.gemini_codec import (
    StreamDecoder,
    decode_answer,
    decode_embeddings,
    decode_error,
    encode_chat,
    encode_embed,
    model_path,
)
from gatewayd.adapters.sse import read_events
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.replies import Reply

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment

API_VERSION = "v1beta"
MAX_CACHED_MODELS = 1024  # models whose URLs are kept built; deployments come and go across reloads


class GeminiAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream", "embeddings"})

    def __init__(self, provider) -> None:
        super().__init__(provider)
        self._roots: dict[str, str] = {}  # upstream model -> its URL, up to the method

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key} if key else {}

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        return decode_error(status, payload, retry_after)

    def url(self, model: str, method: str) -> str:
        root = self._roots.get(model)
        if root is None:
            if len(self._roots) >= MAX_CACHED_MODELS:
                self._roots.clear()
            root = self._roots[model] = self.join(self.provider.base_url,
                                                  f"/{API_VERSION}/{quote(model_path(model), safe='/')}:")
        return root + method

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        raw = await self.fetch(deployment, self.url(deployment.model, "generateContent"),
                               encode_chat(request.chat(), deployment.model))
        answer = decode_answer(upstream_json(raw, "upstream answer is not JSON"), deployment.model)
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream:
        response = await self.send(deployment, self.url(deployment.model, "streamGenerateContent?alt=sse"),
                                   encode_chat(request.chat(), deployment.model))
        expect_stream(response, "text/event-stream", "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, StreamDecoder(deployment.model), read_events)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        embed = request.embed()
        method, body = encode_embed(embed, deployment.model)
        raw = await self.fetch(deployment, self.url(deployment.model, method), body)
        answer = decode_embeddings(upstream_json(raw, "upstream answer is not JSON"), embed.model or deployment.model)
        return Reply(None, answer.usage, answer=answer)


GEMINI = ProviderType("gemini", GeminiAdapter, base_url="https://generativelanguage.googleapis.com")
