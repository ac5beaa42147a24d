"""A fake Amazon Bedrock Runtime: a real aiohttp server on 127.0.0.1 speaking Converse and
ConverseStream, scripted per test, recording what it received, and verifying the SigV4
signature of every request itself.

Like tests/fakes.py, a test queues behaviours (`fake.queue(...)`); each request takes the next
one and `default` answers once the queue is empty. Shapes follow the service model (botocore's
data/bedrock-runtime/2023-09-30/service-2.json) and the recordings in tests/fixtures/bedrock:

- POST /model/{modelId}/converse -> {"output": {"message": {"role", "content"}}, "stopReason",
  "usage", "metrics"};
- POST /model/{modelId}/converse-stream -> `application/vnd.amazon.eventstream` messages
  (messageStart, contentBlockStart for a toolUse block, contentBlockDelta, contentBlockStop,
  messageStop, metadata), each payload padded with a `p` field as Bedrock pads it, or an
  exception message (`:message-type: exception`, `:exception-type: throttlingException`);
- errors: the status, `x-amzn-ErrorType: NameException:http://internal.amazon.com/coral/...`,
  and `{"message": ...}`.

The signature is checked the way AWS documents Signature Version 4 (the canonical request, the
string to sign, the key derived from the secret by HMAC-SHA256), written out here with hashlib
and hmac so that the check does not share code with the signer it checks. A request that fails
it gets AWS's answer: 403 InvalidSignatureException (quoting the canonical request, as AWS
does), or UnrecognizedClientException for an unknown access key or session token.

`frame()` writes one event-stream message (prelude, headers, payload, CRC-32s), for the fake's
streams; tests/test_bedrock.py checks it against the recordings byte for byte.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import json
import struct
import urllib.parse
from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes_native import split

ACCESS_KEY_ID = "AKIAIOSFODNN7CANARY1"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARYKEY2"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjECANARYTOKEN3//////////wEaCXVzLWVhc3QtMSJHMEUCIQD"
REGION = "eu-west-3"
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


# --- the event-stream framing ----------------------------------------------------------------

def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total length, headers length, prelude CRC, the headers (each a
    1-byte name length, the name, type 7 = string, a 2-byte value length, the value), the
    payload, and the CRC-32 of everything before it."""
    encoded = b"".join(struct.pack("!B", len(name)) + name.encode() + struct.pack("!BH", 7, len(value.encode()))
                       + value.encode() for name, value in headers.items())
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(kind: str, payload: dict, padding: int = 17) -> bytes:
    body = json.dumps({**payload, "p": PADDING[:padding]}, separators=(",", ":")).encode()
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, body)


def exception(kind: str, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}, body)


# --- behaviours -------------------------------------------------------------------------------

@dataclass
class Converse:
    """A Converse answer: content blocks (text, toolUse, reasoningContent), a stop reason, usage."""

    content: list = field(default_factory=lambda: [{"text": "Hello from Bedrock"}])
    stop_reason: str = "end_turn"
    input_tokens: int = 25
    output_tokens: int = 9
    cache_read: int = 0
    pieces: int = 3  # stream: deltas per text block
    exception_after: int | None = None  # stream: an exception message after this many text deltas, then the end
    exception: tuple[str, str] = ("throttlingException", "Too many requests, please wait before trying again.")
    gap: float = 0.0  # stream: seconds between messages


def text(value: str, **extra) -> Converse:
    return Converse(content=[{"text": value}], **extra)


def tool_use(name: str, arguments: dict, *, id: str = "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
             preamble: str | None = None, **extra) -> Converse:
    blocks = [{"text": preamble}] if preamble else []
    blocks.append({"toolUse": {"toolUseId": id, "name": name, "input": arguments}})
    return Converse(content=blocks, stop_reason="tool_use", **extra)


@dataclass
class BedrockError:
    status: int = 429
    type: str = "ThrottlingException"
    message: str = "Too many requests, please wait before trying again."
    headers: dict = field(default_factory=dict)


@dataclass
class Recorded:
    """A recorded ConverseStream body, answered as it is."""

    body: bytes


# --- Signature Version 4, checked ------------------------------------------------------------

def hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def parse_authorization(value: str) -> dict[str, str]:
    """`AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` as a dict."""
    algorithm, _, rest = value.partition(" ")
    fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
    fields["algorithm"] = algorithm
    return fields


def canonical_request(method: str, raw_path: str, query: str, headers, signed: list[str], body: bytes) -> str:
    """AWS's canonical request for a service other than S3: the path as received, URI-encoded
    once more; the query's pairs encoded and sorted; each signed header `name:value` (values
    trimmed, repeats joined by commas); the signed names; the payload's SHA-256."""
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                               for k, v in pairs)
    lines = "".join(f"{name}:{','.join(' '.join(v.split()) for v in headers.getall(name, []))}\n" for name in signed)
    return "\n".join([method, urllib.parse.quote(raw_path, safe="/~"), canonical_query, lines, ";".join(signed),
                      hashlib.sha256(body).hexdigest()])


