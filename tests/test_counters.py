"""The admission-control arithmetic of SPEC §12 as pure objects, no daemon and no HTTP:
daemon/state/counters.py (Window, Entry, Slots, KeyUsage, DeploymentUsage, LocalCounterStore)
and daemon/routing/quota.py (estimate_tokens, duration, period_bounds, Quotas, KeyTicket,
Lease, quota_wait, key_status, deployment_limits_status).

Times are wall-clock seconds, as `time.time()` gives them. Most tests put them on a grid of
1/256 s from a 2023 wall-clock time: every such time, and every difference of two, is an
exact float there, so a reference model can count in whole ticks and compare exactly."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.graph import AppKey, Budget, Graph, Limits, Secret
from gatewayd.daemon.routing.quota import (
    DEFAULT_OUTPUT_TOKENS,
    KeyTicket,
    Lease,
    Quotas,
    Refused,
    deployment_limits_status,
    duration,
    estimate_tokens,
    key_status,
    period_bounds,
    quota_wait,
)
from gatewayd.daemon.state.counters import (
    PRIORITY_STEP,
    WINDOW,
    DeploymentUsage,
    Entry,
    KeyUsage,
    LocalCounterStore,
    RequestWindow,
    Slots,
    Window,
)

BASE = 1_700_000_000.0  # 2023-11-14T22:13:20Z: a wall-clock time, as the counters get them
TICK = 1 / 256  # seconds: BASE + k * TICK is exact (the float spacing near BASE is 2**-22)
SPAN = round(WINDOW / TICK)  # 60 s in ticks
SECOND = 256  # ticks


def at(ticks: int) -> float:
    """The wall-clock time `ticks` after BASE."""
    return BASE + ticks * TICK


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


def held(records, now: int) -> int:
    """What a 60 s window ending at tick `now` holds: the records at ticks in (now - 60 s, now]."""
    return sum(amount for tick, amount in records if now - SPAN < tick <= now)


def earliest(records, limit: int, amount: int, now: int) -> int:
    """The reference wait, in ticks, from the definition: the first tick T >= now at which
    the window (T - 60 s, T] holds little enough for `amount` more; 60 s when `amount` alone
    is over the limit."""
    if amount > limit:
        return SPAN if held(records, now) + amount > limit else 0
    for moment in sorted({now} | {tick + SPAN for tick, _ in records if tick + SPAN > now}):
        if held([r for r in records if r[0] <= now], moment) + amount <= limit:
            return moment - now
    raise AssertionError("an amount within the limit always fits once the window is empty")


# --- Window: exactness for any arrival pattern ----------------------------------------------

GAPS = st.one_of(
    st.just(0),  # bursts: several at the same instant
    st.integers(1, 2 * SECOND),  # close together
    st.integers(1, SPAN + 2 * SECOND),  # anywhere within a little over a window
    st.sampled_from([SPAN - 1, SPAN, SPAN + 1]),  # right at the window's edge
)
AMOUNTS = st.one_of(st.integers(1, 6), st.integers(1, 40))  # sometimes over the limit alone
PATTERNS = st.lists(st.tuples(GAPS, AMOUNTS), min_size=1, max_size=50)


WINDOWS = pytest.mark.parametrize("kind", [Window, RequestWindow])  # of tokens, of requests


def admit_all(window: Window | RequestWindow, pattern, limit: int) -> tuple[list[tuple[int, int]], int]:
    """Offer each (gap, amount) of `pattern` to `window` the way admission does (`wait() == 0`,
    then `add`), checking each verdict against the reference; what was admitted, and the last tick."""
    admitted: list[tuple[int, int]] = []
    now = 0
    for gap, amount in pattern:
        now += gap
        inside = held(admitted, now)
        wait = window.wait(limit, amount, at(now))
        if wait == 0:
            assert inside + amount <= limit
            window.add(amount, at(now))
            admitted.append((now, amount))
        else:  # refused: it really does not fit now
            assert wait > 0
            assert inside + amount > limit
        assert window.used(at(now)) == held(admitted, now)
    return admitted, now


@WINDOWS
@settings(max_examples=120, deadline=None)
@given(pattern=PATTERNS, limit=st.integers(1, 25))
def test_no_60s_window_ever_holds_more_than_the_limit(kind, pattern, limit):
    admitted, _ = admit_all(kind(), pattern, limit)
    for tick, _ in admitted:
        assert held(admitted, tick) <= limit  # the window (t - 60 s, t]
        assert sum(a for u, a in admitted if tick <= u < tick + SPAN) <= limit  # and [t, t + 60 s)


@WINDOWS
@settings(max_examples=120, deadline=None)
@given(pattern=PATTERNS, limit=st.integers(1, 25), amount=st.integers(1, 25), later=st.integers(0, SPAN + 10))
def test_wait_is_exact(kind, pattern, limit, amount, later):
    amount = min(amount, limit)
    window = kind()
    admitted, last = admit_all(window, pattern, limit)
    now = last + later
    wait = window.wait(limit, amount, at(now))
    expected = earliest(admitted, limit, amount, now)
    assert wait == expected * TICK
    if wait > 0:  # `wait` mutates only by expiring, so check the earlier moment first
        assert window.wait(limit, amount, at(now) + wait - TICK / 2) > 0  # a little less: still no room
        assert window.wait(limit, amount, at(now) + wait) == 0  # the returned wait: room


@WINDOWS
@settings(max_examples=80, deadline=None)
@given(offsets=st.lists(st.floats(0, 150, allow_nan=False), min_size=1, max_size=30),
       limit=st.integers(1, 10), amount=st.integers(1, 10), later=st.floats(0, 61))
def test_wait_gives_room_for_any_wall_clock_times(kind, offsets, limit, amount, later):
    # times as time.time() gives them, not on a grid
    amount = min(amount, limit)
    window = kind()
    times = sorted(BASE + offset for offset in offsets)
    for now in times:
        if window.wait(limit, 1, now) == 0:
            window.add(1, now)
    now = times[-1] + later
    wait = window.wait(limit, amount, now)
    if wait > 0:
        if wait > 0.001:  # above the floor of 1 ms, a little earlier is still too early
            assert window.wait(limit, amount, now + wait - 1e-6) > 0
        assert window.wait(limit, amount, now + wait) == 0


@WINDOWS
def test_an_amount_over_the_limit_alone_waits_a_whole_window(kind):
    window = kind()
    assert window.wait(10, 11, at(0)) == WINDOW
    window.add(10, at(0))
    assert window.wait(10, 11, at(SPAN // 2)) == WINDOW
    assert window.wait(10, 10, at(SPAN // 2)) == WINDOW / 2


@WINDOWS
def test_a_wait_is_never_zero_while_there_is_no_room(kind):
    window = kind()
    window.add(1, BASE)
    wait = window.wait(1, 1, BASE + WINDOW - 1e-5)  # the entry leaves in 10 µs
    assert 0 < wait <= 0.001


@WINDOWS
def test_an_entry_leaves_exactly_60s_after_it_came(kind):
    window = kind()
    window.add(3, at(0))
    window.add(1, at(SECOND))
    assert window.used(at(SPAN - 1)) == 4
    assert window.wait(4, 1, at(SPAN - SECOND)) == 1.0
    assert window.used(at(SPAN)) == 1
    assert window.wait(4, 1, at(SPAN)) == 0
    assert window.used(at(SPAN + SECOND)) == 0


# --- reservations: reserve, settle, release -------------------------------------------------

WINDOW_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 50)),
    st.tuples(st.just("settle"), st.integers(0, 99), st.integers(0, 80)),
    st.tuples(st.just("release"), st.integers(0, 99)),
    st.tuples(st.just("advance"), GAPS),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=WINDOW_OPS)
def test_a_windows_total_is_what_its_live_entries_hold_after_any_settlements(ops):
    window = Window()
    records: list[list] = []  # [tick, amount, Entry]
    now = 0
    for op in ops:
        if op[0] == "advance":
            now += op[1]  # no expiry yet: a settlement may meet an entry not yet expired
            continue
        if op[0] == "add":
            records.append([now, op[1], window.add(op[1], at(now))])
        elif records:
            record = records[op[1] % len(records)]
            record[1] = op[2] if op[0] == "settle" else 0
            window.settle(record[2], record[1])
        total = window.used(at(now))
        assert total == held([(tick, amount) for tick, amount, _ in records], now)
        assert total >= 0


def test_settling_an_expired_entry_leaves_the_total_alone():
    window = Window()
    first = window.add(50, at(0))
    assert window.used(at(SPAN)) == 0  # it left the window
    assert not first.live
    window.settle(first, 0)
    window.settle(first, 500)
    assert window.used(at(SPAN)) == 0
    window.add(5, at(SPAN))
    window.settle(first, 0)
    assert window.used(at(SPAN)) == 5


def limited_key(name: str = "app", **admission) -> AppKey:
    return AppKey.plain(name, Secret(f"sk-{name}-test"), None, **admission)


OUTCOMES = st.one_of(
    st.tuples(st.just("used"), st.integers(-3, 3000)),  # answered with usage (a negative one counts as 0)
    st.tuples(st.just("no usage")),  # answered without usage: the estimate stands
    st.tuples(st.just("failed")),  # failed without an answer: released
)
KEY_OPS = st.lists(st.one_of(
    st.tuples(st.just("admit"), GAPS, st.integers(1, 1500)),
    st.tuples(st.just("settle"), st.integers(0, 99), OUTCOMES, st.integers(0, 300)),
), max_size=30)


def settle(ticket: KeyTicket, outcome: tuple, cents: int) -> None:
    kind = outcome[0]
    if kind == "used":
        ticket.settle(outcome[1], cents / 100, True)
    elif kind == "no usage":
        ticket.settle(None, cents / 100, True)
    else:
        ticket.settle(None, None, False)


def settled_value(estimate: int, outcome: tuple) -> int:
    return {"used": lambda: max(0, outcome[1]), "no usage": lambda: estimate, "failed": lambda: 0}[outcome[0]]()


def snapshot(usage: KeyUsage, now: float) -> tuple:
    return usage.window.count(now), usage.window.used(now), usage.inflight, usage.spent


@settings(max_examples=150, deadline=None)
@given(ops=KEY_OPS, rpm=st.integers(1, 8), tpm=st.integers(500, 5000), concurrency=st.integers(1, 4),
       finals=st.lists(OUTCOMES, min_size=30, max_size=30))
def test_key_tickets_book_and_settle_like_the_reference(ops, rpm, tpm, concurrency, finals):
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(rpm=rpm, tpm=tpm, concurrency=concurrency))
    usage = store.key(key.identity)
    requests: list[tuple[int, int]] = []
    tickets: list[list] = []  # [ticket, record [tick, value], settled]
    inflight, spent = 0, 0.0
    now = 0
    for op in ops:
        if op[0] == "admit":
            now += op[1]
            tokens = op[2]
            records = [tuple(t[1]) for t in tickets]
            expected = None
            if held(requests, now) + 1 > rpm:
                expected, wait = "key_rpm", earliest(requests, rpm, 1, now) * TICK
            elif held(records, now) + tokens > tpm:
                expected, wait = "key_tpm", earliest(records, tpm, tokens, now) * TICK
            elif inflight >= concurrency:
                expected, wait = "key_concurrency", 1.0
            before = snapshot(usage, at(now))
            if expected is not None:
                with pytest.raises(Refused) as refused:
                    quotas.admit_key(key, tokens, at(now), "UTC")
                assert (refused.value.code, refused.value.reason) == ("rate_limit_exceeded", expected)
                assert refused.value.retry_after == wait
                assert snapshot(usage, at(now)) == before  # a refusal books nothing
            else:
                ticket = quotas.admit_key(key, tokens, at(now), "UTC")
                # the headers admit_key writes out are what `headers` says of the window after it
                assert ticket.headers == Quotas.headers(key.limits, usage, at(now))
                requests.append((now, 1))
                tickets.append([ticket, [now, tokens], False])
                inflight += 1
        elif tickets:
            entry = tickets[op[1] % len(tickets)]
            ticket, record, done = entry
            if done:  # settling twice changes nothing
                before = snapshot(usage, at(now))
                settle(ticket, op[2], op[3])
                assert snapshot(usage, at(now)) == before
            else:
                settle(ticket, op[2], op[3])
                record[1] = settled_value(record[1], op[2])
                entry[2] = True
                inflight -= 1
                spent += op[3] / 100 if op[2][0] != "failed" else 0.0
        assert usage.inflight == inflight
        assert usage.window.used(at(now)) == held([tuple(t[1]) for t in tickets], now) >= 0
        assert usage.window.count(at(now)) == held(requests, now)
    for entry, outcome in zip([t for t in tickets if not t[2]], finals, strict=False):
        settle(entry[0], outcome, 7)
        entry[1][1] = settled_value(entry[1][1], outcome)
        spent += 0.07 if outcome[0] != "failed" else 0.0
    assert usage.inflight == 0
    assert usage.spent == pytest.approx(spent)
    total = usage.window.used(at(now))
    assert total == held([tuple(t[1]) for t in tickets], now) >= 0
    if tickets and now - tickets[0][1][0] < SPAN:  # nothing expired: the total is all that was settled
        assert total == sum(t[1][1] for t in tickets)


def test_a_ticket_settled_after_its_reservation_expired_does_not_go_negative():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(tpm=1000, concurrency=2))
    old = quotas.admit_key(key, 800, at(0), "UTC")
    assert isinstance(old.tokens, Entry) and old.tokens.amount == 800
    usage = store.key(key.identity)
    assert usage.window.used(at(SPAN + 1)) == 0  # the reservation left the window
    fresh = quotas.admit_key(key, 300, at(SPAN + 1), "UTC")
    old.settle(None, None, False)
    old.settle(5000, None, True)  # a second settlement changes nothing either
    assert usage.window.used(at(SPAN + 2)) == 300
    fresh.settle(120, 0.01, True)
    assert usage.window.used(at(SPAN + 2)) == 120
    assert usage.inflight == 0


def test_a_reservation_the_next_admission_expired_settles_outside_the_window():
    """The same as above when it is the next admission that finds the old entry past the window
    (admit_key expires the key's window itself): settling the old ticket leaves the total alone."""
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(rpm=5, tpm=1000))
    old = quotas.admit_key(key, 800, at(0), "UTC")
    fresh = quotas.admit_key(key, 300, at(SPAN + 1), "UTC")  # expires the old reservation
    assert fresh.headers["x-ratelimit-remaining-tokens"] == "700"
    assert fresh.headers["x-ratelimit-remaining-requests"] == "4"
    old.settle(50, None, True)
    usage = store.key(key.identity)
    assert usage.window.total == 300 and usage.window.used(at(SPAN + 2)) == 300
    assert usage.window.count(at(SPAN + 2)) == 1


