"""Amazon Bedrock Runtime: Converse and ConverseStream, every request signed with AWS
Signature Version 4. No client speaks Converse, so every request is its `Chat` written by
adapters/bedrock_codec.py, and every answer and stream event read back by it.

Wire format: POST {base_url}/model/{modelId}/converse (a JSON answer) and
/model/{modelId}/converse-stream (a binary `application/vnd.amazon.eventstream`), the modelId
percent-encoded as one path segment (an ARN's `/` and `:` included). The default base_url is
https://bedrock-runtime.{region}.amazonaws.com. Each request is signed for the service
`bedrock` in `region` with `access_key_id` and `secret_access_key`, and carries
`session_token` (temporary credentials) as X-Amz-Security-Token.

botocore does both the signing and the decoding of the event stream (`EventStreamBuffer`: the
prelude, the headers, both CRCs). The signature is made of `SigV4Auth`'s own parts (the
canonical path, query and headers, the payload's digest, the string to sign, the HMAC steps),
over the request exactly as it is sent (its Host header included), at botocore's clock.
`Signer` runs those steps as `SigV4Auth.add_auth` does, on a plain request object rather than
an `AWSRequest` (whose email-based header container cost as much as the rest of a request),
and keeps what does not change between requests: the Host, canonical path and query per URL,
the signed header names per set of headers, the signing key per day. botocore is imported
when the first bedrock adapter is built: a gateway without one never loads it.

The three credentials are kept out of everything the adapter passes on: an upstream that
echoes one (a signature error quoting the request, say) has it replaced, as every adapter
does with its provider's key.
"""

from __future__ import annotations

import struct
import urllib.parse
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatewayd.adapters.base import (
    MAX_CACHED_URLS,
    HttpAdapter,
    ProviderType,
    TranslatedStream,
    TypeKey,
    expect_stream,
    json_or_none,
    parse_retry_after,
    stream_broke,
    unsupported,
    upstream_json,
)
from gatewayd.adapters.bedrock_codec import StreamDecoder, decode_answer, decode_error, encode_chat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import redaction_forms
from gatewayd.daemon.core.replies import Reply

if TYPE_CHECKING:
    from gatewayd.daemon.core.exchange import Request
    from gatewayd.daemon.core.graph import Deployment, Provider, Secret

SERVICE = "bedrock"  # the signing name of Bedrock Runtime (its endpoints are bedrock-runtime.*)
EVENT_STREAM = "application/vnd.amazon.eventstream"
CREDENTIALS = ("access_key_id", "secret_access_key", "session_token")
SMALLEST_MESSAGE = 16  # an event-stream message's prelude and CRC, with no headers and no payload
# sent with every request to any upstream and not signed: they say what the gateway reads, nothing
# a replay could change to harm (botocore leaves User-Agent out too); AWS requires only Host,
# X-Amz-Date and every other X-Amz-* header in the signature
UNSIGNED = frozenset({"accept", "accept-encoding", "user-agent"})


def revealed(secret: Secret | None) -> str:
    return secret.reveal() if secret is not None else ""


class SigningRequest:
    """The fields of a request botocore's SigV4Auth reads to sign it (those of an AWSRequest)."""

    __slots__ = ("method", "url", "headers", "body", "params", "context")

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes, timestamp: str) -> None:
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.params: dict = {}
        self.context = {"timestamp": timestamp}


