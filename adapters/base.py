"""The one interface every provider adapter implements, and the HTTP I/O they share.

An adapter speaks one provider's wire format. Its translation is pure
functions (request in, upstream JSON out; upstream JSON in, OpenAI JSON out)
tested with literal fixtures; its I/O goes through `HttpAdapter.send()`, the
one place that talks to the network. The router sees only OpenAI-shaped
bytes, `UpstreamError`s and the `Adapter` protocol below.

Failures are classified once, where they are seen, into the taxonomy of
gatewayd.daemon.core.failures.
"""

from __future__ import annotations

import email.utils
import functools
import math
import time
from datetime import timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, TypeVar

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.replies import Reply, ReplyStream, Usage

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Deployment, Provider


class Adapter(Protocol):
    """What the router needs from a provider. One instance per provider identity."""

    capabilities: frozenset[str]  # of "chat", "stream", "embeddings"

    # chat and embeddings may be coroutines, or return one (OpenAIAdapter does)
    def chat(self, deployment: Deployment, body: dict) -> Awaitable[Reply]: ...

    async def stream(self, deployment: Deployment, body: dict) -> ReplyStream: ...

    def embeddings(self, deployment: Deployment, body: dict) -> Awaitable[Reply]: ...

    async def close(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # asctime dates and "-0000" carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


DONE_EVENT = b"data: [DONE]\n\n"  # how every stream relayed to the client ends (OpenAI's SSE format)


def openai_error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error shape, `{"error": {"message", "type", "code", "param"}}`: what the gateway's
    own errors (http/errors.py) and the adapters' reshaped upstream errors both answer with."""
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": param}})


def translates_client_input(provider_type: str):
    """Decorate a request translation `(body, model) -> bytes`: a field of a shape the
    translation did not expect is the client's error (a 400), never a 500 of the gateway."""

    def decorate(translate):
        @functools.wraps(translate)
        def guarded(body: dict, model: str) -> bytes:
            try:
                return translate(body, model)
            except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
                message = (f"the request cannot be translated for provider type {provider_type}: "
                           f"a field has an unexpected shape ({exc})")
                raise UpstreamError(FailureClass.CLIENT, message, status=400,
                                    body=openai_error_body(message, "invalid_request_error", "invalid_value")) from None
        return guarded

    return decorate


# what aiohttp would add to every request; the provider's `headers` may replace any of them
AUTO_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "User-Agent": "gatewayd"}
MAX_CACHED_URLS = 1024
MAX_ERROR_BODY = 64 * 1024  # an upstream's error answer is a short message: no more of it is read


T = TypeVar("T")


def unchanged(raw: bytes) -> Any:
    return raw


def read_bounded(response: aiohttp.ClientResponse, limit: int) -> Awaitable[bytes | None]:
    """The whole body of `response`, or None when it is larger than `limit` bytes; then at most
    about `limit` bytes were read, and the caller closes the connection.

    Without a Content-Encoding to decode, a Content-Length is the body's size: such an answer
    is refused before its first byte, or read by aiohttp in one call (the usual case; returned
    as aiohttp's own coroutine, with no frame of ours around it). Otherwise (chunked, compressed)
    it is read piece by piece up to the limit.
    """
    headers = response.headers  # two lookups by aiohttp's interned names cost less than its content_length
    length = headers.get(hdrs.CONTENT_LENGTH)
    if length is not None and hdrs.CONTENT_ENCODING not in headers:
        return response.read() if int(length) <= limit else refused()  # aiohttp's parser checked it is digits
    return read_pieces(response.content, limit)


async def refused() -> None:
    return None


