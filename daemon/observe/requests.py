"""The request ring: the latest `/v1` requests and their way through the plan, for
`GET /admin/requests` and `GET /admin/requests/{id}`.

A `Trail` rides along with one request. The router notes each attempt on it as it begins and
ends (the deployment, when it began and how long it took, the status or failure class, the
upstream's Retry-After, and what came next and why) and leaves on it why candidates were
passed over; the pipeline adds the outcome's code, and at the end hands its access record to
`RequestRing.keep`, which keeps both. The JSON is built only when an operator asks for it.

What the ring shows is names, numbers and the gateway's own words: never a body, an
upstream's error message (which may quote the prompt), an app key or a provider credential.
With `telemetry:` on, a Trail also carries its request's spans (tracing.py).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.observe.logformat import iso_utc

if TYPE_CHECKING:
    from gatewayd.daemon.core.failures import UpstreamError
    from gatewayd.daemon.core.graph import Deployment, RetryPolicy
    from gatewayd.daemon.observe.accesslog import AccessRecord
    from gatewayd.daemon.observe.tracing import RequestSpans, Tracing

NEVER_RETRIED = frozenset({FailureClass.AUTH, FailureClass.NOT_FOUND, FailureClass.PROTOCOL,
                           FailureClass.REDIRECT, FailureClass.INTERNAL})
KEY_REFUSALS = frozenset({"rate_limit_exceeded", "budget_exceeded"})
MAX_LIMIT = 1000  # the most entries one GET /admin/requests answers


class Attempt(msgspec.Struct, gc=False):
    """One try at one deployment. `then` says what the router did next, and why. (A Struct, as
    is Trail: one is made for every try, its constructor runs in C, and neither refers to
    anything that refers back to it, so the garbage collector need not track them.)"""

    deployment: str
    began: float  # monotonic
    duration: float | None = None
    status: int | None = None
    failure: str | None = None
    retry_after: float | None = None
    then: str | None = None
    span: Any = None  # its client span, with telemetry on


class Trail(msgspec.Struct, gc=False):
    """What one request's entry in the ring keeps beyond its access record."""

    began: float  # monotonic, as the pipeline's `started`
    spans: RequestSpans | None = None
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    skipped: dict[str, str] | None = None  # the router's reasons by candidate (its Trip's, shared)
    code: str | None = None  # the error code the client was told
    key_limited: bool = False  # the app key has limits or a budget, and was admitted
    record: AccessRecord | None = None

    # -- the router's notes -------------------------------------------------------------

    def attempt(self, deployment: Deployment) -> Attempt:
        """An attempt at `deployment` begins now."""
        noted = Attempt(deployment.name, time.monotonic())
        self.attempts.append(noted)
        if self.spans is not None:
            self.spans.attempt_started(noted, deployment)
        return noted

    def answered(self, noted: Attempt) -> None:
        """The attempt answered (a stream: its first event came)."""
        noted.duration = time.monotonic() - noted.began
        noted.status = 200
        if self.spans is not None:
            self.spans.attempt_answered(noted)

    def failed(self, noted: Attempt, error: UpstreamError, action: str, delay: float, tries: int,
               retry: RetryPolicy, retrying: bool) -> None:
        """The attempt failed with `error`; the retry table said `action` (`retry`, `fall_back`,
        `return`) after `tries` tries at this deployment, and the router retries or not."""
        noted.duration = time.monotonic() - noted.began
        noted.status, noted.failure, noted.retry_after = error.status, error.failure.value, error.retry_after
        noted.then = why_next(error, action, delay, tries, retry, retrying)
        if self.spans is not None:
            self.spans.attempt_failed(noted)

    # -- the JSON an operator reads -------------------------------------------------------

    def describe(self, now: float, wall: float) -> dict[str, Any]:
        """This request as `/admin/requests` shows it; `now` and `wall` are one instant on the
        monotonic and the wall clock."""
        r = self.record
        began = self.began
        entry: dict[str, Any] = {
            "id": r.request_id, "at": iso_utc(wall - (now - began)), "method": r.method, "path": r.path,
            "format": r.format, "model": r.model, "config": r.config, "key": r.key,
            "status": r.status, "outcome": self.outcome(), "deployment": r.deployment,
            "attempts": [{"deployment": a.deployment, "start_ms": round((a.began - began) * 1000, 3),
                          "duration_ms": None if a.duration is None else round(a.duration * 1000, 3),
                          "status": a.status, "failure": a.failure, "retry_after": a.retry_after,
                          "then": a.then} for a in self.attempts],
            "skipped": self.passed_over(), "cache": r.cache, "limits": self.limits(),
            "tokens": None if r.prompt_tokens is None else {"prompt": r.prompt_tokens,
                                                            "completion": r.completion_tokens},
            "cost": r.cost, "latency_ms": round(r.latency_ms, 3),
            "ttfb_ms": None if r.ttfb_ms is None else round(r.ttfb_ms, 3),
        }
        return entry

    def outcome(self) -> str:
        """`answered`, `stream_failed` (after its first byte), `client_disconnected`, or the code
        of the error the client was told."""
        r = self.record
        if self.code is not None:
            return self.code
        if r.status == 200:
            if r.error is None:
                return "answered"
            return "client_disconnected" if r.error in ("client disconnected", "cancelled") else "stream_failed"
        return "failed"

    def passed_over(self) -> dict[str, str]:
        """Why the candidates that were never tried were passed over. A cooling deployment's
        reason ends with its last error, an upstream's message: only the gateway's part is kept."""
        tried = {a.deployment for a in self.attempts}
        return {name: why.partition(" after ")[0] for name, why in (self.skipped or {}).items()
                if name not in tried}

    def limits(self) -> dict[str, str] | None:
        if self.code in KEY_REFUSALS:
            return {"key": f"refused: {self.code}"}
        if self.key_limited:
            return {"key": "admitted"}
        return None


