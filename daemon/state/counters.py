"""Counters behind admission control, keyed by stable identities (an app key's digest,
`Deployment.identity`), whatever keeps them.

    Window           a rolling 60 s log of admissions and the tokens each reserved, each
                     reservation settled later: its length counts requests, its total tokens
    RequestWindow    a deployment's requests: only their times
    Slots            requests in flight against a `concurrency`, and the queue of those
                     waiting for a slot: ordered by priority, then arrival, with ageing
    KeyUsage         one app key's window, requests in flight and spend in its budget period
    DeploymentUsage  one deployment's windows and slots
    CounterStore     the interface the router and the pipeline use: `key`, `deployment`
                     (created on first use), `peek_*` (never creates), `retain`
    LocalCounterStore   the one-process implementation

The limits themselves stay in the graph: a counter holds only what happened, so a reload
that changes a limit applies it at once to the running counts. Times are wall-clock
seconds (`time.time()`), as the health store's, so another process could share them.

Exactness: a window admits only while what it holds in the last 60 s, plus the new
amount, is within the limit; so no 60 s window, wherever it starts, ever holds more
than the limit (tests/test_counters.py checks it for any arrival pattern).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Iterable, Protocol

import msgspec

WINDOW = 60.0  # seconds: rpm and tpm are rolling windows of one minute
PRIORITY_STEP = 1.0  # seconds of waiting worth one priority level in a queue (ageing)
RANKS = {"high": 0.0, "normal": PRIORITY_STEP, "low": 2 * PRIORITY_STEP}  # added to a waiter's arrival


class Entry(msgspec.Struct, gc=False):
    """One admission in a window: when, and how much (the tokens reserved). A Struct: one is
    made for every request of a limited key, and its constructor runs in C."""

    at: float
    amount: int
    live: bool = True  # still inside the window (counted in its total)


class Window:
    """What was admitted in the last 60 s. `fits` and `add` are separate so the caller can
    check every window before booking any (an admission takes all its windows or none)."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        entries = self.entries
        horizon = now - WINDOW
        while entries and entries[0].at <= horizon:
            entry = entries.popleft()
            entry.live = False
            self.total -= entry.amount

    def used(self, now: float) -> int:
        self.expire(now)
        return self.total

    def fits(self, limit: int, amount: int, now: float) -> bool:
        """Whether `amount` more fits under `limit` now (`wait` says how long until it does)."""
        entries = self.entries
        if entries and entries[0].at <= now - WINDOW:
            self.expire(now)
        return self.total + amount <= limit

    def wait(self, limit: int, amount: int, now: float) -> float:
        """Seconds until `amount` more fits under `limit`: 0 when it fits now; `WINDOW` when it
        never can (more than the limit alone)."""
        self.expire(now)
        excess = self.total + amount - limit
        if excess <= 0:
            return 0.0
        if amount > limit:
            return WINDOW
        for entry in self.entries:  # oldest first: the first ones to leave the window
            excess -= entry.amount
            if excess <= 0:
                return max(entry.at + WINDOW - now, 0.001)
        return WINDOW  # unreachable while total is the sum of the entries

    def count(self, now: float) -> int:
        """The admissions in the window (a key's requests)."""
        self.expire(now)
        return len(self.entries)

    def wait_count(self, limit: int, now: float) -> float:
        """Seconds until one more admission fits under `limit` admissions: 0 when it fits now."""
        self.expire(now)
        excess = len(self.entries) + 1 - limit
        if excess <= 0:
            return 0.0
        return max(self.entries[excess - 1].at + WINDOW - now, 0.001)

    def add(self, amount: int, now: float) -> Entry:
        entry = Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def settle(self, entry: Entry, amount: int) -> None:
        """Replace what `entry` reserved by what was really used (0 releases it)."""
        if entry.live:
            self.total += amount - entry.amount
        entry.amount = amount

    def oldest(self) -> float:
        return self.entries[0].at