def test_a_tpm_added_by_a_reload_finds_the_minutes_tokens_counted():
    """A key's rpm and tpm count one window: the tokens of requests admitted under an rpm alone
    are counted (and settled) too, so a `tpm` a reload adds applies to the last minute at once."""
    store = LocalCounterStore()
    quotas = Quotas(store)
    before = limited_key(limits=Limits(rpm=10))
    first = quotas.admit_key(before, 400, at(0), "UTC")
    assert "x-ratelimit-remaining-tokens" not in first.headers
    first.settle(700, None, True)  # the answer used more than the estimate
    after = limited_key(limits=Limits(rpm=10, tpm=1000))  # the same key, reloaded with a tpm
    assert after.identity == before.identity
    second = quotas.admit_key(after, 250, at(SECOND), "UTC")
    assert second.headers["x-ratelimit-remaining-tokens"] == "50"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    with pytest.raises(Refused) as refused:
        quotas.admit_key(after, 100, at(2 * SECOND), "UTC")
    assert refused.value.reason == "key_tpm"
    assert refused.value.retry_after == pytest.approx(WINDOW - 2)  # when the first request's 700 leave


# --- Quotas.admit_key: each refusal -----------------------------------------------------------


def test_rpm_refusal_names_the_limit_and_when_the_oldest_request_leaves():
    quotas = Quotas(LocalCounterStore())
    key = limited_key(limits=Limits(rpm=3))
    for second in (0, 10, 20):
        quotas.admit_key(key, 100, at(second * SECOND), "UTC")
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 100, at(30 * SECOND), "UTC")
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.reason == "key_rpm"
    assert refused.value.retry_after == 30.0  # the request at 0 s leaves at 60 s
    assert "3" in refused.value.message and "app" in refused.value.message
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    # room grows at 60 s (the oldest leaves), the window is empty at 80 s: either is a fair reset
    assert 30 <= parse_duration(refused.value.headers["x-ratelimit-reset-requests"]) <= 50
    with pytest.raises(Refused):
        quotas.admit_key(key, 100, at(60 * SECOND - 1), "UTC")
    quotas.admit_key(key, 100, at(60 * SECOND), "UTC")  # the first left: room for one


