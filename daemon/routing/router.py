"""The router: delivers one request to the best usable deployment.

`Router.route()` walks the plan of the request's graph snapshot: orders each
tier by its strategy, drops candidates that `admission.judge` finds unusable
(incapable, disabled, outside their windows, at their quota, cooling down,
half-open with a probe in flight), and tries the rest in order, retrying and
falling back as `policy.decide` says; every try is booked through the
deployment's `DeploymentHealth` from the `HealthStore`, and against its quota
(`quota.Quotas`): a deployment at its `concurrency` makes the request wait in
its queue up to `queue.max_wait` first. It returns an `Outcome` (a complete
reply, or an open stream whose first event has arrived) or raises
`RoutingFailed`.

Streams: retries and fallbacks happen only until the first event is in hand;
after that the HTTP layer relays and reports the end through `finish_stream`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gatewayd.daemon.core.exchange import Request
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import Deployment, Route
from gatewayd.daemon.core.replies import Reply, ReplyStream, StreamEvent
from gatewayd.daemon.routing.admission import CAPABILITY, COOLDOWN, HALF_OPEN, LIMITED, Verdict, judge
from gatewayd.daemon.routing.deadlines import Deadlines
from gatewayd.daemon.routing.quota import Lease, Quotas
from gatewayd.daemon.routing.retry import Action, decide
from gatewayd.daemon.routing.strategies import Strategies
from gatewayd.daemon.state.counters import LocalCounterStore, Slots
from gatewayd.daemon.state.shared import Over
from gatewayd.daemon.state.store import DeploymentHealth, HealthStore

if TYPE_CHECKING:
    from gatewayd.daemon.routing.snapshot import Snapshot

log = logging.getLogger("gatewayd")


class RoutingObserver:
    """Hooks for metrics and events; the base class ignores everything."""

    def attempt_failed(self, deployment: str, error: UpstreamError) -> None:
        pass

    def fell_back(self, route: str, deployment: str, error: UpstreamError) -> None:
        pass

    def rejected(self, reason: str) -> None:
        """A request was refused at a limit (`deployment_rpm`, `deployment_tpm`, `queue_timeout`)."""

    def queued(self, deployment: str, waited: float, admitted: bool) -> None:
        """A request waited `waited` seconds in a deployment's queue, and got a slot or not."""


@dataclass(slots=True)
class Outcome:
    deployment: Deployment
    health: DeploymentHealth
    attempts: int
    reply: Reply | None = None
    stream: ReplyStream | None = None
    events: object = None  # the stream's async iterator, already advanced past `first`
    first: bytes | StreamEvent | None = None  # the stream's first event
    latency: float = 0.0  # seconds from sending to the answer (a stream's first event)
    probe: bool = False  # this request is its deployment's half-open probe


class InFlightStream:
    """A relayed stream that counts as in flight at its deployment until it is closed, so
    that least-busy sees the streams being relayed, not only the requests still starting."""

    __slots__ = ("_stream", "_health", "_lease", "_slot")

    def __init__(self, stream: ReplyStream, health: DeploymentHealth, lease: Lease | None = None,
                 slot: Slots | None = None) -> None:
        self._stream: ReplyStream = stream
        self._health: DeploymentHealth | None = health
        self._lease = lease  # settled from the stream's usage at its end
        self._slot = slot  # the deployment's concurrency slot, held until the end
        health.started()

    @property
    def usage(self):
        return self._stream.usage

    @property
    def done(self) -> bool:
        return self._stream.done

    @property
    def format(self):
        return self._stream.format

    def __aiter__(self):
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.finished()
            self._health = None
            if self._lease is not None:
                usage = self._stream.usage
                if usage is not None:
                    self._lease.settle(usage.prompt_tokens + usage.completion_tokens)
            if self._slot is not None:
                self._slot.release()
        await self._stream.aclose()


@dataclass(slots=True)
class RoutingFailed(Exception):
    """Routing ended without an answer: what the client is told (`status`, `code`, `message`),
    or, for a request its upstream refused as the client's fault, `upstream_error`."""

    status: int
    code: str
    message: str
    attempts: int
    retry_after: float | None = None
    upstream_error: UpstreamError | None = None  # the client's error, told as the upstream told it
    deployment: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Trip:
    """One request's way through its plan: what it has tried and why candidates were out."""

    route: str
    request: Request
    deadline: float  # monotonic: the request's total deadline
    priority: str = "normal"  # its key's: its place in a deployment's queue
    tokens: int = 0  # the request's estimated tokens, for deployments' `tpm`
    arrival: float = 0.0  # monotonic: its place among equals in a queue
    attempts: int = 0
    capable: int = 0  # candidates whose provider type can serve this operation at all
    reasons: dict[str, str] = field(default_factory=dict)
    rate_limited: list[bool] = field(default_factory=list)
    cooldown_ends: list[float] = field(default_factory=list)  # wall clock
    last_error: UpstreamError | None = None
    trail: Any = None  # observe/requests.Trail: the request ring's (and traces') notes of each attempt


