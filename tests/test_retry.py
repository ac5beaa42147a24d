"""The failure taxonomy (adapters/base.py) and the retry decision table
(daemon/routing/retry.py): classify_status, decide,
parse_retry_after and backoff_delay."""

from __future__ import annotations

import email.utils
import itertools
import math
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.adapters.base import parse_retry_after
from gatewayd.daemon.core.failures import FailureClass, UpstreamError, classify_status
from gatewayd.daemon.core.graph import Backoff, RetryPolicy
from gatewayd.daemon.routing.retry import Action, Decision, backoff_delay, decide

RETRYABLE = frozenset({FailureClass.RATE_LIMIT, FailureClass.OVERLOADED, FailureClass.SERVER,
                       FailureClass.TIMEOUT, FailureClass.CONNECT})
NO_RETRY = frozenset({FailureClass.AUTH, FailureClass.NOT_FOUND, FailureClass.PROTOCOL,
                      FailureClass.REDIRECT})

# A representative upstream status per class (None: failures that carry no status).
STATUS_OF = {
    FailureClass.RATE_LIMIT: 429,
    FailureClass.OVERLOADED: 503,
    FailureClass.SERVER: 500,
    FailureClass.TIMEOUT: None,
    FailureClass.CONNECT: None,
    FailureClass.AUTH: 401,
    FailureClass.NOT_FOUND: 404,
    FailureClass.CLIENT: 400,
    FailureClass.PROTOCOL: None,
    FailureClass.REDIRECT: 302,
    FailureClass.INTERNAL: None,
}

ATTEMPTS = 3
RETRY_AFTER_MAX = 30.0
NO_JITTER = Backoff(initial=0.25, max=8.0, multiplier=2.0, jitter="none")


def policy(
    statuses=(), *, timeout=False, connect=False, attempts=ATTEMPTS, backoff=NO_JITTER,
    retry_after_max=RETRY_AFTER_MAX,
) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=backoff, retry_statuses=frozenset(statuses),
                       retry_timeout=timeout, retry_connect=connect, retry_after_max=retry_after_max)


def listing(failure: FailureClass) -> RetryPolicy:
    """A policy whose `when` names this failure (for the statusless classes: everything)."""
    status = STATUS_OF[failure]
    if failure is FailureClass.TIMEOUT:
        return policy(timeout=True)
    if failure is FailureClass.CONNECT:
        return policy(connect=True)
    if status is None:  # protocol, internal: name everything there is
        return policy(range(100, 600), timeout=True, connect=True)
    return policy({status})


def not_listing(failure: FailureClass) -> RetryPolicy:
    """A policy whose `when` names everything except this failure."""
    status = STATUS_OF[failure]
    others = set(range(100, 600)) - ({status} if status is not None else set())
    return policy(others, timeout=failure is not FailureClass.TIMEOUT,
                  connect=failure is not FailureClass.CONNECT)


def error(failure: FailureClass, retry_after: float | None = None, status: int | None = -1) -> UpstreamError:
    return UpstreamError(failure, "boom", status=STATUS_OF[failure] if status == -1 else status,
                         retry_after=retry_after, body=b'{"error": {}}')


# ---------------------------------------------------------------- classify_status


def expected_class(status: int) -> FailureClass | None:
    """The table in adapters/base.py; None where it says nothing (below 300)."""
    if status == 429:
        return FailureClass.RATE_LIMIT
    if status in (503, 529):
        return FailureClass.OVERLOADED
    if 500 <= status <= 599:
        return FailureClass.SERVER
    if status in (401, 403):
        return FailureClass.AUTH
    if status == 404:
        return FailureClass.NOT_FOUND
    if 400 <= status <= 499:
        return FailureClass.CLIENT
    if 300 <= status <= 399:
        return FailureClass.REDIRECT
    return None


@pytest.mark.parametrize("status", range(100, 600))
def test_classify_status_every_status(status):
    got = classify_status(status)
    assert isinstance(got, FailureClass)
    want = expected_class(status)
    if want is not None:  # 1xx/2xx never reach classify_status: send() returns them
        assert got is want, status


@pytest.mark.parametrize("status", [400, 413, 422])
def test_client_errors_named_by_spec_are_client(status):
    assert classify_status(status) is FailureClass.CLIENT