def test_tpm_refusal_waits_for_enough_tokens_to_leave():
    quotas = Quotas(LocalCounterStore())
    key = limited_key(limits=Limits(tpm=1000))
    quotas.admit_key(key, 400, at(0), "UTC")
    quotas.admit_key(key, 300, at(10 * SECOND), "UTC")
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 800, at(20 * SECOND), "UTC")  # 700 held: both must leave
    assert (refused.value.code, refused.value.reason) == ("rate_limit_exceeded", "key_tpm")
    assert refused.value.retry_after == 50.0
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "300"
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 400, at(20 * SECOND), "UTC")  # only the first must leave
    assert refused.value.retry_after == 40.0
    quotas.admit_key(key, 300, at(20 * SECOND), "UTC")  # exactly up to the limit


def test_an_estimate_over_the_tpm_alone_is_told_to_retry_in_60s():
    quotas = Quotas(LocalCounterStore())
    key = limited_key(limits=Limits(tpm=1000))
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 1001, at(0), "UTC")  # on an empty window
    assert (refused.value.reason, refused.value.retry_after) == ("key_tpm", 60.0)
    assert "1001" in refused.value.message
    quotas.admit_key(key, 1000, at(0), "UTC")


def test_concurrency_refusal_until_a_ticket_settles():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(concurrency=2))
    first = quotas.admit_key(key, 10, at(0), "UTC")
    quotas.admit_key(key, 10, at(0), "UTC")
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 10, at(1), "UTC")
    assert (refused.value.code, refused.value.reason) == ("rate_limit_exceeded", "key_concurrency")
    assert refused.value.retry_after > 0
    assert store.key(key.identity).inflight == 2
    first.settle(None, None, False)
    first.settle(None, None, False)  # once only
    assert store.key(key.identity).inflight == 1
    quotas.admit_key(key, 10, at(2), "UTC")
    with pytest.raises(Refused):
        quotas.admit_key(key, 10, at(3), "UTC")


