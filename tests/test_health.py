"""The cooldown state machine (daemon/state/health.py, SPEC §3 step 9) and HealthBook,
keyed by deployment identity. Every time is an explicit monotonic `now`."""

from __future__ import annotations

import pytest

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import (
    Backoff,
    CooldownPolicy,
    Deployment,
    Policy,
    Provider,
    RetryPolicy,
    Secret,
    Timeouts,
)
from gatewayd.daemon.state.health import LATENCY_SMOOTHING, Health, HealthBook

N = 3
INITIAL = 30.0
MULT = 2.0
MAX = 600.0
COOL = CooldownPolicy(failures=N, initial=INITIAL, multiplier=MULT, max=MAX)


def server_error() -> UpstreamError:
    return UpstreamError(FailureClass.SERVER, "boom", status=500)


def rate_limited(retry_after: float | None) -> UpstreamError:
    return UpstreamError(FailureClass.RATE_LIMIT, "slow down", status=429, retry_after=retry_after)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def __call__(self, event: str, health: Health) -> None:
        self.events.append((event, health.cooldown_until))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def cooled(now: float = 0.0, policy: CooldownPolicy = COOL, **kwargs) -> Health:
    """A Health that just entered its first cooldown at `now`."""
    h = Health(**kwargs)
    for _ in range(policy.failures):
        h.fail(server_error(), policy, now)
    assert h.state(now) == "cooldown"
    return h


# ---------------------------------------------------------------- failures and cooldown


def test_fresh_health_is_ok_and_admits():
    h = Health()
    assert h.state(0.0) == "ok"
    assert h.admit(0.0) == (True, False)
    assert h.admit(0.0) == (True, False)  # no limit on concurrent requests while ok


def test_failures_below_threshold_stay_ok():
    h = Health()
    for i in range(N - 1):
        h.fail(server_error(), COOL, 10.0 + i)
        assert h.state(10.0 + i) == "ok"
        assert h.admit(10.0 + i) == (True, False)
    assert h.failures == N - 1
    assert h.cooldown_until == 0.0


def test_nth_failure_starts_cooldown_for_initial():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 5.0)
    h.fail(server_error(), COOL, 100.0)
    assert h.state(100.0) == "cooldown"
    assert h.cooldown_until == pytest.approx(100.0 + INITIAL)
    assert h.last_failure is FailureClass.SERVER
    assert "500" in h.last_error


def test_one_failure_threshold():
    h = Health()
    h.fail(server_error(), CooldownPolicy(failures=1, initial=5.0, multiplier=2.0, max=60.0), 1.0)
    assert h.state(1.0) == "cooldown"
    assert h.cooldown_until == pytest.approx(6.0)


def test_no_admission_while_cooling():
    h = cooled(now=0.0)
    for now in (0.0, 1.0, INITIAL / 2, INITIAL - 0.001):
        assert h.state(now) == "cooldown"
        assert h.admit(now) == (False, False)
    assert not h.probing


def test_after_deadline_exactly_one_probe():
    h = cooled(now=0.0)
    assert h.state(INITIAL) == "half_open"
    assert h.admit(INITIAL) == (True, True)
    for now in (INITIAL, INITIAL + 1, INITIAL + 1000):
        assert h.admit(now) == (False, False)
    assert h.probing


def test_probe_success_closes_and_resets():
    h = cooled(now=0.0)
    assert h.admit(INITIAL + 1) == (True, True)
    h.succeed(latency=0.2)
    assert h.state(INITIAL + 1) == "ok"
    assert h.failures == 0
    assert h.cooldowns == 0
    assert h.cooldown_until == 0.0
    assert not h.probing
    assert h.admit(INITIAL + 1) == (True, False)
    assert h.admit(INITIAL + 1) == (True, False)
    # counters reset: the next cooldown needs N failures again and lasts `initial` again
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 500.0)
    assert h.state(500.0) == "ok"
    h.fail(server_error(), COOL, 500.0)
    assert h.cooldown_until == pytest.approx(500.0 + INITIAL)


def test_probe_failure_grows_cooldown_up_to_max():
    h = cooled(now=0.0)
    lengths = [h.cooldown_until - 0.0]
    now = h.cooldown_until
    for _ in range(8):
        assert h.state(now) == "half_open"
        assert h.admit(now) == (True, True)
        now += 1.0  # the probe takes a second, then fails once: that is enough
        h.fail(server_error(), COOL, now)
        assert h.state(now) == "cooldown"
        assert not h.probing
        lengths.append(h.cooldown_until - now)
        now = h.cooldown_until
    assert lengths == pytest.approx([30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0, 600.0])


def test_probe_failure_sequence_explicit():
    h = cooled(now=0.0)
    assert h.cooldown_until == pytest.approx(INITIAL)
    h.admit(INITIAL)
    h.fail(server_error(), COOL, 40.0)
    assert h.cooldown_until == pytest.approx(40.0 + INITIAL * MULT)
    h.admit(h.cooldown_until)
    h.fail(server_error(), COOL, 200.0)
    assert h.cooldown_until == pytest.approx(200.0 + INITIAL * MULT**2)