# ---------------------------------------------------------------- decide: the whole table

RETRY_AFTERS = {
    "none": None,
    "zero": 0.0,
    "within": 2.5,
    "at_max": RETRY_AFTER_MAX,
    "beyond": RETRY_AFTER_MAX + 0.001,
    "far_beyond": 3600.0,
}


def expected_decision(failure, listed, last, retry_after, attempt) -> Decision:
    if failure is FailureClass.CLIENT:
        return Decision(Action.RETURN, counts=False)
    if failure is FailureClass.INTERNAL:
        return Decision(Action.FALL_BACK, counts=False)
    if failure in NO_RETRY or not listed or last:
        return Decision(Action.FALL_BACK, counts=True)
    if retry_after is None:
        return Decision(Action.RETRY, delay=backoff_delay(NO_JITTER, attempt))
    if retry_after > RETRY_AFTER_MAX:
        return Decision(Action.FALL_BACK, counts=True)
    return Decision(Action.RETRY, delay=retry_after)


@pytest.mark.parametrize(
    ("failure", "listed", "attempt", "ra_name"),
    list(itertools.product(list(FailureClass), [True, False], [1, ATTEMPTS - 1, ATTEMPTS],
                           list(RETRY_AFTERS))),
    ids=lambda v: v.value if isinstance(v, FailureClass) else str(v),
)
def test_decide_table(failure, listed, attempt, ra_name):
    retry_after = RETRY_AFTERS[ra_name]
    retry = listing(failure) if listed else not_listing(failure)
    got = decide(error(failure, retry_after), retry, attempt, random.Random(0))
    want = expected_decision(failure, listed, attempt >= ATTEMPTS, retry_after, attempt)
    assert got.action is want.action
    if want.action is Action.RETRY:
        assert got.delay == pytest.approx(want.delay)
    else:
        assert got.delay == 0.0
        assert got.counts is want.counts


@pytest.mark.parametrize("status", [400, 413, 422, 409, 418])
def test_client_error_returned_as_is_even_when_listed(status):
    retry = policy(range(100, 600), timeout=True, connect=True)
    for attempt in (1, ATTEMPTS):
        got = decide(error(FailureClass.CLIENT, 1.0, status=status), retry, attempt)
        assert got == Decision(Action.RETURN, delay=0.0, counts=False)


@pytest.mark.parametrize(("failure", "status"), [
    (FailureClass.AUTH, 401), (FailureClass.AUTH, 403), (FailureClass.NOT_FOUND, 404),
    (FailureClass.REDIRECT, 301), (FailureClass.REDIRECT, 307), (FailureClass.PROTOCOL, None),
    (FailureClass.PROTOCOL, 200),
])
def test_misconfiguration_falls_back_without_retry_and_counts(failure, status):
    retry = policy(range(100, 600), timeout=True, connect=True, attempts=20)
    got = decide(error(failure, None, status=status), retry, 1)
    assert got.action is Action.FALL_BACK
    assert got.counts is True


def test_single_attempt_never_retries():
    retry = policy({429, 500, 503}, timeout=True, connect=True, attempts=1)
    for failure in RETRYABLE:
        assert decide(error(failure), retry, 1).action is Action.FALL_BACK


def test_attempts_count_tries_including_the_first():
    retry = policy({500}, attempts=3)
    actions = [decide(error(FailureClass.SERVER), retry, n).action for n in (1, 2, 3)]
    assert actions == [Action.RETRY, Action.RETRY, Action.FALL_BACK]


def test_listing_one_status_does_not_list_another():
    retry = policy({429})
    assert decide(error(FailureClass.RATE_LIMIT), retry, 1).action is Action.RETRY
    assert decide(error(FailureClass.OVERLOADED), retry, 1).action is Action.FALL_BACK
    assert decide(error(FailureClass.SERVER), retry, 1).action is Action.FALL_BACK
    assert decide(error(FailureClass.TIMEOUT), retry, 1).action is Action.FALL_BACK
    assert decide(error(FailureClass.CONNECT), retry, 1).action is Action.FALL_BACK