@pytest.mark.parametrize("limits, fill, refused_reason", [
    (Limits(rpm=5, tpm=100, concurrency=5), 100, "key_tpm"),  # rpm had room: not counted
    (Limits(rpm=5, tpm=1000, concurrency=1), 10, "key_concurrency"),  # rpm and tpm had room: neither booked
])
def test_a_refusal_books_nothing(limits, fill, refused_reason):
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=limits)
    quotas.admit_key(key, fill, at(0), "UTC")
    usage = store.key(key.identity)
    before = snapshot(usage, at(1))
    for _ in range(3):
        with pytest.raises(Refused) as refused:
            quotas.admit_key(key, 10, at(1), "UTC")
        assert refused.value.reason == refused_reason
    assert snapshot(usage, at(1)) == before
    assert usage.window.count(at(1)) == 1


def test_budget_refusal_names_spend_budget_and_reset_and_resets_next_period():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(rpm=100, tpm=100000, concurrency=5), budget=Budget(usd=1.0, period="day"))
    noon = utc(2024, 5, 1, 12, 0)
    quotas.admit_key(key, 10, noon, "UTC").settle(10, 0.75, True)
    quotas.admit_key(key, 10, noon + 1, "UTC").settle(10, 0.5, True)  # under the budget when admitted
    usage = store.key(key.identity)
    before = snapshot(usage, noon + 2)
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 10, noon + 2, "UTC")
    error = refused.value
    assert (error.code, error.reason) == ("budget_exceeded", "budget")
    numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", error.message)}
    assert 1.25 in numbers and 1.0 in numbers  # the spend and the budget
    assert "2024-05-02" in error.message and "00:00" in error.message  # when it resets
    assert error.retry_after == utc(2024, 5, 2) - (noon + 2)
    assert snapshot(usage, noon + 2) == before  # books nothing
    with pytest.raises(Refused):
        quotas.admit_key(key, 10, utc(2024, 5, 2) - 1, "UTC")
    ticket = quotas.admit_key(key, 10, utc(2024, 5, 2), "UTC")  # the next day
    assert usage.spent == 0.0
    ticket.settle(10, 0.25, True)
    assert usage.spent == 0.25


def test_budget_reset_is_local_midnight_of_the_zone():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(budget=Budget(usd=0.5, period="month"))
    quotas.admit_key(key, 10, utc(2024, 3, 15), "Europe/Berlin").settle(None, 0.6, True)
    with pytest.raises(Refused) as refused:
        quotas.admit_key(key, 10, utc(2024, 3, 31, 21, 59), "Europe/Berlin")
    assert "2024-04-01" in refused.value.message and "00:00" in refused.value.message
    assert refused.value.retry_after == 60.0  # April 1, 00:00 CEST is 22:00 UTC
    quotas.admit_key(key, 10, utc(2024, 3, 31, 22, 0), "Europe/Berlin")


def test_a_key_without_limits_books_nothing_and_sends_no_headers():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(budget=Budget(usd=10.0, period="week"))
    ticket = quotas.admit_key(key, 5000, at(0), "UTC")
    assert (ticket.tokens, ticket.concurrent, ticket.headers) == (None, False, {})
    ticket.settle(100, 0.5, True)
    usage = store.key(key.identity)
    assert (usage.inflight, usage.window.used(at(0)), usage.spent) == (0, 0, 0.5)


def test_headers_say_what_remains_after_this_request_and_when_the_window_empties():
    store = LocalCounterStore()
    quotas = Quotas(store)
    limits = Limits(rpm=10, tpm=1000)
    key = limited_key(limits=limits)
    ticket = quotas.admit_key(key, 100, at(0), "UTC")
    assert ticket.headers == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    ticket.settle(40, None, True)
    usage = store.key(key.identity)
    for ticks, reset in ((SECOND, "59s"), (30 * SECOND, "30s"), (59 * SECOND, "1s"), (59 * SECOND + 192, "250ms")):
        headers = Quotas.headers(limits, usage, at(ticks))
        assert headers["x-ratelimit-remaining-tokens"] == "960"
        assert headers["x-ratelimit-remaining-requests"] == "9"
        assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == reset
    second = quotas.admit_key(key, 2000 - 1040, at(30 * SECOND), "UTC")  # up to the limit exactly
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    late = Quotas.headers(limits, usage, at(SPAN))  # the first left the window
    assert late["x-ratelimit-reset-tokens"] == late["x-ratelimit-reset-requests"] == "30s"
    assert late["x-ratelimit-remaining-tokens"] == "40" and late["x-ratelimit-remaining-requests"] == "9"
    both = Quotas.headers(limits, usage, at(40 * SECOND))  # two in the window: 20 s and 50 s to go
    assert 20 <= parse_duration(both["x-ratelimit-reset-requests"]) <= 50


