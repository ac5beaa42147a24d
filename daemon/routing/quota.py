"""Admission control: an app key's limits and budget, checked once before routing, and a
deployment's quota (its upstream's `rpm`, `tpm`, `concurrency`), booked at each try.

    estimate_tokens   what a request is assumed to use: body bytes / 4 plus its maximum output
    Quotas.admit_key  a `KeyTicket` for a key within its limits and budget, else `Refused`
                      (a 429 the client is told before any upstream call)
    KeyTicket         settles the key's token reservation, concurrency and spend at the end
    quota_wait        how long a deployment is at its `rpm`/`tpm` (the `limit` verdict's reason)
    Quotas.lease      books one try at a deployment, atomically with the check
    Lease             settles that try's token reservation from the answer's usage
    Quotas.admit_key_shared, Quotas.lease_shared
                      the same through Redis (`state.backend: redis`): exact across instances;
                      while Redis is away, local counters with each limit divided by the
                      instances last seen (`share`)
    per_instance      a graph whose limits and budgets are divided among N workers that each
                      keep their own counters (`state.backend: local`, approximate)

The counters live in a `CounterStore` (daemon/state/counters.py); the limits are read from
the graph of each request, so a reload's new limit applies at once.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta
from math import ceil
from types import MappingProxyType
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import msgspec
from multidict import istr

from gatewayd.daemon.core.graph import AppKey, Budget, Deployment, Graph, Limits, Route
from gatewayd.daemon.state.counters import WINDOW, CounterStore, DeploymentUsage, Entry, KeyUsage, RequestWindow, Window
from gatewayd.daemon.state.shared import Over, Unavailable

if TYPE_CHECKING:
    from gatewayd.daemon.state.redis_counters import RedisCounters

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
    output = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    if type(output) is not int or output <= 0:  # none named, or the first named is not a count
        output = requested_output(body) or graph.output_tokens.get(route.name) or DEFAULT_OUTPUT_TOKENS
    return size // BYTES_PER_TOKEN + output


# The header names, made once as `istr` (multidict's case-insensitive str): CIMultiDict and
# aiohttp's header writer take one for less than a plain str, on every answer to a limited key.
LIMIT_REQUESTS = istr("x-ratelimit-limit-requests")
REMAINING_REQUESTS = istr("x-ratelimit-remaining-requests")
RESET_REQUESTS = istr("x-ratelimit-reset-requests")
LIMIT_TOKENS = istr("x-ratelimit-limit-tokens")
REMAINING_TOKENS = istr("x-ratelimit-remaining-tokens")
RESET_TOKENS = istr("x-ratelimit-reset-tokens")

# duration()'s answers up to a minute, looked up rather than formatted: a limited key's window in
# steady traffic has its oldest entry leaving within the second, at every request
SECONDS = tuple(f"{n}s" if n < 60 else f"{n // 60}m{n % 60}s" for n in range(61))
MILLISECONDS = tuple(f"{n}ms" for n in range(1000)) + ("1s",)  # over 999 ms: up to a whole second


def duration(seconds: float) -> str:
    """A reset time as OpenAI's `x-ratelimit-reset-*` headers write it: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return MILLISECONDS[max(0, math.ceil(seconds * 1000))]
    whole = math.ceil(seconds)
    return SECONDS[whole] if whole <= 60 else f"{whole // 60}m{whole % 60}s"


def period_bounds(period: str, now: float, zone: str) -> tuple[float, float]:
    """The start and end (wall clock) of the budget period containing `now`: a day from local
    midnight, a week from Monday, a month from the 1st, in `zone`."""
    # whole seconds: fromtimestamp rounds to the microsecond, which may cross a midnight
    local = datetime.fromtimestamp(math.floor(now), ZoneInfo(zone))
    # fold=0: where the hour after midnight repeats, the day began at the first midnight
    start = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
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


