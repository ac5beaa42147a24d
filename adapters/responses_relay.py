"""OpenAI's Responses API relayed to a client that speaks it (`POST /v1/responses` to an
`openai` or `azure-openai` deployment): the body goes on with only `model` replaced, the
answer and every stream event come back as the upstream's bytes, each event still read for
the usage, the end and in-band failures.

Stream: SSE `event: response.<kind>` / `data: {...}` pairs; it ends with
`response.completed` or `response.incomplete`; `response.failed` and `error` are the
upstream's failure after its first byte.
"""

from __future__ import annotations

import msgspec

from gatewayd.adapters.base import glance_at
from gatewayd.adapters.sse import RelayedEvents
from gatewayd.daemon.core.exchange import WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import Reply, Usage

WIRE = WireFormat.RESPONSES
ENDS = frozenset({b"response.completed", b"response.incomplete"})
FAILURES = frozenset({b"response.failed", b"error"})


class CachedFields(msgspec.Struct):
    cached_tokens: int = 0


class UsageFields(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: CachedFields | None = None


class ResponseFields(msgspec.Struct):
    """What the gateway reads of a relayed response: its status and usage; the rest is skipped."""

    object: str = ""
    status: str | None = None
    usage: UsageFields | None = None


class EventFields(msgspec.Struct):
    type: str = ""
    response: ResponseFields | None = None
    message: str | None = None  # of an `error` event


RESPONSE = msgspec.json.Decoder(ResponseFields)
EVENT = msgspec.json.Decoder(EventFields)


def usage_of(fields: ResponseFields) -> Usage | None:
    usage = fields.usage
    if usage is None:
        return None
    cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
    return Usage(usage.input_tokens, usage.output_tokens, cached)


def relayed_response(raw: bytes) -> Reply:
    """A Responses client's answer, as the upstream's bytes, once its usage is read."""
    fields = glance_at(RESPONSE, raw, "a response")
    if fields.object != "response":
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a response")
    return Reply(raw, usage_of(fields), WIRE)


class RelayedResponsesStream(RelayedEvents):
    format = WIRE

    def check(self, event: bytes, data: bytes) -> None:
        try:
            fields = EVENT.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            raise UpstreamError(FailureClass.PROTOCOL, "malformed stream event from upstream") from None
        kind = event or fields.type.encode()
        if kind in FAILURES:
            raise UpstreamError(FailureClass.PROTOCOL, fields.message or "the upstream's response failed")
        if kind in ENDS and fields.response is not None:
            self.usage = usage_of(fields.response)
            self.done = True