def test_key_status_shows_usage_headroom_and_this_periods_spend():
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(limits=Limits(rpm=10, tpm=1000, concurrency=3), budget=Budget(usd=2.0, period="week"),
                      priority="high")
    now = utc(2024, 5, 1, 12)  # a Wednesday
    quotas.admit_key(key, 300, now, "UTC").settle(200, 0.5, True)
    quotas.admit_key(key, 100, now, "UTC")
    status = key_status(key, store.peek_key(key.identity), now, "UTC")
    assert status["priority"] == "high"
    assert status["limits"] == {
        "rpm": {"limit": 10, "used": 2, "remaining": 8},
        "tpm": {"limit": 1000, "used": 300, "remaining": 700},
        "concurrency": {"limit": 3, "used": 1, "remaining": 2},
    }
    assert status["budget"]["spent"] == 0.5 and status["budget"]["remaining"] == 1.5
    assert status["budget"]["resets_at"].startswith("2024-05-06T00:00")
    later = key_status(key, store.peek_key(key.identity), utc(2024, 5, 6, 0, 0, 1), "UTC")
    assert later["budget"]["spent"] == 0.0 and later["budget"]["remaining"] == 2.0
    assert later["limits"]["rpm"]["used"] == 0
    assert key_status(limited_key("other", limits=Limits(rpm=1)), None, now, "UTC")["limits"] == {
        "rpm": {"limit": 1, "used": 0, "remaining": 1}}


# --- duration and period_bounds ---------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0, "0ms"), (0.0001, "1ms"), (0.25, "250ms"), (0.2501, "251ms"), (0.999, "999ms"),
    (1, "1s"), (1.2, "2s"), (59, "59s"), (59.01, "1m0s"), (60, "1m0s"), (61, "1m1s"),
    (360, "6m0s"), (3599, "59m59s"),
])
def test_duration_is_written_as_openai_does(seconds, text):
    assert duration(seconds) == text


def parse_duration(text: str) -> float:
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    match = re.fullmatch(r"(?:(\d+)m)?(\d+)s", text)
    assert match, text
    return int(match[1] or 0) * 60 + int(match[2])


@settings(max_examples=200, deadline=None)
@example(seconds=0.99999)  # rounds up to a whole second
@given(seconds=st.one_of(st.floats(0, 2, allow_nan=False), st.floats(0, 7200, allow_nan=False)))
def test_a_duration_is_rounded_up_and_written_in_its_largest_units(seconds):
    text = duration(seconds)
    value = parse_duration(text)
    assert value >= seconds - 1e-9  # never earlier than the real reset
    if text.endswith("ms"):
        assert int(text[:-2]) < 1000  # 1000 ms is written 1s
        assert value < seconds + 0.001 + 1e-9
    else:
        assert value < seconds + 1
        match = re.fullmatch(r"(?:(\d+)m)?(\d+)s", text)
        assert int(match[2]) < 60 and (match[1] is None or int(match[1]) > 0)


def test_a_reset_just_under_a_second_is_written_1s():
    assert duration(0.9995) == "1s"


@pytest.mark.parametrize("period, now, start, end", [
    ("day", utc(2024, 5, 1, 13, 30), utc(2024, 5, 1), utc(2024, 5, 2)),
    ("day", utc(2024, 5, 1), utc(2024, 5, 1), utc(2024, 5, 2)),  # at midnight: that day's period
    ("day", utc(2024, 5, 1) - 0.001, utc(2024, 4, 30), utc(2024, 5, 1)),
    ("week", utc(2024, 5, 1, 13), utc(2024, 4, 29), utc(2024, 5, 6)),  # Wednesday: from Monday
    ("week", utc(2024, 5, 5, 23, 59), utc(2024, 4, 29), utc(2024, 5, 6)),  # Sunday night: still that week
    ("week", utc(2024, 4, 29), utc(2024, 4, 29), utc(2024, 5, 6)),  # Monday midnight
    ("month", utc(2024, 2, 29, 12), utc(2024, 2, 1), utc(2024, 3, 1)),
    ("month", utc(2024, 12, 31, 23, 59), utc(2024, 12, 1), utc(2025, 1, 1)),  # December to January
    ("month", utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 2, 1)),
])
def test_period_bounds_in_utc(period, now, start, end):
    assert period_bounds(period, now, "UTC") == (start, end)


@pytest.mark.parametrize("period, now, start, end, hours", [
    # spring forward on Sunday 2024-03-31: midnight is +01:00, the next one +02:00
    ("day", utc(2024, 3, 31, 12), utc(2024, 3, 30, 23), utc(2024, 3, 31, 22), 23),
    ("week", utc(2024, 3, 31, 12), utc(2024, 3, 24, 23), utc(2024, 3, 31, 22), 167),
    ("month", utc(2024, 3, 31, 12), utc(2024, 2, 29, 23), utc(2024, 3, 31, 22), 743),
    # fall back on Sunday 2024-10-27
    ("day", utc(2024, 10, 27, 12), utc(2024, 10, 26, 22), utc(2024, 10, 27, 23), 25),
    ("week", utc(2024, 10, 27, 12), utc(2024, 10, 20, 22), utc(2024, 10, 27, 23), 169),
    ("month", utc(2024, 10, 15), utc(2024, 9, 30, 22), utc(2024, 10, 31, 23), 745),
    # December to January in Berlin: both midnights +01:00
    ("month", utc(2024, 12, 31, 22, 59), utc(2024, 11, 30, 23), utc(2024, 12, 31, 23), 744),
    ("month", utc(2024, 12, 31, 23), utc(2024, 12, 31, 23), utc(2025, 1, 31, 23), 744),
])
def test_period_bounds_in_berlin_are_local_midnights_across_dst(period, now, start, end, hours):
    assert period_bounds(period, now, "Europe/Berlin") == (start, end)
    assert end - start == hours * 3600


ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Havana")