def why_next(error: UpstreamError, action: str, delay: float, tries: int, retry: RetryPolicy,
             retrying: bool) -> str:
    """What the router did after a failed attempt, and why, as the retry table (routing/retry.py)
    decided it."""
    if action == "return":
        return "returned to the client: the upstream refused the request itself"
    if action == "retry":
        if retrying:
            return f"retried after {delay:.3f}s"
        return "next candidate: no time left for a retry within timeouts.total"
    failure = error.failure
    if failure in NEVER_RETRIED:
        return f"next candidate: {failure.value} failures are never retried"
    if tries >= retry.attempts:
        return f"next candidate: retry.attempts ({retry.attempts}) spent"
    if error.retry_after is not None and error.retry_after > retry.retry_after_max:
        return (f"next candidate: Retry-After {error.retry_after:g}s is beyond "
                f"retry.retry_after_max ({retry.retry_after_max:g}s)")
    return "next candidate: retry.when does not list this failure"


class RequestRing:
    """The latest `size` requests' trails, oldest first. One is found by its request id by
    looking through them, newest first (a client's own id may come twice: its latest request
    answers): an operator's lookup walks at most `size` trails, so that no request pays for an
    index by id."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._trails: deque[Trail] = deque(maxlen=size or None)
        self.tracing: Tracing | None = None  # set by `trace_with` while `telemetry:` is on
        # whether requests need `begin` at all: read by the pipeline, so that with neither the
        # ring nor traces on a request makes no call here
        self.wanted = size > 0

    def resize(self, size: int) -> None:
        """`server.recent_requests` as a reload sets it: the newest entries stay."""
        if size == self.size:
            return
        self.size = size
        self.wanted = size > 0 or self.tracing is not None
        kept = list(self._trails)[-size:] if size else []
        self._trails = deque(kept, maxlen=size or None)

    def trace_with(self, tracing: Tracing | None) -> None:
        """`telemetry:` as a reload sets it: each trail from now on begins its spans there."""
        self.tracing = tracing
        self.wanted = self.size > 0 or tracing is not None

    def begin(self, started: float, headers, operation: str) -> Trail | None:
        """A request's trail, or None when neither the ring nor traces want one (callers that
        check `wanted` first make no call then)."""
        tracing = self.tracing
        if tracing is None:
            return Trail(started) if self.size else None
        return Trail(started, tracing.begin(started, headers, operation))

    def keep(self, trail: Trail, record: AccessRecord) -> None:
        """The request ended: its spans end, and its trail takes its place in the ring."""
        trail.record = record
        if trail.spans is not None:
            trail.spans.finish(trail, record)
            trail.spans = None  # the ring keeps what it shows, not the spans
            for noted in trail.attempts:
                noted.span = None
        if self.size:
            self._trails.append(trail)  # when full, the deque lets its oldest go

    def find(self, request_id: str) -> dict[str, Any] | None:
        for trail in reversed(self._trails):
            if trail.record.request_id == request_id:
                return trail.describe(time.monotonic(), time.time())
        return None

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` entries, newest first."""
        now, wall = time.monotonic(), time.time()
        trails = self._trails
        count = min(limit, len(trails))
        return [trails[-1 - index].describe(now, wall) for index in range(count)]

    def __len__(self) -> int:
        return len(self._trails)
