"""Deadlines for the steps of a request, enforced by one periodic sweep.

`asyncio.timeout` arms and disarms an event-loop timer on every use. On the
request path that is once per upstream attempt and once per relayed stream
event, and measured with callgrind it was about 27,000 instructions a request,
near 4% of all gatewayd executes per request. Here a deadline is an entry in a
dict; one timer, running only while some deadline is pending, checks them every
`tick` and cancels the task of each that has passed.

A step that overruns its deadline is therefore cancelled up to one `tick`
late (10 ms; up to 0.1 s with many thousands pending, see `sweep_interval`),
which no LLM timeout notices, and then raises `TimeoutError`
exactly as under `asyncio.timeout`: a cancellation from elsewhere (the client
went away, shutdown) still propagates as `CancelledError`.

    with deadlines.bound(seconds):
        await step()
"""

from __future__ import annotations

import asyncio

TICK = 0.01  # seconds between sweeps while any deadline is pending
# A sweep visits every pending deadline, and every held stream has one: with many pending, the
# sweeps space out (10 µs per pending deadline: 10,000 open streams are swept every 0.1 s) so
# their cost stays a small, fixed share of a core; a deadline is then at most that much late.
SWEEP_PER_PENDING = 1e-5
MAX_TICK = 0.1


def sweep_interval(tick: float, pending: int) -> float:
    """Seconds to the next sweep with `pending` deadlines waiting."""
    return min(MAX_TICK, max(tick, pending * SWEEP_PER_PENDING))


class Deadlines:
    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._pending: dict[Bound, None] = {}  # an insertion-ordered set
        self._sweeper: asyncio.TimerHandle | None = None

    def bound(self, seconds: float) -> Bound:
        """A context manager that cancels the current task `seconds` from now (within `tick`)."""
        return Bound(self, seconds)

    def __len__(self) -> int:
        return len(self._pending)

    def _add(self, bound: Bound, loop: asyncio.AbstractEventLoop) -> None:
        self._pending[bound] = None
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.tick, self._sweep, loop)

    def _discard(self, bound: Bound) -> None:
        self._pending.pop(bound, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        for bound in [bound for bound in self._pending if bound.when <= now]:
            bound.expire()
        if self._pending:
            self._sweeper = loop.call_later(sweep_interval(self.tick, len(self._pending)), self._sweep, loop)


class Bound:
    """One deadline, entered around one step of one task."""

    __slots__ = ("_owner", "_seconds", "when", "expired", "_task", "_cancelling")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self.when = 0.0
        self.expired = False
        self._task: asyncio.Task | None = None
        self._cancelling = 0

    def __enter__(self) -> Bound:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a step of a task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._seconds
        if self._seconds <= 0:  # as asyncio.timeout(0): the step is cancelled at its first await
            self.expire()
        else:
            self._owner._add(self, loop)
        return self

    def expire(self) -> None:
        self._owner._discard(self)
        if not self.expired and self._task is not None:
            self.expired = True
            self._task.cancel()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._owner._discard(self)
        # Ours only when this task's cancellations fall back to where they were on entry:
        # a cancellation from elsewhere in the meantime is not turned into a timeout.
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
