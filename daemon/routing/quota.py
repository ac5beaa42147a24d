"""Admission control: an app key's limits and budget, checked once before routing, and a
deployment's quota (its upstream's `rpm`, `tpm`, `concurrency`), booked at each try.

    estimate_tokens   what a request is assumed to use: body bytes / 4 plus its maximum output
    Quotas.admit_key  a `KeyTicket` for a key within its limits and budget, else `Refused`
                      (a 429 the client is told before any upstream call)
    KeyTicket         settles the key's token reservation, concurrency and spend at the end
    quota_wait        how long a deployment is at its `rpm`/`tpm` (the `limit` verdict's reason)
    Quotas.lease      books one try at a deployment, atomically with the check
    Lease             settles that try's token reservation from the answer's usage

The counters live in a `CounterStore` (daemon/state/counters.py); the limits are read from
the graph of each request, so a reload's new limit applies at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gatewayd.daemon.core.graph import AppKey, Budget, Deployment, Graph, Limits, Route
from gatewayd.daemon.state.counters import CounterStore, DeploymentUsage, Entry, KeyUsage, Window

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 1024  # a request's output when neither it nor its deployments name a maximum
MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def requested_output(body: dict) -> int | None:
    """The maximum output the request names (OpenAI chat, Anthropic, Responses), if any."""
    for name in MAX_OUTPUT_FIELDS:
        value = body.get(name)
        if type(value) is int and value > 0:
            return value
    return None


def estimate_tokens(body: dict, size: int, graph: Graph, route: Route, answers: bool = True) -> int:
    """Prompt bytes / 4 plus the output the request asks for at most, else the largest
    `max_output_tokens` among the route's deployments, else DEFAULT_OUTPUT_TOKENS; an
    embeddings request (`answers` False) has no output."""
    if not answers:
        return size // BYTES_PER_TOKEN
    output = requested_output(body)
    if output is None:
        deployments = graph.deployments
        named = [deployments[name].max_output_tokens for name in route.deployments()
                 if deployments[name].max_output_tokens]
        output = max(named) if named else DEFAULT_OUTPUT_TOKENS
    return size // BYTES_PER_TOKEN + output


def duration(seconds: float) -> str:
    """A reset time as OpenAI's `x-ratelimit-reset-*` headers write it: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def period_bounds(period: str, now: float, zone: str) -> tuple[float, float]:
    """The start and end (wall clock) of the budget period containing `now`: a day from local
    midnight, a week from Monday, a month from the 1st, in `zone`."""
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start -= timedelta(days=start.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = start.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    else:
        end = start + timedelta(days=1)
    # ZoneInfo gives each local time its own offset: across a DST change the bounds are still midnights
    return start.timestamp(), end.timestamp()


class Refused(Exception):
    """A request its key may not make now: what the client is told (a 429), and why in one
    word for /metrics (`reason`: key_rpm, key_tpm, key_concurrency, budget)."""

    def __init__(self, code: str, message: str, reason: str, retry_after: float,
                 headers: dict[str, str]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after
        self.headers = headers


@dataclass(slots=True)
class KeyTicket:
    """One admitted request's bookings against its key, settled once at its end."""

    key: AppKey
    usage: KeyUsage
    tokens: Entry | None  # the reservation in the key's token window
    concurrent: bool  # counted in the key's requests in flight
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, on every answer
    settled: bool = False

    def settle(self, used_tokens: int | None, cost: float | None, answered: bool) -> None:
        """The request ended: its reservation becomes what the answer used (released when it
        failed without an answer), its slot frees, its cost joins the key's spend."""
        if self.settled:
            return
        self.settled = True
        if self.tokens is not None:
            if used_tokens is not None:
                self.usage.tokens.settle(self.tokens, max(0, used_tokens))
            elif not answered:
                self.usage.tokens.settle(self.tokens, 0)
        if self.concurrent:
            self.usage.inflight -= 1
        if cost:
            self.usage.spent += cost


@dataclass(slots=True)
class Lease:
    """One try at a deployment with a quota: its request counted, its tokens reserved."""

    usage: DeploymentUsage
    tokens: Entry | None

    def settle(self, used_tokens: int | None) -> None:
        if self.tokens is not None and used_tokens is not None:
            self.usage.tokens.settle(self.tokens, max(0, used_tokens))
            self.tokens = None

    def release(self) -> None:
        """The try failed: the upstream counted its request, but no tokens were used."""
        if self.tokens is not None:
            self.usage.tokens.settle(self.tokens, 0)
            self.tokens = None


def quota_wait(limits: Limits, usage: DeploymentUsage | None, tokens: int, now: float) -> tuple[str, float] | None:
    """Whether a deployment is at its `rpm` or `tpm` for a request of `tokens`: the limit in
    words (`limit rpm 500`) and the seconds until it has room; None when it has room now."""
    if usage is None:
        return None
    if limits.rpm is not None:
        wait = usage.requests.wait(limits.rpm, 1, now)
        if wait:
            return f"limit rpm {limits.rpm}", wait
    if limits.tpm is not None:
        wait = usage.tokens.wait(limits.tpm, tokens, now)
        if wait:
            return f"limit tpm {limits.tpm}", wait
    return None


def headroom(window: Window, limit: int, now: float) -> dict:
    used = window.used(now)
    return {"limit": limit, "used": used, "remaining": max(0, limit - used)}


class Quotas:
    """Admission against the counters of one `CounterStore`."""

    def __init__(self, store: CounterStore) -> None:
        self.store = store

    def admit_key(self, key: AppKey, tokens: int, now: float, zone: str) -> KeyTicket:
        """Book a request against its key's limits and budget, all or nothing; raise `Refused`."""
        usage = self.store.key(key.identity)
        limits, budget = key.limits, key.budget
        if budget is not None:
            self.check_budget(key.name, budget, usage, now, zone)
        if limits is None:
            return KeyTicket(key, usage, None, False)
        refusal: tuple[str, str, float] | None = None
        if limits.rpm is not None:
            wait = usage.requests.wait(limits.rpm, 1, now)
            if wait:
                refusal = ("key_rpm", f"{limits.rpm} requests per minute", wait)
        if refusal is None and limits.tpm is not None:
            wait = usage.tokens.wait(limits.tpm, tokens, now)
            if wait:
                detail = (f"{limits.tpm} tokens per minute" if tokens <= limits.tpm else
                          f"{limits.tpm} tokens per minute, and this request alone is estimated at {tokens}")
                refusal = ("key_tpm", detail, wait)
        if refusal is None and limits.concurrency is not None and usage.inflight >= limits.concurrency:
            refusal = ("key_concurrency", f"{limits.concurrency} requests at a time", 1.0)
        if refusal is not None:
            reason, detail, wait = refusal
            raise Refused("rate_limit_exceeded", f"the app key '{key.name}' is over its limit of {detail}; "
                          f"retry in {math.ceil(wait)}s", reason, wait, self.headers(limits, usage, now))
        if limits.rpm is not None:
            usage.requests.add(1, now)
        entry = usage.tokens.add(tokens, now) if limits.tpm is not None else None
        if limits.concurrency is not None:
            usage.inflight += 1
        return KeyTicket(key, usage, entry, limits.concurrency is not None, self.headers(limits, usage, now))

    @staticmethod
    def check_budget(name: str, budget: Budget, usage: KeyUsage, now: float, zone: str) -> None:
        start, end = period_bounds(budget.period, now, zone)
        if usage.period_start != start:
            usage.period_start, usage.spent = start, 0.0
        if usage.spent >= budget.usd:
            resets = datetime.fromtimestamp(end, ZoneInfo(zone)).isoformat(timespec="seconds")
            raise Refused("budget_exceeded", f"the app key '{name}' has spent ${usage.spent:.4f} of its "
                          f"${budget.usd:g} budget for this {budget.period}; it resets at {resets}",
                          "budget", max(1.0, end - now), {})

    @staticmethod
    def headers(limits: Limits, usage: KeyUsage, now: float) -> dict[str, str]:
        """`x-ratelimit-*` as OpenAI sends them: what remains after this request, and when the
        window is empty again."""
        headers = {}
        if limits.rpm is not None:
            used = usage.requests.used(now)
            headers["x-ratelimit-limit-requests"] = str(limits.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - used))
            headers["x-ratelimit-reset-requests"] = duration(usage.requests.reset_in(now))
        if limits.tpm is not None:
            used = usage.tokens.used(now)
            headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - used))
            headers["x-ratelimit-reset-tokens"] = duration(usage.tokens.reset_in(now))
        return headers

    def usage_of(self, deployment: Deployment) -> DeploymentUsage | None:
        """A deployment's counters, when it has a quota (None: nothing to count)."""
        return self.store.deployment(deployment.identity) if deployment.limits is not None else None

    @staticmethod
    def lease(limits: Limits, usage: DeploymentUsage, tokens: int, now: float) -> Lease | None:
        """Book one try at a deployment if its `rpm`/`tpm` have room now, else None."""
        if quota_wait(limits, usage, tokens, now) is not None:
            return None
        if limits.rpm is not None:
            usage.requests.add(1, now)
        return Lease(usage, usage.tokens.add(tokens, now) if limits.tpm is not None else None)