class Router:
    def __init__(self, health: HealthStore, strategies: Strategies | None = None,
                 observer: RoutingObserver | None = None, deadlines: Deadlines | None = None,
                 quotas: Quotas | None = None, probes=None) -> None:
        self.health = health
        # with shared state: `claim(deployment)`, awaited for a half-open probe, says whether
        # this instance may be the one that probes it (None: this process decides alone)
        self.probes = probes
        self.strategies = strategies or Strategies()
        self.observer = observer or RoutingObserver()
        self.deadlines = deadlines or Deadlines()
        self.quotas = quotas or Quotas(LocalCounterStore())

    async def route(self, snapshot: Snapshot, route: Route, request: Request, priority: str = "normal",
                    tokens: int = 0, trail: Any = None) -> Outcome:
        """`priority` and `tokens` (the estimate) matter only at deployments with limits; `trail`,
        when given, is told of each attempt and keeps the reasons candidates were passed over."""
        deployments = snapshot.graph.deployments
        now = time.monotonic()
        trip = Trip(route.name, request, now + snapshot.graph.default_policy.timeouts.total, priority, tokens, now)
        if trail is not None:
            trip.trail, trail.skipped = trail, trip.reasons

        def health_of(candidate) -> DeploymentHealth:
            return self.health.get(deployments[candidate.deployment])

        for tier in route.tiers:
            for candidate in self.strategies.order(tier, health_of, deployments):
                deployment = deployments[candidate.deployment]
                adapter = snapshot.adapters[deployment.provider.name]
                health = self.health.get(deployment)
                verdict = self.admit(trip, deployment, adapter, health)
                if verdict.probe and self.probes is not None and not await self.probes.claim(deployment, health):
                    trip.reasons[deployment.name] = "half-open: another instance is probing it"
                    continue
                if verdict.usable:
                    outcome = await self.try_deployment(trip, deployment, adapter, health, verdict.probe)
                    if outcome is not None:
                        return outcome
        if trip.capable == 0 and trip.reasons:  # no deployment of this route can do it at all: the request's fault
            raise RoutingFailed(400, "unsupported_operation", f"'{route.name}' has no deployment that serves "
                                f"{request.capability}: " + describe(trip.reasons), trip.attempts, reasons=trip.reasons)
        raise self.exhausted(trip)

    def admit(self, trip: Trip, deployment: Deployment, adapter, health: DeploymentHealth) -> Verdict:
        """May this request use `deployment` now? A half-open deployment's
        probe is claimed for it; a candidate that is out has its reason noted in `trip`, for
        the answer when nothing is usable (step 10)."""
        # a deployment's quota is checked where its try is booked (try_deployment), in the same step
        verdict = judge(deployment, health, time.time(), trip.request.capability, adapter.capabilities, claim=True)
        if verdict.usable:
            trip.capable += 1
            return verdict
        if verdict.out is not CAPABILITY:
            trip.capable += 1
        trip.reasons[deployment.name] = verdict.reason
        if verdict.out is COOLDOWN:
            trip.cooldown_ends.append(verdict.cooldown_until)
        if verdict.out in (COOLDOWN, HALF_OPEN):
            trip.rate_limited.append(verdict.rate_limited)
        return verdict

    def at_quota(self, trip: Trip, deployment: Deployment, usage) -> None:
        """`deployment` is at its `rpm` or `tpm` for this request: skipped like a cooling one,
        and its quota counts as rate limited (SPEC 3.10)."""
        verdict = judge(deployment, None, time.time(), usage=usage, tokens=trip.tokens)
        trip.reasons[deployment.name] = verdict.reason or "at its limit"
        trip.rate_limited.append(True)
        if verdict.out is LIMITED:
            trip.cooldown_ends.append(verdict.cooldown_until)
            self.observer.rejected("deployment_rpm" if " rpm " in verdict.reason else "deployment_tpm")

    async def try_deployment(self, trip: Trip, deployment: Deployment, adapter, health: DeploymentHealth,
                             probe: bool) -> Outcome | None:
        """Up to `retry.attempts` tries at one deployment. Returns the
        outcome, or None when the deployment failed and the next candidate is due; raises
        RoutingFailed when the request ends here (a client error, the total deadline)."""
        name, policy = deployment.name, deployment.policy
        error: UpstreamError | None = None
        deadline_hit = False  # the request's total deadline cut the last attempt short
        settled = False  # the attempt's verdict is booked (success or failure)
        limits = deployment.limits
        quotas = self.quotas
        usage = quotas.store.deployment(deployment.identity) if limits is not None else None
        slot = usage.slots if usage is not None and limits.concurrency is not None else None
        shared = quotas.shared  # Redis books rpm and tpm; a concurrency queue is this instance's share
        holding = False  # this request holds a concurrency slot at the deployment
        try:
            if slot is not None:
                capacity = limits.concurrency if shared is None else quotas.share(limits).concurrency
                slot.limit = capacity
                if slot.inflight < capacity and not slot.waiters:  # Slots.try_take, written out: every try
                    slot.inflight += 1
                    holding = True
                else:
                    holding = await self.take_slot(trip, deployment, slot, capacity)
                    if not holding:
                        return None
            for attempt in range(1, policy.retry.attempts + 1):
                remaining = trip.deadline - time.monotonic()
                if remaining <= 0:
                    raise self.timed_out(trip, name)
                lease = None
                if usage is not None and (limits.rpm is not None or limits.tpm is not None):
                    if shared is None:
                        lease = quotas.lease(limits, usage, trip.tokens, time.time())
                    else:
                        lease = await quotas.lease_shared(deployment, usage, trip.tokens, time.time())
                        if type(lease) is Over:
                            self.at_shared_quota(trip, deployment, lease)
                            return None
                    if lease is None:
                        self.at_quota(trip, deployment, usage)
                        return None
                trip.attempts += 1
                error = None
                began = time.monotonic()
                first_byte = min(policy.timeouts.first_byte, policy.timeouts.total)
                total_bound = remaining < first_byte  # this attempt ends with the request's deadline
                health.started()
                noted = trip.trail.attempt(deployment) if trip.trail is not None else None
                try:
                    outcome = await self.attempt(adapter, deployment, trip.request, min(first_byte, remaining))
                except UpstreamError as exc:
                    error = exc
                except TimeoutError:
                    deadline_hit = total_bound
                    error = UpstreamError(FailureClass.TIMEOUT, "no answer before the request's total "
                                          "deadline (timeouts.total)" if total_bound else
                                          "no answer within the first-byte deadline")
                except Exception as exc:  # an adapter bug: not a 500, and not the deployment's failure
                    log.exception("the %s adapter failed unexpectedly", deployment.provider.type,
                                  extra={"event": "adapter_error", "deployment": deployment.name})
                    error = UpstreamError(FailureClass.INTERNAL, f"internal adapter error ({type(exc).__name__})")
                finally:
                    health.finished()
                if error is None:
                    outcome.deployment, outcome.health, outcome.attempts = deployment, health, trip.attempts
                    outcome.probe = probe
                    if noted is not None:
                        trip.trail.answered(noted)
                    outcome.latency = time.monotonic() - began
                    if outcome.stream is None:
                        health.succeed(outcome.latency)
                        if lease is not None:
                            used = outcome.reply.usage
                            lease.settle(used.prompt_tokens + used.completion_tokens if used else None)
                    else:  # in flight at its deployment, holding its slot, until the relay closes it
                        outcome.stream = InFlightStream(outcome.stream, health, lease, slot if holding else None)
                        holding = False
                    settled = True  # a stream's verdict comes in finish_stream
                    return outcome
                if lease is not None:
                    lease.release()
                self.observer.attempt_failed(name, error)
                decision = decide(error, policy.retry, attempt)
                retrying = decision.action is Action.RETRY and time.monotonic() + decision.delay < trip.deadline
                if noted is not None:
                    trip.trail.failed(noted, error, decision.action.value, decision.delay, attempt, policy.retry,
                                      retrying)
                if decision.action is Action.RETURN:
                    raise RoutingFailed(error.status or 400, "upstream_client_error", error.message, trip.attempts,
                                        upstream_error=error, deployment=name)
                if retrying:
                    await asyncio.sleep(decision.delay)
                    continue
                break
            assert error is not None
            if decision.counts:
                health.fail(error, policy.cooldown, time.time())
                settled = True
        finally:
            if probe and not settled:
                health.abandon_probe()
            if holding:
                if slot.waiters:
                    slot.release()
                else:  # Slots.release, written out: nobody waits for the slot
                    slot.inflight -= 1
        trip.reasons[name] = error.describe()
        if deadline_hit:
            raise self.timed_out(trip, name)
        cooldown_until = health.view().cooldown_until
        if cooldown_until > time.time():  # it started cooling: its end is known
            trip.cooldown_ends.append(cooldown_until)
        trip.rate_limited.append(error.failure is FailureClass.RATE_LIMIT)
        trip.last_error = error
        self.observer.fell_back(trip.route, name, error)
        return None

    def at_shared_quota(self, trip: Trip, deployment: Deployment, over: Over) -> None:
        """`at_quota` for a quota booked in Redis, which said which limit and when it has room."""
        limit = deployment.limits.rpm if over.limit == "rpm" else deployment.limits.tpm
        trip.reasons[deployment.name] = f"limit {over.limit} {limit}"
        trip.rate_limited.append(True)
        trip.cooldown_ends.append(time.time() + over.wait)
        self.observer.rejected(f"deployment_{over.limit}")

    async def take_slot(self, trip: Trip, deployment: Deployment, slots: Slots, limit: int) -> bool:
        """A concurrency slot at `deployment`: free now, or after waiting in its queue up to
        `queue.max_wait` (within the request's total deadline). False, with the reason noted,
        when none came: the next candidate is tried."""
        wait = min(deployment.queue_wait, trip.deadline - time.monotonic())
        began = time.monotonic()
        taken = wait > 0 and await slots.take(limit, trip.priority, trip.arrival, wait)
        if wait > 0:
            self.observer.queued(deployment.name, time.monotonic() - began, taken)
        if taken:
            return True
        waited = f" (no slot came within {wait:.3g}s in its queue)" if wait > 0 else ""
        trip.reasons[deployment.name] = f"limit concurrency {limit}{waited}"
        trip.rate_limited.append(True)
        self.observer.rejected("deployment_concurrency")
        return False

    async def attempt(self, adapter, deployment: Deployment, request: Request, first_byte: float) -> Outcome:
        """One try: the adapter's method for the request's operation (its `stream` for a chat
        that streams), bounded by the first-byte deadline."""
        with self.deadlines.bound(first_byte):
            if not request.stream:
                serve = getattr(adapter, request.operation)
                return Outcome(deployment, None, 0, reply=await serve(deployment, request))  # type: ignore[arg-type]
            stream = await adapter.stream(deployment, request)
            try:
                events = stream.__aiter__()
                first = await events.__anext__()
            except StopAsyncIteration:
                await stream.aclose()
                raise UpstreamError(FailureClass.PROTOCOL, "upstream stream ended before its first event") from None
            except BaseException:
                await stream.aclose()
                raise
            return Outcome(deployment, None, 0, stream=stream, events=events, first=first)  # type: ignore[arg-type]

    def timed_out(self, trip: Trip, name: str) -> RoutingFailed:
        trip.reasons.setdefault(name, "the request's total deadline passed")
        return RoutingFailed(504, "timeout", "the request's total deadline (timeouts.total) passed: "
                             + describe(trip.reasons), trip.attempts, reasons=trip.reasons)

    def exhausted(self, trip: Trip) -> RoutingFailed:
        status = 429 if trip.rate_limited and all(trip.rate_limited) else 503
        retry_after = None
        if trip.cooldown_ends:
            retry_after = max(1.0, math.ceil(min(trip.cooldown_ends) - time.time()))
        elif trip.last_error is not None and trip.last_error.retry_after is not None:
            retry_after = max(1.0, math.ceil(trip.last_error.retry_after))
        message = "no deployment available: " + (describe(trip.reasons) if trip.reasons else "the plan is empty")
        return RoutingFailed(status, "no_deployment_available", message, trip.attempts,
                             retry_after=retry_after, reasons=trip.reasons)

    def finish_stream(self, outcome: Outcome, error: UpstreamError | None) -> None:
        """Book the end of a relayed stream against its deployment."""
        health = outcome.health
        if error is None:
            health.succeed(outcome.latency)
        elif error.failure is FailureClass.INTERNAL:
            self.abandon_stream(outcome)
        else:
            health.fail(error, outcome.deployment.policy.cooldown, time.time())

    def abandon_stream(self, outcome: Outcome) -> None:
        """A relayed stream ended without a verdict (the client left, the gateway failed): if it
        was its deployment's half-open probe, the next request may probe; another stream leaves
        the probe of whichever request holds it alone."""
        if outcome.probe:
            outcome.health.abandon_probe()


def describe(reasons: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in reasons.items())