def expected_signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    date, region, service, terminal = scope.split("/")
    key = hmac_sha256(("AWS4" + secret).encode(), date)
    for part in (region, service, terminal):
        key = hmac_sha256(key, part)
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class FakeBedrock(Recorder):
    def __init__(self, access_key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY,
                 token: str | None = SESSION_TOKEN, region: str = REGION) -> None:
        super().__init__()
        self.access_key_id, self.secret, self.token, self.region = access_key_id, secret, token, region
        self.default = text("Hello from Bedrock")
        self.verified = 0  # requests whose signature this fake recomputed and matched
        self.refused: list[str] = []  # why each refused request was refused
        self.disconnects = 0  # streams the client left before their end
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.handle)

    def check_signature(self, request: web.Request, body: bytes) -> web.Response | None:
        """None when the request is signed for this fake's key, region and service; else AWS's answer."""
        fields = parse_authorization(request.headers.get("Authorization", ""))
        if fields["algorithm"] != "AWS4-HMAC-SHA256" or not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
            return self.refuse(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        key_id, _, scope = fields["Credential"].partition("/")
        token = request.headers.get("X-Amz-Security-Token")
        if key_id != self.access_key_id or token != self.token:
            return self.refuse(403, "UnrecognizedClientException",
                               "The security token included in the request is invalid.")
        amz_date = request.headers.get("X-Amz-Date", "")
        signed = fields["SignedHeaders"].split(";")
        if scope != f"{amz_date[:8]}/{self.region}/bedrock/aws4_request":
            return self.refuse(403, "InvalidSignatureException",
                               f"Credential should be scoped to a valid region. ({scope})")
        needed = {"host", "x-amz-date"} | ({"x-amz-security-token"} if self.token else set())
        if not needed <= set(signed) or signed != sorted(signed):
            return self.refuse(403, "InvalidSignatureException",
                               f"Signed headers {signed} must include {sorted(needed)}")
        path, _, query = request.raw_path.partition("?")
        canonical = canonical_request(request.method, path, query, request.headers, signed, body)
        if not hmac.compare_digest(expected_signature(self.secret, amz_date, scope, canonical), fields["Signature"]):
            return self.refuse(403, "InvalidSignatureException",
                               "The request signature we calculated does not match the signature you provided. "
                               "Check your AWS Secret Access Key and signing method. Consult the service "
                               f"documentation for details.\n\nThe Canonical String for this request should have "
                               f"been\n'{canonical}'\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n"
                               f"{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}'\n")
        self.verified += 1
        return None

    def refuse(self, status: int, type_: str, message: str) -> web.Response:
        self.refused.append(type_)
        return self.error(BedrockError(status, type_, message))

    @staticmethod
    def error(plan: BedrockError) -> web.Response:
        headers = {"x-amzn-ErrorType": f"{plan.type}:{ERROR_NAMESPACE}",
                   "x-amzn-RequestId": "8a4f6c1e-3b0d-4a8e-9d55-2f2b1c0a7e61", **plan.headers}
        return web.json_response({"message": plan.message}, status=plan.status, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.raw_path.partition("?")[0]
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse", "converse-stream"):
            return self.error(BedrockError(404, "UnknownOperationException", "Unknown operation"))
        payload = json.loads(body)
        self.requests.append({"path": path, "model": urllib.parse.unquote(parts[2]), "operation": parts[3],
                              "headers": dict(request.headers), "json": payload})
        refused = self.check_signature(request, body)
        if refused is not None:
            return refused
        if not isinstance(payload.get("messages"), list) or "modelId" in payload or "stream" in payload:
            return self.error(BedrockError(400, "ValidationException",
                                           "Malformed input request, please reformat your input and try again."))
        plan = self.next()
        if isinstance(plan, BedrockError):
            return self.error(plan)
        if isinstance(plan, Recorded):
            return web.Response(body=plan.body, content_type="application/vnd.amazon.eventstream")
        if parts[3] == "converse":
            return web.json_response(self.answer(plan))
        try:
            return await self.stream(request, plan)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise

    @staticmethod
    def usage(plan: Converse) -> dict:
        usage = {"inputTokens": plan.input_tokens, "outputTokens": plan.output_tokens,
                 "totalTokens": plan.input_tokens + plan.output_tokens + plan.cache_read}
        if plan.cache_read:
            usage["cacheReadInputTokens"] = plan.cache_read
        return usage

    def answer(self, plan: Converse) -> dict:
        return {"metrics": {"latencyMs": 312}, "output": {"message": {"content": plan.content, "role": "assistant"}},
                "stopReason": plan.stop_reason, "usage": self.usage(plan)}

    async def stream(self, request: web.Request, plan: Converse) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream",
                                               "x-amzn-RequestId": "5d1a2a5c-9f43-4bd1-8d1c-0a1c7b3f2e90"})
        await response.prepare(request)

        async def send(message: bytes) -> None:
            await response.write(message)
            if plan.gap:
                await asyncio.sleep(plan.gap)

        await send(event("messageStart", {"role": "assistant"}))
        for index, block in enumerate(plan.content):
            if "text" in block:
                for number, piece in enumerate(split(block["text"], plan.pieces)):
                    if plan.exception_after is not None and number == plan.exception_after:
                        await send(exception(*plan.exception))
                        await response.write_eof()
                        return response
                    await send(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
            elif "toolUse" in block:
                use = block["toolUse"]
                await send(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                    "toolUse": {"name": use["name"], "toolUseId": use["toolUseId"]}}}))
                for piece in split(json.dumps(use["input"]), plan.pieces):
                    await send(event("contentBlockDelta", {"contentBlockIndex": index,
                                                           "delta": {"toolUse": {"input": piece}}}))
            await send(event("contentBlockStop", {"contentBlockIndex": index}))
        await send(event("messageStop", {"stopReason": plan.stop_reason}))
        await send(event("metadata", {"metrics": {"latencyMs": 401}, "usage": self.usage(plan)}))
        await response.write_eof()
        return response