@settings(max_examples=200, deadline=None)
@example(now=utc(2024, 5, 2) - 2e-7, zone="UTC", period="day")  # under half a microsecond before midnight
@example(now=utc(2024, 11, 3, 5, 30), zone="America/Havana", period="day")  # the second 00:30 of the day
@given(now=st.floats(utc(2023, 1, 1), utc(2027, 1, 1)), zone=st.sampled_from(ZONES),
       period=st.sampled_from(["day", "week", "month"]))
def test_periods_tile_time(now, zone, period):
    start, end = period_bounds(period, now, zone)
    assert start <= now < end
    local = datetime.fromtimestamp(start, ZoneInfo(zone))
    assert local.minute == 0 and local.hour <= 1  # midnight (or the hour a DST change skips it to)
    if period == "week":
        assert local.weekday() == 0
    if period == "month":
        assert local.day == 1
    # every instant of the period is in the same period, and the next one starts at its end
    assert period_bounds(period, start, zone) == (start, end)
    assert period_bounds(period, end - 0.001, zone) == (start, end)
    assert period_bounds(period, end, zone)[0] == end


def test_a_repeated_hour_after_midnight_stays_in_its_day():
    # Havana falls back at 01:00 to 00:00 on 2024-11-03: 00:00-01:00 happens twice, both in
    # the day that began at the first midnight (04:00 UTC) and ends 25 hours later
    store = LocalCounterStore()
    quotas = Quotas(store)
    key = limited_key(budget=Budget(usd=1.0, period="day"))
    quotas.admit_key(key, 10, utc(2024, 11, 3, 4, 30), "America/Havana").settle(None, 1.5, True)
    for now in (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)):  # 00:30 again, then 01:30
        with pytest.raises(Refused):  # the spend does not start again within the day
            quotas.admit_key(key, 10, now, "America/Havana")
        assert key_status(key, store.peek_key(key.identity), now, "America/Havana")["budget"]["spent"] == 1.5
    day = (utc(2024, 11, 3, 4), utc(2024, 11, 4, 5))
    for now in (utc(2024, 11, 3, 4, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)):
        assert period_bounds("day", now, "America/Havana") == day


def test_an_instant_just_before_midnight_is_in_the_period_it_ends():
    midnight = utc(2024, 5, 2)
    for now in (midnight - 2e-7, midnight - 4e-7):  # less than half a microsecond before
        start, end = period_bounds("day", now, "UTC")
        assert start <= now < end
        assert (start, end) == (utc(2024, 5, 1), midnight)


# --- estimate_tokens ----------------------------------------------------------------------------

CONFIG = """\
    version: 1
    providers:
      demo: {type: mock}
    models:
      small: {provider: demo, model: echo, max_output_tokens: 256}
      big: {provider: demo, model: echo, max_output_tokens: 4096}
      plain: {provider: demo, model: echo}
    aliases:
      chat:
        targets: [small]
        fallbacks: [big]
      bare:
        targets: [plain]
    """


@pytest.fixture
def graph(tmp_path) -> Graph:
    path = tmp_path / "gateway.yaml"
    Path(path).write_text(dedent(CONFIG), "utf-8")
    return load(str(path), env={}).graph


def test_an_estimate_is_body_bytes_over_4_plus_the_requested_output(graph):
    chat = graph.routes["chat"]
    assert estimate_tokens({"max_tokens": 100}, 400, graph, chat) == 200
    assert estimate_tokens({"max_completion_tokens": 50}, 403, graph, chat) == 150
    assert estimate_tokens({"max_output_tokens": 70}, 1, graph, chat) == 70
    assert estimate_tokens({"max_tokens": 9000}, 0, graph, chat) == 9000  # above any deployment's


def test_without_a_requested_output_the_routes_largest_max_output_tokens(graph):
    assert estimate_tokens({}, 400, graph, graph.routes["chat"]) == 100 + 4096  # its fallback's
    assert estimate_tokens({}, 400, graph, graph.routes["small"]) == 100 + 256
    assert estimate_tokens({}, 400, graph, graph.routes["bare"]) == 100 + DEFAULT_OUTPUT_TOKENS
    assert DEFAULT_OUTPUT_TOKENS == 1024


def test_an_embeddings_estimate_has_no_output(graph):
    assert estimate_tokens({"max_tokens": 100}, 400, graph, graph.routes["chat"], answers=False) == 100


@pytest.mark.parametrize("value", [0, -5, True, "100", 12.5, None])
def test_a_maximum_that_is_not_a_positive_integer_is_not_one(graph, value):
    assert estimate_tokens({"max_tokens": value}, 40, graph, graph.routes["small"]) == 10 + 256


# --- Slots --------------------------------------------------------------------------------------