async def read_pieces(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    pieces = []
    size = 0
    while piece := await content.readany():
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
    return b"".join(pieces)


def too_large(limit: int) -> UpstreamError:
    return UpstreamError(FailureClass.PROTOCOL, f"upstream answer is larger than {limit} bytes "
                                                "(server.max_upstream_body)")


def usage_from_openai(payload: dict) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class HttpAdapter:
    """Common I/O for adapters that talk HTTP: one connection pool per provider.

    Subclasses supply `auth_headers()` and the translation; this class owns the
    aiohttp session, never follows redirects, classifies transport failures and
    error statuses, and scrubs the provider's key out of anything it passes on.
    """

    capabilities: frozenset[str] = frozenset()

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._session: aiohttp.ClientSession | None = None
        secret = provider.api_key.reveal() if provider.api_key else ""
        self._redactions = tuple(form.encode() for form in provider.redactions)
        # Built once: the same headers go with every request to this provider. They include the
        # ones aiohttp adds when missing (Accept, Accept-Encoding, User-Agent), so that its
        # per-request header merge takes its fast path. Case-insensitive: a provider's
        # `user-agent` replaces ours rather than going out twice.
        headers = CIMultiDict(AUTO_HEADERS)
        for name, value in (*provider.headers, *self.auth_headers(secret).items(),
                            ("Content-Type", "application/json")):
            headers[name] = value
        self._headers = CIMultiDictProxy(headers)
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # by connect timeout
        self._max_answer = provider.max_upstream_body
        self._urls: dict[str, URL] = {}  # parsed once per URL string

    def auth_headers(self, key: str) -> dict[str, str]:
        return {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.provider.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are never kept nor sent back
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def scrub(self, data: bytes) -> bytes:
        """`data` with every credential this provider sends replaced: an upstream may echo one."""
        for secret in self._redactions:  # most providers have one: the key
            data = data.replace(secret, b"[redacted]")
        return data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode()).decode("utf-8", "replace") if self._redactions else text

    async def send(
        self, deployment: Deployment, url: str, payload: bytes
    ) -> aiohttp.ClientResponse:
        """POST and return the response once its status is 2xx; else raise UpstreamError.

        The caller reads (and releases) the returned response. Deadlines other
        than connect are the router's: it cancels this coroutine when they pass.
        """
        connect = deployment.policy.timeouts.connect
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        target = self._urls.get(url)
        if target is None:
            if len(self._urls) >= MAX_CACHED_URLS:  # deployments come and go across reloads
                self._urls.clear()
            target = self._urls[url] = URL(url)
        try:
            response = await self.session().post(
                target, data=payload, headers=self._headers, allow_redirects=False, timeout=timeout,
            )
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamError(FailureClass.TIMEOUT, f"connect timed out: {exc}") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamError(FailureClass.CONNECT, self.scrub_text(f"cannot connect: {exc}")) from None
        if response.status < 300:
            return response
        raw = None
        try:
            raw = await read_bounded(response, MAX_ERROR_BODY)
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            response.release() if raw is not None else response.close()  # the rest is never read
        raise self.error_from_status(response.status, response.headers, self.scrub(raw or b""))

    async def fetch(self, deployment: Deployment, url: str, payload: bytes,
                    read: Callable[[bytes], T] = unchanged) -> T:
        """POST, read the whole (2xx) answer, scrubbed of the provider's key, and return `read(answer)`.

        With `read`, an adapter's `chat` can return this coroutine as its own rather than await
        it in one more: every frame on the request's path is resumed at each of its awaits.
        """
        response = await self.send(deployment, url, payload)
        raw = None
        try:
            raw = await read_bounded(response, self._max_answer)
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(FailureClass.CONNECT, f"upstream answer broke: {exc}") from None
        finally:
            response.release() if raw is not None else response.close()  # the rest is never read
        if raw is None:
            raise too_large(self._max_answer)
        return read(self.scrub(raw))

    def error_from_status(self, status: int, headers, raw: bytes) -> UpstreamError:
        """Turn an upstream error answer into an UpstreamError with an OpenAI-shaped body."""
        failure = classify_status(status)
        message = f"upstream answered HTTP {status}"
        body = raw
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = str(payload["error"].get("message") or message)
        else:
            body = openai_error_body(message, "upstream_error", None)
        return UpstreamError(
            failure, message, status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")), body=body,
        )

    @staticmethod
    def join(base_url: str, path: str) -> str:
        return base_url.rstrip("/") + path