def test_cooldown_cap_holds_for_a_long_outage():
    # A deployment down for days (a YAML `multiplier: 2` is an int): the cooldown
    # stays at max, and nothing breaks.
    policy = CooldownPolicy(failures=1, initial=30.0, multiplier=2, max=600.0)
    h = Health()
    now = 0.0
    for _ in range(3000):
        h.fail(server_error(), policy, now)
        assert h.cooldown_until - now <= 600.0
        now = h.cooldown_until
        assert h.admit(now) == (True, True)
    assert h.state(now) == "half_open"


def test_success_resets_failures():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.succeed()
    assert h.failures == 0
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 1.0)
    assert h.state(1.0) == "ok"
    h.fail(server_error(), COOL, 2.0)
    assert h.state(2.0) == "cooldown"


def test_failures_must_be_consecutive():
    h = Health()
    for i in range(10):
        h.fail(server_error(), COOL, float(i))
        if (i + 1) % (N - 1) == 0:
            h.succeed()
        assert h.state(float(i)) == "ok"


# ---------------------------------------------------------------- Retry-After and deadlines


def test_429_with_long_retry_after_extends_cooldown():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.fail(rate_limited(500.0), COOL, 10.0)
    assert h.cooldown_until == pytest.approx(10.0 + 500.0)
    assert h.state(10.0 + INITIAL + 1) == "cooldown"
    assert h.admit(10.0 + INITIAL + 1) == (False, False)
    assert h.state(510.0) == "half_open"


def test_429_with_short_retry_after_keeps_the_cooldown_length():
    h = Health()
    for _ in range(N):
        h.fail(rate_limited(2.0), COOL, 10.0)
    assert h.cooldown_until == pytest.approx(10.0 + INITIAL)


def test_429_retry_after_on_probe_failure():
    h = cooled(now=0.0)
    h.admit(INITIAL)
    h.fail(rate_limited(1000.0), COOL, INITIAL)
    assert h.cooldown_until == pytest.approx(INITIAL + 1000.0)


def test_enter_cooldown_retry_after_longer_than_cooldown():
    h = Health()
    h.enter_cooldown(COOL, 0.0, 90.0)
    assert h.cooldown_until == pytest.approx(90.0)
    h2 = Health()
    h2.enter_cooldown(COOL, 0.0, None)
    assert h2.cooldown_until == pytest.approx(INITIAL)


def test_deadline_never_moves_earlier():
    h = Health()
    h.enter_cooldown(COOL, 0.0, 500.0)
    assert h.cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 10.0, None)  # 10 + 60 < 500
    assert h.cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 20.0, 5.0)  # 20 + 120 < 500
    assert h.cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 450.0, None)  # 450 + 240 > 500: later is fine
    assert h.cooldown_until == pytest.approx(690.0)


def test_deadline_never_moves_earlier_through_fail():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.fail(rate_limited(400.0), COOL, 0.0)
    assert h.cooldown_until == pytest.approx(400.0)
    # requests admitted before the cooldown keep failing and land meanwhile
    for _ in range(N):
        h.fail(server_error(), COOL, 5.0)
    assert h.cooldown_until >= 400.0


# ---------------------------------------------------------------- the half-open slot


def test_abandon_probe_frees_the_slot():
    h = cooled(now=0.0)
    assert h.admit(INITIAL) == (True, True)
    assert h.admit(INITIAL) == (False, False)
    h.abandon_probe()
    assert h.state(INITIAL) == "half_open"
    assert h.admit(INITIAL + 1) == (True, True)
    assert h.admit(INITIAL + 1) == (False, False)


def test_abandon_probe_keeps_state_and_counters():
    h = cooled(now=0.0)
    h.admit(INITIAL)
    until, cooldowns = h.cooldown_until, h.cooldowns
    h.abandon_probe()
    assert (h.cooldown_until, h.cooldowns) == (until, cooldowns)


# ---------------------------------------------------------------- latency


def test_latency_moving_average():
    h = Health()
    assert h.latency == 0.0
    h.succeed(latency=1.0)
    assert h.latency == pytest.approx(1.0)  # the first sample is taken as is
    h.succeed(latency=2.0)
    want = LATENCY_SMOOTHING * 2.0 + (1 - LATENCY_SMOOTHING) * 1.0
    assert h.latency == pytest.approx(want)
    h.succeed(latency=0.5)
    want = LATENCY_SMOOTHING * 0.5 + (1 - LATENCY_SMOOTHING) * want
    assert h.latency == pytest.approx(want)
    h.succeed()  # no sample: unchanged
    assert h.latency == pytest.approx(want)