class Signer:
    """SigV4 for one set of credentials, service and region: `SigV4Auth.add_auth`'s steps (the
    date and token headers, the canonical request, the string to sign, the signature, the
    Authorization header), each done by `SigV4Auth`'s own method."""

    def __init__(self, key_id: str, secret: str, token: str, region: str) -> None:
        import botocore.auth
        from botocore.credentials import Credentials

        self._botocore = botocore.auth  # its clock is read per request, where botocore reads it
        self._auth = botocore.auth.SigV4Auth(Credentials(key_id, secret, token or None), SERVICE, region)
        self._token = token
        self._names: dict[tuple[str, ...], str] = {}  # SignedHeaders, by the names of the headers sent
        self._targets: dict[str, tuple[str, str]] = {}  # the canonical path and query, by URL
        self._day, self._key = "", b""  # the signing key of the day (YYYYMMDD), which it depends on

    def sign(self, method: str, url: str, host: str, signed: Mapping[str, str], body: bytes) -> dict[str, str]:
        """The headers that sign a request of the headers `signed` (and others, unsigned): Host,
        X-Amz-Date, X-Amz-Security-Token (with a session token) and Authorization."""
        auth = self._auth
        timestamp = self._botocore.get_current_datetime().strftime(self._botocore.SIGV4_TIMESTAMP)
        added = {"Host": host, "X-Amz-Date": timestamp}
        if self._token:
            added["X-Amz-Security-Token"] = self._token
        request = SigningRequest(method, url, {**signed, **added}, body, timestamp)
        headers = auth.headers_to_sign(request)
        names = self._names.get(key := tuple(request.headers))
        if names is None:
            if len(self._names) >= MAX_CACHED_URLS:
                self._names.clear()
            names = self._names[key] = auth.signed_headers(headers)
        where = self._targets.get(url)
        if where is None:
            if len(self._targets) >= MAX_CACHED_URLS:
                self._targets.clear()
            where = self._targets[url] = (auth._normalize_url_path(urlsplit(url).path),
                                          auth.canonical_query_string(request))
        # SigV4Auth.canonical_request's lines, the URL's two kept per URL
        canonical = "\n".join((method, *where, auth.canonical_headers(headers) + "\n", names, auth.payload(request)))
        day = timestamp[:8]
        if day != self._day:  # SigV4Auth.signature's key derivation, by its own HMAC step, once a day
            key = auth._sign(f"AWS4{auth.credentials.secret_key}".encode(), day)
            for part in (auth._region_name, auth._service_name, "aws4_request"):
                key = auth._sign(key, part)
            self._day, self._key = day, key
        signature = auth._sign(self._key, auth.string_to_sign(request, canonical), hex=True)
        added["Authorization"] = f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={names}, " \
                                 f"Signature={signature}"
        return added


