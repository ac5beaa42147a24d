"""Deadlines swept by one timer behave as asyncio.timeout does, up to one tick late.

The HTTP-level behaviour (first-byte, total and idle timeouts) is in test_routing.py and
test_streams.py; these pin the cancellation semantics the router and the relay rely on.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gatewayd.daemon.routing.deadlines import MAX_TICK, Deadlines, sweep_interval
from gatewayd.daemon.routing.deadlines import TICK as DEFAULT_TICK

TICK = 0.01


async def test_a_step_that_overruns_raises_timeout_error_within_a_tick():
    deadlines = Deadlines(TICK)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadlines.bound(0.05):
            await asyncio.sleep(5)
    # not early; and not the 5 s sleep, or no TimeoutError would have come (no upper bound on time:
    # a busy machine may run the sweep late)
    assert time.monotonic() - started >= 0.05
    assert len(deadlines) == 0
    assert asyncio.current_task().cancelling() == 0  # the cancellation was ours and is taken back


async def test_a_step_in_time_is_left_alone_and_the_sweeper_stops():
    deadlines = Deadlines(TICK)
    with deadlines.bound(5):
        await asyncio.sleep(0.03)
        assert len(deadlines) == 1
    assert len(deadlines) == 0
    await asyncio.sleep(3 * TICK)
    assert deadlines._sweeper is None  # nothing pending: no timer keeps the loop busy
    assert asyncio.current_task().cancelling() == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    deadlines = Deadlines(TICK)
    entered = asyncio.Event()

    async def step():
        with deadlines.bound(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(step())
    await asyncio.wait_for(entered.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert len(deadlines) == 0


async def test_a_cancellation_from_elsewhere_after_the_deadline_passed_is_not_swallowed():
    deadlines = Deadlines(TICK)

    async def step():
        with deadlines.bound(0.02):
            try:
                await asyncio.sleep(5)
            finally:
                asyncio.current_task().cancel()  # someone else cancels too, while the deadline fires
                await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.create_task(step()), 1)


@pytest.mark.parametrize("seconds", [0, -1.5])
async def test_a_deadline_already_passed_cancels_at_the_first_await(seconds):
    deadlines = Deadlines(TICK)
    reached = []
    with pytest.raises(TimeoutError):
        with deadlines.bound(seconds):
            reached.append("before")
            await asyncio.sleep(1)
            reached.append("after")
    assert reached == ["before"]
    assert len(deadlines) == 0


async def test_an_inner_deadline_expires_without_ending_the_outer_one():
    deadlines = Deadlines(TICK)
    with deadlines.bound(5):
        with pytest.raises(TimeoutError):
            with deadlines.bound(0.02):
                await asyncio.sleep(5)
        await asyncio.sleep(0.02)  # the outer step goes on
    assert len(deadlines) == 0


async def test_only_the_steps_past_their_deadline_are_cancelled():
    deadlines = Deadlines(TICK)

    async def step(limit: float, takes: float) -> str:
        try:
            with deadlines.bound(limit):
                await asyncio.sleep(takes)
        except TimeoutError:
            return "timed out"
        return "done"

    results = await asyncio.wait_for(asyncio.gather(*(
        step(0.05, 0.5) if n % 2 else step(2, 0.1) for n in range(20))), 5)
    assert results == ["done", "timed out"] * 10
    assert len(deadlines) == 0


async def test_a_deadline_needs_a_task():
    deadlines = Deadlines(TICK)

    def outside_a_task():
        with deadlines.bound(1):
            pass

    loop = asyncio.get_running_loop()
    handle_result: list = []
    loop.call_soon(lambda: handle_result.append(_raises(outside_a_task)))
    await asyncio.sleep(0.01)
    assert handle_result == [RuntimeError]


def _raises(call) -> type | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the type is what the test checks
        return type(exc)
    return None


def test_sweeps_space_out_with_many_pending_deadlines_and_stay_bounded():
    assert sweep_interval(DEFAULT_TICK, 1) == DEFAULT_TICK
    assert sweep_interval(DEFAULT_TICK, 1000) == DEFAULT_TICK
    assert DEFAULT_TICK < sweep_interval(DEFAULT_TICK, 5000) < MAX_TICK
    assert sweep_interval(DEFAULT_TICK, 10_000) == MAX_TICK
    assert sweep_interval(DEFAULT_TICK, 10_000_000) == MAX_TICK