async def until(condition, turns: int = 50) -> None:
    """Let the loop run until `condition()` holds (a few turns; no sleeping)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition()


async def test_a_free_slot_is_taken_at_once():
    slots = Slots()
    taking = slots.take(2, "low", 0.0, 5.0)
    with pytest.raises(StopIteration) as done:
        taking.send(None)  # finished without suspending
    assert done.value.value is True
    assert slots.try_take(2)
    assert slots.inflight == 2
    assert not slots.try_take(2)
    assert await asyncio.wait_for(slots.take(2, "high", 0.0, 0), 1) is False  # at the limit, no wait
    assert (slots.inflight, slots.queued) == (2, 0)


async def test_waiters_are_served_by_priority_then_arrival():
    slots = Slots()
    assert slots.try_take(1)
    served: list[str] = []

    async def waiter(name: str, priority: str, arrival: float) -> None:
        assert await slots.take(1, priority, arrival, 2.0)
        served.append(name)

    async with asyncio.timeout(2):
        plan = [("low", "low", 100.0), ("normal", "normal", 100.0), ("high", "high", 100.5),
                ("high later", "high", 100.5), ("normal early", "normal", 99.0)]
        tasks = [asyncio.create_task(waiter(*w)) for w in plan]
        await until(lambda: slots.queued == len(plan))
        for count in range(1, len(plan) + 1):
            slots.release()  # the slot passes on: still one in flight
            await until(lambda: len(served) == count)  # noqa: B023
            assert slots.inflight == 1
        await asyncio.gather(*tasks)
    assert served == ["normal early", "high", "high later", "normal", "low"]
    slots.release()
    assert slots.inflight == 0


@pytest.mark.parametrize("low_arrival, first", [
    (100.0 - 2 * PRIORITY_STEP - 0.01, "low"),  # waited more than 2 s longer: ahead of the high
    (100.0 - 2 * PRIORITY_STEP + 0.01, "high"),
])
async def test_a_low_that_waited_long_enough_goes_ahead_of_a_high(low_arrival, first):
    slots = Slots()
    assert slots.try_take(1)
    served: list[str] = []

    async def waiter(name: str, arrival: float) -> None:
        assert await slots.take(1, name, arrival, 2.0)
        served.append(name)

    async with asyncio.timeout(2):
        tasks = [asyncio.create_task(waiter("high", 100.0)), asyncio.create_task(waiter("low", low_arrival))]
        await until(lambda: slots.queued == 2)
        slots.release()
        await until(lambda: len(served) == 1)
        slots.release()
        await asyncio.gather(*tasks)
    assert served[0] == first


async def test_a_waiter_that_times_out_leaves_the_queue():
    slots = Slots()
    assert slots.try_take(1)
    async with asyncio.timeout(2):
        patient = asyncio.create_task(slots.take(1, "low", 5.0, 2.0))
        assert await slots.take(1, "high", 0.0, 0.05) is False
        assert slots.queued == 1  # only the patient one
        slots.release()
        assert await patient is True
    assert (slots.inflight, slots.queued) == (1, 0)
    slots.release()
    assert slots.inflight == 0


async def test_a_cancelled_waiter_leaves_at_once_and_the_slot_goes_to_the_next():
    slots = Slots()
    assert slots.try_take(1)
    async with asyncio.timeout(2):
        gone = asyncio.create_task(slots.take(1, "high", 0.0, 2.0))
        next_one = asyncio.create_task(slots.take(1, "low", 0.0, 2.0))
        await until(lambda: slots.queued == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert slots.queued == 1
        slots.release()
        assert await next_one is True
    assert (slots.inflight, slots.queued) == (1, 0)


async def test_a_waiter_cancelled_just_as_its_slot_came_passes_it_on():
    slots = Slots()
    assert slots.try_take(1)
    async with asyncio.timeout(2):
        gone = asyncio.create_task(slots.take(1, "high", 0.0, 2.0))
        next_one = asyncio.create_task(slots.take(1, "low", 0.0, 2.0))
        await until(lambda: slots.queued == 2)
        slots.release()  # handed to `gone`, which has not run yet
        assert not slots.try_take(1)  # no one barges in meanwhile
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert await next_one is True
    assert (slots.inflight, slots.queued) == (1, 0)


async def test_release_without_waiters_frees_the_slot():
    slots = Slots()
    assert slots.try_take(2) and slots.try_take(2)
    slots.release()
    assert slots.inflight == 1
    assert slots.try_take(2)
    slots.release()
    slots.release()
    assert slots.inflight == 0


async def test_a_raised_limit_lets_waiters_in():
    slots = Slots()
    assert slots.try_take(1)
    async with asyncio.timeout(2):
        waiters = [asyncio.create_task(slots.take(1, "normal", float(i), 2.0)) for i in range(3)]
        await until(lambda: slots.queued == 3)
        slots.admit_waiting(3)
        await until(lambda: waiters[0].done() and waiters[1].done())  # two free slots: the first two
        assert waiters[0].result() is True and waiters[1].result() is True
        assert not waiters[2].done()
        assert slots.queued == 1 and slots.inflight == 3
        slots.admit_waiting(float("inf"))  # a limit removed
        assert await waiters[2] is True
    assert (slots.inflight, slots.queued) == (4, 0)


async def test_a_lowered_limit_hands_over_only_once_inflight_is_below_it():
    slots = Slots()
    for _ in range(3):
        assert slots.try_take(3)
    async with asyncio.timeout(2):
        assert not slots.try_take(1)  # a reload lowered the limit to 1
        waiter = asyncio.create_task(slots.take(1, "normal", 0.0, 2.0))
        await until(lambda: slots.queued == 1)
        slots.release()
        slots.release()
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert (slots.inflight, slots.queued) == (1, 1)
        slots.release()  # the last of the three: its slot passes on
        assert await waiter is True
    assert (slots.inflight, slots.queued) == (1, 0)


# --- a deployment's quota: quota_wait, Quotas.lease, Lease -----------------------------------------


def test_quota_wait_names_the_rpm_and_the_seconds_until_room():
    limits = Limits(rpm=2, tpm=1000)
    usage = DeploymentUsage()
    assert quota_wait(limits, None, 10**6, at(0)) is None  # no counters: nothing counted yet
    assert Quotas.lease(limits, usage, 100, at(0)) is not None
    assert Quotas.lease(limits, usage, 100, at(10 * SECOND)) is not None
    assert quota_wait(limits, usage, 1, at(20 * SECOND)) == ("limit rpm 2", 40.0)
    assert Quotas.lease(limits, usage, 1, at(20 * SECOND)) is None
    assert (usage.requests.used(at(20 * SECOND)), usage.tokens.used(at(20 * SECOND))) == (2, 200)
    assert quota_wait(limits, usage, 1, at(20 * SECOND) + 40.0) is None  # room after the wait
    assert Quotas.lease(limits, usage, 1, at(60 * SECOND)) is not None


def test_quota_wait_names_the_tpm_and_a_lease_settles_or_releases_its_tokens():
    limits = Limits(tpm=1000)
    usage = DeploymentUsage()
    first = Quotas.lease(limits, usage, 700, at(0))
    assert isinstance(first, Lease)
    assert quota_wait(limits, usage, 400, at(5 * SECOND)) == ("limit tpm 1000", 55.0)
    assert quota_wait(limits, usage, 1001, at(5 * SECOND)) == ("limit tpm 1000", 60.0)  # never alone
    assert Quotas.lease(limits, usage, 400, at(5 * SECOND)) is None
    first.settle(100)  # used less than reserved
    first.settle(900)  # once only
    first.release()  # after a settlement: nothing
    assert usage.tokens.used(at(5 * SECOND)) == 100
    second = Quotas.lease(limits, usage, 900, at(5 * SECOND))
    assert second is not None and usage.tokens.used(at(5 * SECOND)) == 1000
    second.release()  # the try failed: no tokens used
    second.settle(50)
    assert usage.tokens.used(at(5 * SECOND)) == 100
    third = Quotas.lease(limits, usage, 10, at(6 * SECOND))
    third.settle(None)  # an answer without usage: the reservation stands
    assert usage.tokens.used(at(6 * SECOND)) == 110
    third.settle(-5)
    assert usage.tokens.used(at(6 * SECOND)) == 100


def test_a_lease_books_all_or_nothing():
    limits = Limits(rpm=5, tpm=100)
    usage = DeploymentUsage()
    lease = Quotas.lease(limits, usage, 100, at(0))
    lease.release()  # a failed try: its request still counts, not its tokens
    assert (usage.requests.used(at(1)), usage.tokens.used(at(1))) == (1, 0)
    assert Quotas.lease(limits, usage, 100, at(1)) is not None
    assert Quotas.lease(limits, usage, 1, at(2)) is None  # tpm full: the request is not counted
    assert usage.requests.used(at(2)) == 2
    assert quota_wait(Limits(rpm=2, tpm=100), usage, 1, at(2))[0] == "limit rpm 2"  # rpm named first


@settings(max_examples=150, deadline=None)
@given(pattern=st.lists(st.tuples(GAPS, AMOUNTS, st.booleans()), min_size=1, max_size=50),
       rpm=st.integers(1, 8), tpm=st.integers(1, 60))
def test_a_lease_is_granted_exactly_when_both_windows_have_room(pattern, rpm, tpm):
    """A lease expires its deployment's windows only when that changes the answer: its answers
    are still the reference's, whatever the arrival pattern and whichever tries failed."""
    limits = Limits(rpm=rpm, tpm=tpm)
    usage = DeploymentUsage()
    requests: list[tuple[int, int]] = []  # (tick, 1) per try booked
    tokens: list[tuple[int, int]] = []  # (tick, tokens) it holds: 0 once released
    now = 0
    for gap, amount, failed in pattern:
        now += gap
        fits = held(requests, now) < rpm and held(tokens, now) + amount <= tpm
        lease = Quotas.lease(limits, usage, amount, at(now))
        assert (lease is not None) is fits
        if lease is not None:
            requests.append((now, 1))
            if failed:
                lease.release()
            tokens.append((now, 0 if failed else amount))
    assert usage.requests.used(at(now)) == held(requests, now)
    assert usage.tokens.used(at(now)) == held(tokens, now)