def test_timeout_and_connect_are_listed_independently():
    only_timeout = policy(timeout=True)
    only_connect = policy(connect=True)
    assert decide(error(FailureClass.TIMEOUT), only_timeout, 1).action is Action.RETRY
    assert decide(error(FailureClass.CONNECT), only_timeout, 1).action is Action.FALL_BACK
    assert decide(error(FailureClass.CONNECT), only_connect, 1).action is Action.RETRY
    assert decide(error(FailureClass.TIMEOUT), only_connect, 1).action is Action.FALL_BACK


def test_exact_status_decides_not_the_class():
    retry = policy({503})
    assert decide(error(FailureClass.OVERLOADED, status=503), retry, 1).action is Action.RETRY
    assert decide(error(FailureClass.OVERLOADED, status=529), retry, 1).action is Action.FALL_BACK
    assert decide(error(FailureClass.SERVER, status=502), policy({502}), 1).action is Action.RETRY
    assert decide(error(FailureClass.SERVER, status=502), policy({500}), 1).action is Action.FALL_BACK


@pytest.mark.parametrize(("failure", "nominal"), [
    (FailureClass.RATE_LIMIT, 429), (FailureClass.OVERLOADED, 503), (FailureClass.SERVER, 500),
])
def test_in_band_error_without_status_uses_nominal_status(failure, nominal):
    assert decide(error(failure, status=None), policy({nominal}), 1).action is Action.RETRY
    assert decide(error(failure, status=None), policy(set(range(100, 600)) - {nominal}), 1).action \
        is Action.FALL_BACK


def test_retry_after_within_max_is_the_delay_not_backoff():
    jittered = Backoff(initial=0.25, max=8.0, multiplier=2.0, jitter="full")
    retry = policy({429}, backoff=jittered, retry_after_max=60.0)
    for ra in (0.0, 0.5, 12.0, 59.9, 60.0):
        got = decide(error(FailureClass.RATE_LIMIT, ra), retry, 1, random.Random(1))
        assert got == Decision(Action.RETRY, delay=ra)


def test_retry_after_beyond_max_moves_on_at_once_even_with_attempts_left():
    retry = policy({429, 503}, attempts=20, retry_after_max=5.0)
    for failure in (FailureClass.RATE_LIMIT, FailureClass.OVERLOADED):
        got = decide(error(failure, 5.01), retry, 1)
        assert got.action is Action.FALL_BACK
        assert got.delay == 0.0
        assert got.counts is True


def test_backoff_delay_used_without_retry_after():
    retry = policy({500}, attempts=5)
    delays = [decide(error(FailureClass.SERVER), retry, n).delay for n in (1, 2, 3, 4)]
    assert delays == [0.25, 0.5, 1.0, 2.0]


def test_decide_with_seeded_rng_is_reproducible():
    jittered = Backoff(initial=1.0, max=10.0, multiplier=2.0, jitter="full")
    retry = policy({500}, backoff=jittered, attempts=5)
    a = [decide(error(FailureClass.SERVER), retry, n, random.Random(7)).delay for n in (1, 2, 3)]
    b = [decide(error(FailureClass.SERVER), retry, n, random.Random(7)).delay for n in (1, 2, 3)]
    assert a == b


# ---------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(("value", "want"), [
    ("0", 0.0), ("5", 5.0), ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0.25", 0.25),
])
def test_parse_retry_after_seconds(value, want):
    assert parse_retry_after(value) == want


@pytest.mark.parametrize("value", [None, "", "   "])
def test_parse_retry_after_absent(value):
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["-1", "-0.5", "-3600"])
def test_parse_retry_after_negative_is_zero(value):
    assert parse_retry_after(value) == 0.0


@pytest.mark.parametrize("value", [
    "soon", "abc", "5 seconds", "Mon, 32 Foo 2020 00:00:00 GMT", "Mon, 01 Jan 2020 25:00:00 GMT",
    "Mon, 01 Jan 99999 00:00:00 GMT", "0x10", "{}",
])
def test_parse_retry_after_garbage_is_none(value):
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e400", "-inf", "nan", "NaN"])
def test_parse_retry_after_non_finite_is_rejected(value):
    # Not delta-seconds: an "inf" would otherwise cool a deployment down for ever.
    got = parse_retry_after(value)
    assert got is None or (math.isfinite(got) and got >= 0.0), (value, got)


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value):
    got = parse_retry_after(value, now=1_700_000_000.0)
    assert got is None or got >= 0.0