class BedrockAdapter(HttpAdapter):
    capabilities = frozenset({"chat", "stream"})

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        from botocore.eventstream import EventStreamBuffer, ParserError

        options: Mapping[str, Any] = provider.options
        key_id, secret, token = (revealed(options.get(name)) for name in CREDENTIALS)
        # a provider without credentials is disabled: its adapter is built, never sent a request
        self._signer = Signer(key_id, secret, token, str(options["region"]))
        self._hosts: dict[URL, str] = {}  # the Host header sent to each URL
        self._signed = self.signed_part(self._headers)  # of the provider's own headers, built once
        self._event_buffer = EventStreamBuffer
        self._frame_errors = (ParserError, struct.error, IndexError, KeyError, UnicodeDecodeError)
        forms = {*self._redactions, *(form.encode() for form in redaction_forms((key_id, secret, token)))}
        self._redactions = tuple(sorted(forms, key=len, reverse=True))
        self._model_urls: dict[str, tuple[str, str]] = {}  # upstream model -> its converse and stream URLs

    def sign(self, method: str, url: URL, headers: CIMultiDictProxy[str], body: bytes) -> CIMultiDict[str]:
        """The request's headers with its SigV4 signature: Host (as aiohttp would write it),
        X-Amz-Date, X-Amz-Security-Token with a session token, and Authorization. Every header
        sent is signed but those in UNSIGNED, with the SHA-256 of `body`."""
        host = self._hosts.get(url)
        if host is None:
            if len(self._hosts) >= MAX_CACHED_URLS:
                self._hosts.clear()
            host = self._hosts[url] = url.host_port_subcomponent or ""
        signed = self._signed if headers is self._headers else self.signed_part(headers)
        sent = CIMultiDict(headers)
        sent.update(self._signer.sign(method, str(url), host, signed, body))
        return sent

    @staticmethod
    def signed_part(headers: Mapping[str, str]) -> dict[str, str]:
        return {name: value for name, value in headers.items() if name.lower() not in UNSIGNED}

    def urls(self, model: str) -> tuple[str, str]:
        urls = self._model_urls.get(model)
        if urls is None:
            if len(self._model_urls) >= MAX_CACHED_URLS:  # deployments come and go across reloads
                self._model_urls.clear()
            root = self.join(self.provider.base_url, "/model/" + urllib.parse.quote(model, safe=""))
            urls = self._model_urls[model] = (root + "/converse", root + "/converse-stream")
            for url in urls:  # sent as written, `%3A` and all, as AWS's own SDKs send a model id
                self._urls[url] = URL(url, encoded=True)
        return urls

    def error_from_status(self, status: int, headers, raw: bytes) -> UpstreamError:
        return decode_error(status, headers.get("x-amzn-ErrorType"), json_or_none(raw),
                            parse_retry_after(headers.get("Retry-After")))

    async def chat(self, deployment: Deployment, request: Request) -> Reply:
        chat = request.chat()
        raw = await self.fetch(deployment, self.urls(deployment.model)[0], encode_chat(chat, deployment.model))
        answer = decode_answer(upstream_json(raw, "upstream answer is not JSON"), chat.model or deployment.model)
        return Reply(None, answer.usage, answer=answer)

    async def stream(self, deployment: Deployment, request: Request) -> TranslatedStream:
        chat = request.chat()
        response = await self.send(deployment, self.urls(deployment.model)[1], encode_chat(chat, deployment.model))
        expect_stream(response, EVENT_STREAM, "an event stream")
        return TranslatedStream(response, self.scrub, self._max_answer, StreamDecoder(chat.model or deployment.model),
                                self.read_messages)

    async def embeddings(self, deployment: Deployment, request: Request) -> Reply:
        raise unsupported("bedrock", "embeddings")

    async def read_messages(self, content: aiohttp.StreamReader, limit: int) -> AsyncIterator[tuple[bytes, bytes]]:
        """The messages of an event stream as `(type, payload)`: an event's `:event-type`, or an
        exception's `:exception-type` (the stream's union names both alike). A message that does
        not decode (a CRC, a length, a header) is the upstream's protocol failure, one larger than
        `limit` bytes too; a stream `error` message a server failure."""
        buffer = self._event_buffer()
        pending = 0  # bytes read and not yet decoded into a message
        try:
            while chunk := await content.readany():
                buffer.add_data(chunk)
                pending += len(chunk)
                for message in buffer:
                    length = message.prelude.total_length
                    if length < SMALLEST_MESSAGE:
                        raise UpstreamError(FailureClass.PROTOCOL, "malformed event-stream message from upstream")
                    pending -= length
                    yield self.kind_of(message.headers), message.payload
                if pending > limit:
                    raise UpstreamError(FailureClass.PROTOCOL, f"an upstream stream event is larger than {limit} "
                                                               "bytes (server.max_upstream_body)")
        except (aiohttp.ClientError, OSError) as exc:
            raise stream_broke(exc) from None
        except self._frame_errors:
            raise UpstreamError(FailureClass.PROTOCOL, "malformed event-stream message from upstream") from None

    def kind_of(self, headers: Mapping[str, Any]) -> bytes:
        kind = headers.get(":message-type")
        if kind == "event":
            return str(headers.get(":event-type", "")).encode()
        if kind == "exception":
            return str(headers.get(":exception-type", "")).encode()
        code, message = headers.get(":error-code", ""), headers.get(":error-message", "")
        raise UpstreamError(FailureClass.SERVER, self.scrub_text(f"upstream stream error {code}: {message}"))


BEDROCK = ProviderType("bedrock", BedrockAdapter, base_url="https://bedrock-runtime.{region}.amazonaws.com", keys={
    "region": TypeKey(schema_default=True),
    "access_key_id": TypeKey("credential"),
    "secret_access_key": TypeKey("credential"),
    "secret_access_key_file": TypeKey("file"),
    "session_token": TypeKey("secret"),
    "session_token_file": TypeKey("file"),
})