def test_a_deployments_token_window_keeps_nothing_two_windows_old():
    """Released reservations add nothing to the total that would make a lease expire the
    window: it is expired once its oldest entry is two windows old, so it stays bounded."""
    usage = DeploymentUsage()
    for second in range(0, 600, 5):
        Quotas.lease(Limits(tpm=1000), usage, 100, at(second * SECOND)).release()
    entries = usage.tokens.entries
    assert entries[0].at > at(595 * SECOND) - 2 * WINDOW
    assert len(entries) <= 2 * WINDOW / 5 + 1


def test_a_lease_without_tpm_reserves_no_tokens():
    limits = Limits(rpm=3, concurrency=2)
    usage = DeploymentUsage()
    lease = Quotas.lease(limits, usage, 10**6, at(0))
    assert lease is not None and lease.tokens is None
    lease.settle(500)
    assert usage.tokens.used(at(0)) == 0 and usage.requests.used(at(0)) == 1


async def test_deployment_limits_status_shows_usage_headroom_and_queue():
    limits = Limits(rpm=5, tpm=1000, concurrency=1)
    store = LocalCounterStore()
    assert store.peek_deployment(("d",)) is None
    usage = store.deployment(("d",))
    assert store.deployment(("d",)) is usage and store.peek_deployment(("d",)) is usage
    Quotas.lease(limits, usage, 300, at(0))
    assert usage.slots.try_take(1)
    async with asyncio.timeout(2):
        waiter = asyncio.create_task(usage.slots.take(1, "normal", 0.0, 2.0))
        await until(lambda: usage.slots.queued == 1)
        assert deployment_limits_status(limits, usage, at(1)) == {
            "rpm": {"limit": 5, "used": 1, "remaining": 4},
            "tpm": {"limit": 1000, "used": 300, "remaining": 700},
            "concurrency": {"limit": 1, "used": 1, "remaining": 0, "queued": 1},
        }
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert deployment_limits_status(limits, None, at(1))["concurrency"]["queued"] == 0
    store.retain([], [])
    assert store.peek_deployment(("d",)) is None


def test_the_store_keeps_counters_by_identity_until_they_leave_the_config():
    store = LocalCounterStore()
    key = limited_key(limits=Limits(rpm=1))
    renamed = AppKey.plain("renamed", Secret("sk-app-test"), None, limits=Limits(rpm=2))
    assert store.key(key.identity) is store.key(renamed.identity)
    assert isinstance(store.key(key.identity), KeyUsage)
    store.deployment(("d",))
    store.retain([key.identity], [])
    assert store.peek_key(key.identity) is not None and store.peek_deployment(("d",)) is None
    store.retain([], [])
    assert store.peek_key(key.identity) is None