def test_parse_retry_after_future_http_date():
    now = time.time()
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=90)
    got = parse_retry_after(email.utils.format_datetime(when, usegmt=True), now=now)
    assert got == pytest.approx(90, abs=1.0)  # HTTP dates have whole seconds


def test_parse_retry_after_future_http_date_against_wall_clock():
    when = datetime.now(UTC) + timedelta(seconds=300)
    got = parse_retry_after(email.utils.format_datetime(when, usegmt=True))
    assert got == pytest.approx(300, abs=2.0)


def test_parse_retry_after_past_http_date_is_zero():
    now = time.time()
    when = datetime.fromtimestamp(now, UTC) - timedelta(hours=1)
    assert parse_retry_after(email.utils.format_datetime(when, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


REF = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


@pytest.fixture(params=["UTC", "Asia/Tokyo", "America/New_York"])
def local_zone(request, monkeypatch):
    """Run with the process's local time zone set to something (not always UTC)."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
    "Sun Nov  6 08:49:37 1994",  # obsolete asctime: GMT by definition (RFC 9110 §5.6.7)
    "Sun, 06 Nov 1994 08:49:37 -0000",
])
def test_parse_retry_after_http_date_formats_are_gmt(value, local_zone):
    assert parse_retry_after(value, now=REF - 100) == pytest.approx(100.0), local_zone


# ---------------------------------------------------------------- backoff_delay

backoffs = st.builds(
    lambda initial, max_, multiplier: (initial, max_, multiplier),
    st.floats(0.001, 100.0), st.floats(0.001, 1000.0), st.floats(1.0, 10.0),
)
tries = st.integers(1, 20)


def base_of(initial: float, max_: float, multiplier: float, n: int) -> float:
    return min(max_, initial * multiplier ** (n - 1))


@given(backoffs, tries, st.integers(0, 2**32))
def test_backoff_full_jitter_in_zero_to_base(params, n, seed):
    initial, max_, multiplier = params
    d = backoff_delay(Backoff(initial, max_, multiplier, "full"), n, random.Random(seed))
    assert 0.0 <= d <= base_of(initial, max_, multiplier, n)
    assert d <= max_


@given(backoffs, tries, st.integers(0, 2**32))
def test_backoff_equal_jitter_in_half_base_to_base(params, n, seed):
    initial, max_, multiplier = params
    base = base_of(initial, max_, multiplier, n)
    d = backoff_delay(Backoff(initial, max_, multiplier, "equal"), n, random.Random(seed))
    assert base / 2 <= d <= base * (1 + 1e-12)
    assert d <= max_ * (1 + 1e-12)


@given(backoffs, tries)
def test_backoff_no_jitter_is_base(params, n):
    initial, max_, multiplier = params
    d = backoff_delay(Backoff(initial, max_, multiplier, "none"), n)
    assert d == base_of(initial, max_, multiplier, n)
    assert d <= max_


@given(backoffs, st.integers(1, 19))
def test_backoff_base_is_monotone_in_n(params, n):
    initial, max_, multiplier = params
    b = Backoff(initial, max_, multiplier, "none")
    assert backoff_delay(b, n) <= backoff_delay(b, n + 1)


def test_backoff_first_wait_is_initial_and_grows():
    b = Backoff(initial=0.25, max=8.0, multiplier=2.0, jitter="none")
    assert [backoff_delay(b, n) for n in range(1, 9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_full_jitter_spreads_over_range():
    b = Backoff(initial=4.0, max=4.0, multiplier=1.0, jitter="full")
    rng = random.Random(3)
    draws = [backoff_delay(b, 1, rng) for _ in range(2000)]
    assert min(draws) < 0.4 and max(draws) > 3.6
    assert sum(draws) / len(draws) == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize("multiplier", [1e20, 1e200])
def test_backoff_huge_multiplier_is_capped_not_overflowing(multiplier):
    # The schema bounds multiplier only from below and attempts at 20.
    b = Backoff(initial=0.25, max=8.0, multiplier=multiplier, jitter="none")
    assert backoff_delay(b, 20) == 8.0
