"""The one interface every provider adapter implements, and the HTTP I/O they share.

An adapter speaks one provider's wire format. A client of that same format has its body
sent on and the answer's bytes relayed as they came; any other client's request is read in
neutral terms (`Request.chat()`) and the answer given back neutral (`core/replies`), for the
client's codec to write. The translation is pure functions tested with literal fixtures; the
I/O goes through `HttpAdapter.send()`, the one place that talks to the network. The router
sees only `Reply`s, `ReplyStream`s, `UpstreamError`s and the `Adapter` protocol below.

Failures are classified once, where they are seen, into the taxonomy of
gatewayd.daemon.core.failures.
"""

from __future__ import annotations

import email.utils
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Literal, Mapping, Protocol, TypeVar

import aiohttp
import msgspec
import orjson
from aiohttp import hdrs
from aiohttp.http_exceptions import LineTooLong
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatewayd.daemon.core.conversation import client_error, too_deep_to_forward
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.failures import upstream_json as upstream_json  # re-exported for the adapters
from gatewayd.daemon.core.replies import Reply, ReplyStream, StreamEvent, StreamTranslator, Usage

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment, Provider


class Adapter(Protocol):
    """What the router needs from a provider. One instance per provider identity.

    One method per `Operation`, named as it is (the router calls the request's); `stream` serves
    a chat request that streams. `capabilities` lists the `Request.capability`s it serves.
    """

    capabilities: frozenset[str]  # of "chat", "stream", "embeddings"

    # chat and embeddings may be coroutines, or return one (OpenAIAdapter does)
    def chat(self, deployment: Deployment, request: Request) -> Awaitable[Reply]: ...

    async def stream(self, deployment: Deployment, request: Request) -> ReplyStream: ...

    def embeddings(self, deployment: Deployment, request: Request) -> Awaitable[Reply]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TypeKey:
    """A provider key that one type alone takes, and how the compiler reads it into
    `Provider.options` (the keys every provider takes are the compiler's own)."""

    reads_as: Literal["text", "duration", "number", "credential", "secret", "file"] = "text"
    # when the config leaves it out: True fills in the schema's default, so the adapter reads
    # it as it is; False leaves it out, and the adapter supplies its own default
    schema_default: bool = False


@dataclass(frozen=True, slots=True)
class ProviderType:
    """What a provider type's module declares, for `registry.py` to list: the adapter class
    that speaks it, its default `base_url` (None: the config must give one, and
    `base_url_example` shows what one looks like), and the keys only it takes."""

    name: str  # as the config's `type` says it
    adapter: Callable[[Provider], Adapter]
    base_url: str | None = None
    base_url_example: str | None = None
    keys: Mapping[str, TypeKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


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


def unsupported(provider_type: str, operation: str) -> UpstreamError:
    return client_error(f"provider type {provider_type} has no {operation} API", "unsupported_operation")


# what aiohttp would add to every request; the provider's `headers` may replace any of them
AUTO_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "User-Agent": "gatewayd"}
MAX_CACHED_URLS = 1024
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie"})
MAX_ERROR_BODY = 64 * 1024  # an upstream's error answer is a short message: no more of it is read
# The W3C trace context (`traceparent`, `tracestate`) of the attempt being sent, set by the
# tracing of the request's task (daemon/observe/tracing.py) while `telemetry:` is on; a context
# variable, as only the request's own task may see it and no adapter's signature carries it.
UPSTREAM_TRACE: ContextVar[Mapping[str, str] | None] = ContextVar("gatewayd_upstream_trace", default=None)


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


def relayed_body(body: dict, model: str) -> bytes:
    """A client's body for an upstream of its own format: as it came, with the deployment's
    `model`. (Not `chat_encoder`'s guard: a passthrough has no shape to misread, and this runs
    on every request, where a wrapper's frame would cost more than the `try`.)"""
    try:
        return orjson.dumps({**body, "model": model})
    except orjson.JSONEncodeError:
        raise too_deep_to_forward() from None