class KeyTicket(msgspec.Struct, gc=False):
    """One admitted request's bookings against its key, settled once at its end. (A Struct:
    its constructor runs in C; it refers to no object that refers back to it.)"""

    usage: KeyUsage | None  # None once settled
    tokens: Entry | None  # the reservation in the key's token window
    concurrent: bool  # counted in the key's requests in flight
    headers: dict[str, str]  # x-ratelimit-*, on every answer

    def settle(self, used_tokens: int | None, cost: float | None, answered: bool) -> None:
        """The request ended: its reservation becomes what the answer used (released when it
        failed without an answer), its slot frees, its cost joins the key's spend. Once only:
        a second call changes nothing."""
        usage, entry = self.usage, self.tokens
        if usage is None:
            return
        self.usage = None
        if entry is not None and (used_tokens is not None or not answered):
            used = used_tokens if used_tokens is not None and used_tokens > 0 else 0
            if entry.live:  # Window.settle, written out: every request of a limited key settles
                usage.window.total += used - entry.amount
            entry.amount = used
        if self.concurrent:
            usage.inflight -= 1
        if cost:
            usage.spent += cost


class Lease(msgspec.Struct, gc=False):
    """One try at a deployment with a quota: its request counted, its tokens reserved."""

    usage: DeploymentUsage
    tokens: Entry | None

    def settle(self, used_tokens: int | None) -> None:
        entry = self.tokens
        if entry is not None and used_tokens is not None:
            self.tokens = None
            used = used_tokens if used_tokens > 0 else 0
            if entry.live:  # Window.settle, written out: every try at a deployment with a tpm settles
                self.usage.tokens.total += used - entry.amount
            entry.amount = used

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


def counted(used: int, limit: int) -> dict:
    return {"limit": limit, "used": used, "remaining": max(0, limit - used)}


def headroom(window: Window | RequestWindow, limit: int, now: float) -> dict:
    return counted(window.used(now), limit)


class SharedTicket(msgspec.Struct, gc=False):
    """A `KeyTicket` booked in Redis: settled there, in the background, once."""

    counters: RedisCounters | None  # None once settled
    identity: tuple
    booking: str
    tokens: bool  # a token reservation to settle
    concurrent: bool
    headers: dict[str, str]
    period_start: float = 0.0
    period_end: float = 0.0

    def settle(self, used_tokens: int | None, cost: float | None, answered: bool) -> None:
        counters = self.counters
        if counters is None:
            return
        self.counters = None
        used = None
        if self.tokens and (used_tokens is not None or not answered):
            used = used_tokens if used_tokens is not None and used_tokens > 0 else 0
        if used is not None or self.concurrent or cost:
            counters.settle(self.identity, self.booking, used, self.concurrent, cost, self.period_start,
                            self.period_end)


class SharedLease(msgspec.Struct, gc=False):
    """A `Lease` booked in Redis."""

    counters: RedisCounters
    identity: tuple
    booking: str
    tokens: bool  # a token reservation not settled yet

    def settle(self, used_tokens: int | None) -> None:
        if self.tokens and used_tokens is not None:
            self.tokens = False
            self.counters.settle(self.identity, self.booking, used_tokens, False)

    def release(self) -> None:
        if self.tokens:
            self.tokens = False
            self.counters.settle(self.identity, self.booking, 0, False)