class RequestWindow:
    """Requests admitted in the last 60 s: each is one, and none is settled later, so the
    window keeps only their times (a deployment's `rpm`, booked at each try)."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[float] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        entries = self.entries
        horizon = now - WINDOW
        while entries and entries[0] <= horizon:
            entries.popleft()
        self.total = len(entries)

    def used(self, now: float) -> int:
        self.expire(now)
        return self.total

    def fits(self, limit: int, amount: int, now: float) -> bool:
        self.expire(now)
        return self.total + amount <= limit

    def wait(self, limit: int, amount: int, now: float) -> float:
        """Seconds until `amount` more requests fit under `limit` (see `Window.wait`)."""
        self.expire(now)
        excess = self.total + amount - limit
        if excess <= 0:
            return 0.0
        if amount > limit:
            return WINDOW
        return max(self.entries[excess - 1] + WINDOW - now, 0.001)

    def add(self, amount: int, now: float) -> None:
        self.entries.extend((now,) * amount)
        self.total += amount

    def oldest(self) -> float:
        return self.entries[0]


class Waiter:
    __slots__ = ("score", "order", "future")

    def __init__(self, score: float, order: int, future: asyncio.Future) -> None:
        self.score = score
        self.order = order
        self.future = future

    def __lt__(self, other: Waiter) -> bool:
        return (self.score, self.order) < (other.score, other.order)


class Slots:
    """Requests in flight against a `concurrency` limit, and the queue of those waiting.

    A released slot goes straight to the first waiter (no race for it, no thundering herd).
    Waiters are ordered by `arrival + RANKS[priority]`: by priority, then arrival, and a
    request that has waited long enough goes ahead of a higher priority that came later, so
    `low` never starves."""

    __slots__ = ("inflight", "limit", "waiters", "_order")

    def __init__(self) -> None:
        self.inflight = 0
        self.limit = 0  # the limit last asked with: a release hands off only below it
        self.waiters: list[Waiter] = []
        self._order = itertools.count()

    def try_take(self, limit: int) -> bool:
        self.limit = limit
        if self.inflight < limit and not self.waiters:
            self.inflight += 1
            return True
        return False

    async def take(self, limit: int, priority: str, arrival: float, timeout: float) -> bool:
        """A slot now, or after waiting in the queue up to `timeout` seconds; False when none
        came in time. A caller cancelled while waiting (its client left) leaves the queue at once."""
        if self.try_take(limit):
            return True
        if timeout <= 0:
            return False
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(arrival + RANKS.get(priority, PRIORITY_STEP), next(self._order), future)
        heapq.heappush(self.waiters, waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
            return True
        except TimeoutError:
            if future.done() and not future.cancelled():
                return True  # the slot came as the time ran out: it is this request's
            self._leave(waiter)
            return False
        except BaseException:  # cancelled: its client left
            if future.done() and not future.cancelled():
                self.release()  # handed over just now: pass it on
            else:
                self._leave(waiter)
            raise

    def _leave(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        heapq.heapify(self.waiters)

    def release(self) -> None:
        """A slot's request ended: the slot goes to the first waiter, or back to the pool."""
        waiters = self.waiters
        while waiters and self.inflight <= self.limit:
            waiter = heapq.heappop(waiters)
            if not waiter.future.done():
                waiter.future.set_result(None)  # the slot passes on: inflight stays
                return
        self.inflight -= 1

    def admit_waiting(self, limit: int) -> None:
        """A reload raised (or set) the limit: waiters take the slots that are free now."""
        self.limit = limit
        while self.waiters and self.inflight < limit:
            waiter = heapq.heappop(self.waiters)
            if not waiter.future.done():
                self.inflight += 1
                waiter.future.set_result(None)

    @property
    def queued(self) -> int:
        return len(self.waiters)


class KeyUsage:
    """One app key's counters: its window, its requests in flight, its spend this period.

    One window serves its `rpm` and its `tpm`: every admission of a key with either is one
    entry, its tokens reserved and settled from the answer, so its length is the requests in
    the last 60 s and its total their tokens. (Each request expires and books one entry, not
    one in each of two windows; and a reload that adds a `tpm` finds the tokens already counted.)"""

    __slots__ = ("window", "inflight", "spent", "period_start", "period_end", "period", "zone")

    def __init__(self) -> None:
        self.window = Window()
        self.inflight = 0
        self.spent = 0.0  # US dollars since `period_start`
        self.period_start = 0.0  # wall clock; 0: no spend yet
        self.period_end = 0.0  # when the budget period ends (computed once per period, not per request)
        self.period: object = None  # the budget the bounds were computed for (a reload may change it)
        self.zone: str | None = None  # and the time zone


class DeploymentUsage:
    """One deployment's counters against its upstream quota."""

    __slots__ = ("requests", "tokens", "slots")

    def __init__(self) -> None:
        self.requests = RequestWindow()
        self.tokens = Window()
        self.slots = Slots()


class CounterStore(Protocol):
    """Counters by identity: they survive reloads for keys and deployments whose identity
    did not change."""

    def key(self, identity: tuple) -> KeyUsage:
        """The key's counters, created on first use."""
        ...

    def deployment(self, identity: tuple) -> DeploymentUsage:
        """The deployment's counters, created on first use."""
        ...

    def peek_key(self, identity: tuple) -> KeyUsage | None: ...

    def peek_deployment(self, identity: tuple) -> DeploymentUsage | None: ...

    def retain(self, keys: Iterable[tuple], deployments: Iterable[tuple]) -> None:
        """Drop the counters of keys and deployments that left the config."""
        ...


class LocalCounterStore:
    """The counters of this process."""

    def __init__(self) -> None:
        self._keys: dict[tuple, KeyUsage] = {}
        self._deployments: dict[tuple, DeploymentUsage] = {}

    def key(self, identity: tuple) -> KeyUsage:
        usage = self._keys.get(identity)
        if usage is None:
            usage = self._keys[identity] = KeyUsage()
        return usage

    def deployment(self, identity: tuple) -> DeploymentUsage:
        usage = self._deployments.get(identity)
        if usage is None:
            usage = self._deployments[identity] = DeploymentUsage()
        return usage

    def peek_key(self, identity: tuple) -> KeyUsage | None:
        return self._keys.get(identity)

    def peek_deployment(self, identity: tuple) -> DeploymentUsage | None:
        return self._deployments.get(identity)

    def retain(self, keys: Iterable[tuple], deployments: Iterable[tuple]) -> None:
        kept_keys, kept_deployments = set(keys), set(deployments)
        for identity in [i for i in self._keys if i not in kept_keys]:
            del self._keys[identity]
        for identity in [i for i in self._deployments if i not in kept_deployments]:
            del self._deployments[identity]