def glance_at(decoder: msgspec.json.Decoder, raw: bytes, what: str) -> Any:
    """The few fields `decoder` reads of an answer relayed as its bytes, the rest skipped unread;
    text that is not such JSON is the upstream's protocol failure (not `what`)."""
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise UpstreamError(FailureClass.PROTOCOL, f"upstream answer is not {what}") from None


def json_or_none(raw: bytes) -> Any:
    """An error answer's body as JSON, or None: an upstream in trouble may answer HTML, or nothing."""
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


# --- streams ---------------------------------------------------------------------------------

def expect_stream(response: aiohttp.ClientResponse, content_type: str, what: str) -> None:
    """Raise unless `response` is a stream of `content_type` (`what`, in words): an upstream that
    answered a stream request with anything else broke the protocol; that answer is never read."""
    if not response.headers.get("Content-Type", "").startswith(content_type):
        response.close()
        raise UpstreamError(FailureClass.PROTOCOL, f"upstream did not answer with {what}")


def stream_broke(exc: BaseException) -> UpstreamError:
    """A stream's connection failed while it was read: the upstream may have died mid-answer."""
    return UpstreamError(FailureClass.CONNECT, f"upstream stream broke: {exc}")


async def read_lines(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[tuple[bytes, bytes]]:
    """The lines of an NDJSON stream, as `(b"", line)`: a stream reader yields `(event type, data)`
    pieces (see sse.read_events), and NDJSON's carry no type. A line larger than `limit` bytes is
    the upstream's protocol failure, a broken connection a connect failure."""
    readline = content.readline
    try:
        while line := await readline(max_line_length=limit):
            yield b"", line
    except (aiohttp.ClientError, OSError) as exc:
        raise stream_broke(exc) from None
    except LineTooLong:
        raise UpstreamError(FailureClass.PROTOCOL, f"an upstream stream line is larger than {limit} bytes "
                                                   "(server.max_upstream_body)") from None


class UpstreamStream:
    """An upstream's open stream (a `ReplyStream`): what every streaming adapter shares.

    A subclass's `__aiter__` reads `response.content` through a bounded reader (sse.py's
    `read_event_batches` or `read_events`, `read_lines`), passes each piece through `scrub`
    before it is relayed or quoted in an error, and keeps `usage` and `done` current. `aclose`
    hands the connection back to the pool once the upstream ended its stream, and closes it
    otherwise: the rest would never be read.
    """

    format: WireFormat | None = None  # the wire format of the bytes it yields; None: it yields neutral events
    usage: Usage | None = None
    done: bool = False

    def __init__(self, response: aiohttp.ClientResponse, scrub: Callable[[bytes], bytes], max_read: int) -> None:
        self.response = response
        self.scrub = scrub
        self.max_read = max_read  # server.max_upstream_body: no line or event is held past it

    async def aclose(self) -> None:
        self.response.close() if not self.done else self.response.release()


class TranslatedStream(UpstreamStream):
    """A stream in a provider's own format read as neutral events: each piece `read` yields goes
    through `translator`, which holds the usage and knows when the upstream is done."""

    def __init__(self, response: aiohttp.ClientResponse, scrub: Callable[[bytes], bytes], max_read: int,
                 translator: StreamTranslator,
                 read: Callable[[aiohttp.StreamReader, int], AsyncIterator[tuple[bytes, bytes]]]) -> None:
        super().__init__(response, scrub, max_read)
        self.translator = translator
        self.read = read

    @property
    def usage(self) -> Usage | None:  # type: ignore[override]
        return self.translator.usage

    @property
    def done(self) -> bool:  # type: ignore[override]
        return self.translator.done

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        translator, scrub = self.translator, self.scrub
        pieces = self.read(self.response.content, self.max_read)
        try:
            async for event, data in pieces:
                for out in translator.feed(event, scrub(data)):
                    yield out
                if translator.done:
                    return
        finally:
            await pieces.aclose()  # here: the loop's async-generator finalizer would wake the loop for it


class HttpAdapter:
    """Common I/O for adapters that talk HTTP: one connection pool per provider.

    Subclasses supply `auth_headers()` and the translation, and where they differ from
    OpenAI's, `error_from_answer()` (their error bodies) and `sign()` (a signature per
    request); this class owns the aiohttp session, never follows redirects, classifies
    transport failures and error statuses, and scrubs the provider's key out of anything
    it passes on.
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
        # decided once, not per request: only an adapter that overrides `sign` signs
        self._signs = type(self).sign is not HttpAdapter.sign

    def auth_headers(self, key: str) -> dict[str, str]:
        return {}

    def sign(self, method: str, url: URL, headers: CIMultiDictProxy[str], body: bytes) -> Mapping[str, str]:
        """The headers to send with one request, for a provider that authenticates each request by
        a signature over it (Bedrock's SigV4): `url` is the final URL as it is sent, `headers` the
        provider's prebuilt ones (aiohttp adds only Host and Content-Length, from `url` and `body`).

        Overriding it is what makes an adapter sign: `send` calls it only then, so this
        identity is what every other adapter gets, at the cost of one test per request.
        """
        return headers

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
        self, deployment: Deployment, url: str, payload: bytes, headers: CIMultiDictProxy | None = None,
    ) -> aiohttp.ClientResponse:
        """POST and return the response once its status is 2xx; else raise UpstreamError.

        `headers` replaces the provider's own for this request (`with_headers` makes them).
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
        if headers is None:
            headers = self._headers
        trace = UPSTREAM_TRACE.get()
        if trace is not None:
            traced = CIMultiDict(headers)
            traced.update(trace)
            headers = CIMultiDictProxy(traced)
        if self._signs:
            headers = self.sign("POST", target, headers, payload)
        try:
            response = await self.session().post(
                target, data=payload, headers=headers, allow_redirects=False, timeout=timeout,
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
                    read: Callable[[bytes], T] = unchanged, headers: CIMultiDictProxy | None = None) -> T:
        """POST, read the whole (2xx) answer, scrubbed of the provider's key, and return `read(answer)`.

        With `read`, an adapter's `chat` can return this coroutine as its own rather than await
        it in one more: every frame on the request's path is resumed at each of its awaits.
        """
        response = await self.send(deployment, url, payload, headers)
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
        """Turn an upstream error answer (its body scrubbed) into an UpstreamError: the body is
        read as JSON here, once, for `error_from_answer`."""
        return self.error_from_answer(status, json_or_none(raw), raw, parse_retry_after(headers.get("Retry-After")))

    def error_from_answer(self, status: int, payload: Any, raw: bytes, retry_after: float | None) -> UpstreamError:
        """An error answer of this provider's (`payload`: its JSON, None when it is not JSON).
        OpenAI's shape, `{"error": {"message": ...}}`, goes to an OpenAI client as it came;
        anything else is told in the client's shape, as an upstream error."""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = str(payload["error"].get("message") or f"upstream answered HTTP {status}")
            return UpstreamError(classify_status(status), message, status=status, retry_after=retry_after,
                                 body=raw, body_format=WireFormat.OPENAI)
        return UpstreamError(classify_status(status), f"upstream answered HTTP {status}", status=status,
                             retry_after=retry_after, kind="upstream")

    def with_headers(self, extra: Mapping[str, str]) -> CIMultiDictProxy:
        """The provider's headers with `extra` (a client's headers forwarded) set over them; the
        provider's credentials are never replaced."""
        headers = CIMultiDict(self._headers)
        for name, value in extra.items():
            if name.lower() not in CREDENTIAL_HEADERS:
                headers[name] = value
        return CIMultiDictProxy(headers)

    @staticmethod
    def join(base_url: str, path: str) -> str:
        return base_url.rstrip("/") + path
