"""What went wrong at an upstream: the failure taxonomy every layer speaks.

Every upstream failure is classified once, where it is seen:

    class        what                                    router's default reading
    rate_limit   429                                     retry (if listed), cool down
    overloaded   503, 529 (Anthropic overloaded_error)   retry (if listed), cool down
    server       any other 5xx                           retry (if listed), cool down
    timeout      connect / first byte / idle deadline    retry (if listed), cool down
    connect      refused, reset, DNS, TLS                retry (if listed), cool down
    auth         401, 403: deployment misconfigured      no retry, fall back, counts
    not_found    404: wrong model or URL                 no retry, fall back, counts
    client       400, 413, 422, other 4xx                back to the client as it came
    protocol     malformed answer or in-band error       no retry, fall back, counts
    redirect     3xx (redirects are never followed)      no retry, fall back, counts
    internal     the gateway's own fault (a bug)         no retry, fall back, does not count

The decision table over these classes lives in gatewayd.daemon.routing.retry.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import orjson


class FailureClass(str, Enum):
    RATE_LIMIT = "rate_limit"
    OVERLOADED = "overloaded"
    SERVER = "server"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    CLIENT = "client"
    PROTOCOL = "protocol"
    REDIRECT = "redirect"
    INTERNAL = "internal"  # an unexpected exception of the gateway: whoever caused it, not the deployment


def classify_status(status: int) -> FailureClass:
    if status == 429:
        return FailureClass.RATE_LIMIT
    if status in (503, 529):
        return FailureClass.OVERLOADED
    if status >= 500:
        return FailureClass.SERVER
    if status in (401, 403):
        return FailureClass.AUTH
    if status == 404:
        return FailureClass.NOT_FOUND
    if 300 <= status < 400:
        return FailureClass.REDIRECT
    return FailureClass.CLIENT


# What kind of error a client is told of, in no format's words: each client format's codec
# names it its own way (OpenAI's `invalid_request_error`, Anthropic's `not_found_error`, ...).
ERROR_KINDS = frozenset({"invalid_request", "authentication", "permission", "billing", "not_found",
                         "rate_limit", "server", "overloaded", "timeout", "upstream", "unavailable"})
DEFAULT_KINDS = {
    FailureClass.RATE_LIMIT: "rate_limit", FailureClass.OVERLOADED: "overloaded", FailureClass.SERVER: "server",
    FailureClass.TIMEOUT: "timeout", FailureClass.AUTH: "authentication", FailureClass.NOT_FOUND: "not_found",
    FailureClass.CLIENT: "invalid_request",
}


class UpstreamError(Exception):
    """One failed attempt at one deployment.

    What the client is told when the failure is its own (a 400 or 422 the router returns) is
    neutral: `kind` (one of ERROR_KINDS), `code`, `param` and `message`, which the client's
    codec writes in its format. `body`, when set, is the upstream's own error answer in
    `body_format` (already scrubbed of secrets): it goes to a client of that same format as
    it came.
    """

    def __init__(
        self,
        failure: FailureClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        kind: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: bytes | None = None,
        body_format: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.kind = kind or DEFAULT_KINDS.get(failure, "upstream")
        self.code = code
        self.param = param
        self.body = body
        self.body_format = body_format

    def describe(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.failure.value}{status}: {self.message}"


def upstream_json(data: bytes, malformed: str) -> Any:
    """`data` parsed as JSON; text that is not JSON is the upstream's protocol failure, `malformed`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(FailureClass.PROTOCOL, malformed) from None