def divided(limits: Limits | None, by: int) -> Limits | None:
    """One of `by` instances' share of `limits`: each divided, rounded down, at least 1."""
    if limits is None or by <= 1:
        return limits

    def share(limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // by)

    return Limits(share(limits.rpm), share(limits.tpm), share(limits.concurrency))


def divided_key(key: AppKey, by: int) -> AppKey:
    budget = key.budget
    return replace(key, limits=divided(key.limits, by),
                   budget=Budget(budget.usd / by, budget.period) if budget is not None and by > 1 else budget)


def per_instance(graph: Graph, by: int) -> Graph:
    """`graph` with every app key's limits and budget and every deployment's quota divided by
    `by`: what each of `by` workers keeping its own counters applies."""
    if by <= 1:
        return graph
    deployments = {name: replace(d, limits=divided(d.limits, by)) if d.limits is not None else d
                   for name, d in graph.deployments.items()}
    keys = graph.server.keys
    server = replace(graph.server, keys=tuple(divided_key(k, by) for k in keys)) if keys else graph.server
    return replace(graph, server=server, deployments=MappingProxyType(deployments))


class Quotas:
    """Admission against the counters of one `CounterStore`, and of Redis when `shared`."""

    def __init__(self, store: CounterStore, shared: RedisCounters | None = None) -> None:
        self.store = store
        self.shared = shared
        self._shares: dict[tuple, tuple] = {}  # (id of a key or limits, instances) -> (it, its share)

    def share(self, owner, by_instances=divided):
        """`owner`'s (an AppKey or Limits) share for one of the instances last seen."""
        instances = self.shared.link.instances if self.shared is not None else 1
        found = self._shares.get((id(owner), instances))
        if found is None or found[0] is not owner:
            if len(self._shares) > 4096:  # old graphs' keys: start again rather than grow
                self._shares.clear()
            found = self._shares[(id(owner), instances)] = (owner, by_instances(owner, instances))
        return found[1]

    async def admit_key_shared(self, key: AppKey, tokens: int, now: float, zone: str,
                               hold: float) -> KeyTicket | SharedTicket:
        """`admit_key` through Redis, exact across instances; `hold` bounds how long a concurrency
        claim counts if its instance never settles it. Redis away: `admit_key` on local counters
        with the key's share."""
        budget, limits = key.budget, key.limits
        start = end = 0.0
        if budget is not None:
            start, end = period_bounds(budget.period, now, zone)
        try:
            booked = await self.shared.book(
                key.identity, now, tokens, limits.rpm if limits else None, limits.tpm if limits else None,
                limits.concurrency if limits else None, hold, budget.usd if budget else None, start)
        except Unavailable:
            return self.admit_key(self.share(key, divided_key), tokens, now, zone)
        if type(booked) is Over:
            raise self.shared_refusal(key, booked, tokens, now, zone, end)
        headers = {}
        if limits is not None:
            if limits.rpm is not None:
                headers[LIMIT_REQUESTS] = limits.rpm_text
                headers[REMAINING_REQUESTS] = str(max(0, limits.rpm - booked.requests))
                headers[RESET_REQUESTS] = duration(booked.oldest_request + WINDOW - now)
            if limits.tpm is not None:
                headers[LIMIT_TOKENS] = limits.tpm_text
                headers[REMAINING_TOKENS] = str(max(0, limits.tpm - booked.tokens))
                headers[RESET_TOKENS] = duration(booked.oldest_tokens + WINDOW - now)
        return SharedTicket(self.shared, key.identity, booked.id, limits is not None and limits.tpm is not None,
                            limits is not None and limits.concurrency is not None, headers, start, end)

    def shared_refusal(self, key: AppKey, over: Over, tokens: int, now: float, zone: str, end: float) -> Refused:
        limits = key.limits
        if over.limit == "budget":
            usage = KeyUsage()
            usage.spent, usage.period_end = over.spent, end
            return self.over_budget(key.name, key.budget, usage, now, zone)
        headers = {}
        if over.limit == "rpm":
            reason, detail = "key_rpm", f"{limits.rpm} requests per minute"
            headers = {LIMIT_REQUESTS: limits.rpm_text, REMAINING_REQUESTS: "0",
                       RESET_REQUESTS: duration(over.wait)}
        elif over.limit == "tpm":
            reason = "key_tpm"
            detail = (f"{limits.tpm} tokens per minute" if tokens <= limits.tpm else
                      f"{limits.tpm} tokens per minute, and this request alone is estimated at {tokens}")
            headers = {LIMIT_TOKENS: limits.tpm_text, REMAINING_TOKENS: "0",
                       RESET_TOKENS: duration(over.wait)}
        else:
            reason, detail = "key_concurrency", f"{limits.concurrency} requests at a time"
        wait = over.wait or 1.0
        return Refused("rate_limit_exceeded", f"the app key '{key.name}' is over its limit of {detail}; "
                       f"retry in {math.ceil(wait)}s", reason, wait, headers)

    async def lease_shared(self, deployment: Deployment, usage: DeploymentUsage, tokens: int,
                           now: float) -> Lease | SharedLease | Over | None:
        """`lease` through Redis: a `SharedLease`, or `Over` (which limit, and when it has room).
        Redis away: `lease` on local counters with the deployment's share."""
        limits = deployment.limits
        try:
            booked = await self.shared.book(deployment.identity, now, tokens if limits.tpm is not None else 0,
                                            limits.rpm, limits.tpm)
        except Unavailable:
            return self.lease(self.share(limits), usage, tokens, now)
        if type(booked) is Over:
            return booked
        return SharedLease(self.shared, deployment.identity, booked.id, limits.tpm is not None)

    def admit_key(self, key: AppKey, tokens: int, now: float, zone: str) -> KeyTicket:
        """Book a request against its key's limits and budget, all or nothing; raise `Refused`."""
        usage = self.store.key(key.identity)
        budget = key.budget
        if budget is not None:
            if not (usage.period is budget and usage.zone is zone and usage.period_start <= now < usage.period_end):
                self.new_period(budget, usage, now, zone)
            if usage.spent >= budget.usd:
                raise self.over_budget(key.name, budget, usage, now, zone)
        limits = key.limits
        if limits is None:
            return KeyTicket(usage, None, False, {})
        # the window's checks written out: this runs for every request of a limited key
        rpm, tpm, concurrency = limits.rpm, limits.tpm, limits.concurrency
        horizon = now - WINDOW
        window = usage.window
        entries = window.entries
        # in steady traffic each request expires about one entry: the window's `expire`, written out too
        while entries and entries[0].at <= horizon:
            gone = entries.popleft()
            gone.live = False
            window.total -= gone.amount
        if (rpm is not None and len(entries) >= rpm) or (tpm is not None and window.total + tokens > tpm):
            raise self.over_limit(key.name, limits, usage, tokens, now)
        if concurrency is not None:
            if usage.inflight >= concurrency:
                raise self.over_limit(key.name, limits, usage, tokens, now)
            usage.inflight += 1
        entry = None
        headers = {}
        if rpm is not None or tpm is not None:
            entries.append(entry := Entry(now, tokens))  # Window.add, written out
            total = window.total = window.total + tokens
            reset = entries[0].at - horizon  # 0 < reset <= 60: when the oldest entry leaves
            reset = SECONDS[ceil(reset)] if reset >= 1 else MILLISECONDS[ceil(reset * 1000)]
            # each as one dict display: the dict is made at its size, not grown as headers are added
            if rpm is not None:
                count = len(entries)
                remaining = str(rpm - count) if count < rpm else "0"
                if tpm is not None:
                    headers = {LIMIT_REQUESTS: limits.rpm_text, REMAINING_REQUESTS: remaining,
                               RESET_REQUESTS: reset, LIMIT_TOKENS: limits.tpm_text,
                               REMAINING_TOKENS: str(tpm - total) if total < tpm else "0", RESET_TOKENS: reset}
                else:
                    headers = {LIMIT_REQUESTS: limits.rpm_text, REMAINING_REQUESTS: remaining, RESET_REQUESTS: reset}
            else:
                headers = {LIMIT_TOKENS: limits.tpm_text, REMAINING_TOKENS: str(tpm - total) if total < tpm else "0",
                           RESET_TOKENS: reset}
        return KeyTicket(usage, entry, concurrency is not None, headers)

    def over_limit(self, name: str, limits: Limits, usage: KeyUsage, tokens: int, now: float) -> Refused:
        """The refusal of a request over one of its key's limits: which, and when it has room."""
        window = usage.window
        if limits.rpm is not None and window.count(now) >= limits.rpm:
            reason, detail = "key_rpm", f"{limits.rpm} requests per minute"
            wait = window.wait_count(limits.rpm, now)
        elif limits.tpm is not None and not window.fits(limits.tpm, tokens, now):
            detail = (f"{limits.tpm} tokens per minute" if tokens <= limits.tpm else
                      f"{limits.tpm} tokens per minute, and this request alone is estimated at {tokens}")
            reason, wait = "key_tpm", window.wait(limits.tpm, tokens, now)
        else:
            reason, detail, wait = "key_concurrency", f"{limits.concurrency} requests at a time", 1.0
        return Refused("rate_limit_exceeded", f"the app key '{name}' is over its limit of {detail}; "
                       f"retry in {math.ceil(wait)}s", reason, wait, self.headers(limits, usage, now))

    @staticmethod
    def new_period(budget: Budget, usage: KeyUsage, now: float, zone: str) -> None:
        """The bounds of the budget period `now` is in; the spend starts again when it is a new one."""
        start, end = period_bounds(budget.period, now, zone)
        if usage.period_start != start:
            usage.spent = 0.0
        usage.period_start, usage.period_end, usage.period, usage.zone = start, end, budget, zone

    @staticmethod
    def over_budget(name: str, budget: Budget, usage: KeyUsage, now: float, zone: str) -> Refused:
        resets = datetime.fromtimestamp(usage.period_end, ZoneInfo(zone)).isoformat(timespec="seconds")
        return Refused("budget_exceeded", f"the app key '{name}' has spent ${usage.spent:.4f} of its "
                       f"${budget.usd:g} budget for this {budget.period}; it resets at {resets}",
                       "budget", max(1.0, usage.period_end - now), {})

    @staticmethod
    def headers(limits: Limits, usage: KeyUsage, now: float) -> dict[str, str]:
        """`x-ratelimit-*` as OpenAI names them: the limit, what remains after this request, and
        when room grows again (the oldest request counted leaves the window)."""
        window = usage.window
        window.expire(now)
        reset = duration(window.oldest() + WINDOW - now if window.entries else 0.0)
        headers = {}
        if limits.rpm is not None:
            headers[LIMIT_REQUESTS] = str(limits.rpm)
            headers[REMAINING_REQUESTS] = str(max(0, limits.rpm - len(window.entries)))
            headers[RESET_REQUESTS] = reset
        if limits.tpm is not None:
            headers[LIMIT_TOKENS] = str(limits.tpm)
            headers[REMAINING_TOKENS] = str(max(0, limits.tpm - window.total))
            headers[RESET_TOKENS] = reset
        return headers

    @staticmethod
    def lease(limits: Limits, usage: DeploymentUsage, tokens: int, now: float) -> Lease | None:
        """Book one try at a deployment if its `rpm`/`tpm` have room now, else None.

        Its windows are expired only when that changes the answer: what they hold, counting
        entries past the window, is never less than what is in it, so room by that count is
        room. (A key's window is expired at each request: its `x-ratelimit-remaining-*`
        says what is in it.) The token window is also expired once its oldest entry is
        two windows old, which bounds it when released reservations add nothing to its total."""
        rpm, tpm = limits.rpm, limits.tpm
        requests, reserved = usage.requests, usage.tokens
        if rpm is not None and requests.total >= rpm:
            requests.expire(now)
            if requests.total >= rpm:
                return None
        entry = None
        if tpm is not None:
            entries = reserved.entries
            if reserved.total + tokens > tpm or (entries and entries[0].at <= now - 2 * WINDOW):
                reserved.expire(now)
                if reserved.total + tokens > tpm:
                    return None
            entries.append(entry := Entry(now, tokens))  # Window.add, written out
            reserved.total += tokens
        if rpm is not None:
            requests.entries.append(now)
            requests.total += 1
        return Lease(usage, entry)


def key_status(key: AppKey, usage: KeyUsage | None, now: float, zone: str) -> dict:
    """One key's usage and headroom, as /admin/status shows it."""
    usage = usage or KeyUsage()
    result: dict = {"priority": key.priority}
    limits = key.limits
    if limits is not None:
        shown: dict = {}
        if limits.rpm is not None:
            shown["rpm"] = counted(usage.window.count(now), limits.rpm)
        if limits.tpm is not None:
            shown["tpm"] = counted(usage.window.used(now), limits.tpm)
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