def test_latency_average_converges():
    h = Health()
    h.succeed(latency=10.0)
    for _ in range(100):
        h.succeed(latency=0.1)
    assert h.latency == pytest.approx(0.1, rel=1e-6)


# ---------------------------------------------------------------- on_change


def test_on_change_cooldown_start_and_end():
    rec = Recorder()
    h = Health(on_change=rec)
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    assert rec.events == []
    h.fail(server_error(), COOL, 0.0)
    assert rec.events == [("cooldown_start", pytest.approx(INITIAL))]
    h.admit(INITIAL)
    h.fail(server_error(), COOL, INITIAL)
    assert rec.names == ["cooldown_start", "cooldown_start"]
    h.admit(h.cooldown_until)
    h.succeed(latency=0.1)
    assert rec.names == ["cooldown_start", "cooldown_start", "cooldown_end"]
    h.succeed(latency=0.1)  # already ok: no event
    assert rec.names == ["cooldown_start", "cooldown_start", "cooldown_end"]


def test_no_cooldown_end_without_cooldown():
    rec = Recorder()
    h = Health(on_change=rec)
    h.fail(server_error(), COOL, 0.0)
    h.succeed()
    assert rec.events == []


# ---------------------------------------------------------------- HealthBook


def make_policy() -> Policy:
    return Policy(
        timeouts=Timeouts(connect=1.0, first_byte=5.0, idle=5.0, total=30.0),
        retry=RetryPolicy(attempts=2, backoff=Backoff(0.25, 8.0, 2.0, "full"),
                          retry_statuses=frozenset({429, 500, 503}), retry_timeout=True,
                          retry_connect=True, retry_after_max=30.0),
        cooldown=COOL,
    )


def make_provider(name="p", *, type_="openai", base_url="https://api.example.com/v1", key="sk-one",
                  headers=()) -> Provider:
    return Provider(name=name, type=type_, base_url=base_url, api_key=Secret(key) if key else None,
                    headers=headers, max_connections=10, options={})


def make_deployment(name="d", *, model="gpt-4o-mini", **provider) -> Deployment:
    return Deployment(name=name, provider=make_provider(**provider), model=model, policy=make_policy())


def test_book_keys_by_identity_not_name():
    book = HealthBook()
    a = make_deployment("alpha")
    b = Deployment(name="beta", provider=make_provider("renamed-provider"), model="gpt-4o-mini",
                   policy=make_policy())
    assert a.identity == b.identity
    assert book.get(a) is book.get(b)
    assert len(book) == 1
    book.get(a).fail(server_error(), COOL, 0.0)
    assert book.get(b).failures == 1


def test_book_same_key_value_is_same_identity():
    book = HealthBook()
    a = make_deployment("a", key="sk-same")
    b = make_deployment("b", key="sk-same")  # a distinct Secret object, same value
    assert book.get(a) is book.get(b)


@pytest.mark.parametrize("change", [
    {"base_url": "https://other.example.com/v1"},
    {"model": "gpt-4o"},
    {"key": "sk-two"},
    {"key": None},
    {"type_": "azure-openai"},
])
def test_book_different_identity_different_health(change):
    book = HealthBook()
    a = make_deployment("a")
    b = make_deployment("a", **change)
    assert a.identity != b.identity
    assert book.get(a) is not book.get(b)
    assert len(book) == 2


def test_book_peek_does_not_create():
    book = HealthBook()
    d = make_deployment()
    assert book.peek(d) is None
    assert len(book) == 0
    h = book.get(d)
    assert book.peek(d) is h


def test_book_retain_drops_the_rest():
    book = HealthBook()
    keep = make_deployment("keep")
    renamed = make_deployment("keep-renamed")
    gone = make_deployment("gone", base_url="http://127.0.0.1:11434")
    gone2 = make_deployment("gone2", model="other")
    kept_health = book.get(keep)
    kept_health.fail(server_error(), COOL, 0.0)
    book.get(gone).fail(server_error(), COOL, 0.0)
    book.get(gone2)
    assert len(book) == 3
    book.retain([renamed.identity])
    assert len(book) == 1
    assert book.peek(keep) is kept_health
    assert kept_health.failures == 1
    assert book.peek(gone) is None
    assert book.peek(gone2) is None
    assert book.get(gone).failures == 0  # fresh state if it comes back


def test_book_retain_nothing_and_generator():
    book = HealthBook()
    ds = [make_deployment(str(i), model=f"m{i}") for i in range(5)]
    for d in ds:
        book.get(d)
    book.retain(d.identity for d in ds[:2])
    assert len(book) == 2
    book.retain([])
    assert len(book) == 0


def test_book_passes_on_change():
    rec = Recorder()
    book = HealthBook(on_change=rec)
    h = book.get(make_deployment())
    for _ in range(N):
        h.fail(server_error(), COOL, 0.0)
    assert rec.names == ["cooldown_start"]
