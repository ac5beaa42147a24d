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


class UpstreamError(Exception):
    """One failed attempt at one deployment.

    `body` is an OpenAI-shaped error body, already scrubbed of secrets; it is
    what the client receives when the failure is the client's own (400/422).
    """

    def __init__(
        self,
        failure: FailureClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body

    def describe(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.failure.value}{status}: {self.message}"