def key_status(key: AppKey, usage: KeyUsage | None, now: float, zone: str) -> dict:
    """One key's usage and headroom, as /admin/status shows it."""
    usage = usage or KeyUsage()
    result: dict = {"priority": key.priority}
    limits = key.limits
    if limits is not None:
        shown: dict = {}
        if limits.rpm is not None:
            shown["rpm"] = headroom(usage.requests, limits.rpm, now)
        if limits.tpm is not None:
            shown["tpm"] = headroom(usage.tokens, limits.tpm, now)
        if limits.concurrency is not None:
            shown["concurrency"] = {"limit": limits.concurrency, "used": usage.inflight,
                                    "remaining": max(0, limits.concurrency - usage.inflight)}
        result["limits"] = shown
    budget = key.budget
    if budget is not None:
        start, end = period_bounds(budget.period, now, zone)
        spent = usage.spent if usage.period_start == start else 0.0
        result["budget"] = {"usd": budget.usd, "period": budget.period, "spent": round(spent, 6),
                            "remaining": round(max(0.0, budget.usd - spent), 6),
                            "resets_at": datetime.fromtimestamp(end, ZoneInfo(zone)).isoformat(timespec="seconds")}
    return result


def deployment_limits_status(limits: Limits, usage: DeploymentUsage | None, now: float) -> dict:
    """A deployment's quota, its usage and headroom, as /admin/status shows it."""
    usage = usage or DeploymentUsage()
    shown: dict = {}
    if limits.rpm is not None:
        shown["rpm"] = headroom(usage.requests, limits.rpm, now)
    if limits.tpm is not None:
        shown["tpm"] = headroom(usage.tokens, limits.tpm, now)
    if limits.concurrency is not None:
        slots = usage.slots
        shown["concurrency"] = {"limit": limits.concurrency, "used": slots.inflight,
                                "remaining": max(0, limits.concurrency - slots.inflight), "queued": slots.queued}
    return shown

