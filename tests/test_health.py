"""The cooldown state machine (daemon/state/health.py) and LocalHealthStore,
keyed by deployment identity, through the interface of daemon/state/store.py. Every time is
an explicit wall-clock `now`."""

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
from gatewayd.daemon.state.health import LATENCY_SMOOTHING, Health, LocalHealthStore
from gatewayd.daemon.state.store import FRESH, Admission, HealthView

ADMITTED, PROBE = Admission.ADMITTED, Admission.PROBE
COOLING, PROBE_IN_FLIGHT = Admission.COOLING, Admission.PROBE_IN_FLIGHT

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

    def __call__(self, event: str, identity: tuple, view: HealthView) -> None:
        self.events.append((event, view.cooldown_until))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def cooled(now: float = 0.0, policy: CooldownPolicy = COOL, **kwargs) -> Health:
    """A Health that just entered its first cooldown at `now`."""
    h = Health(**kwargs)
    for _ in range(policy.failures):
        h.fail(server_error(), policy, now)
    assert h.view().state(now) == "cooldown"
    return h


# ---------------------------------------------------------------- failures and cooldown


def test_fresh_health_is_ok_and_admits():
    h = Health()
    assert h.view().state(0.0) == "ok"
    assert h.admit(0.0) is ADMITTED
    assert h.admit(0.0) is ADMITTED  # no limit on concurrent requests while ok


def test_failures_below_threshold_stay_ok():
    h = Health()
    for i in range(N - 1):
        h.fail(server_error(), COOL, 10.0 + i)
        assert h.view().state(10.0 + i) == "ok"
        assert h.admit(10.0 + i) is ADMITTED
    assert h.view().failures == N - 1
    assert h.view().cooldown_until == 0.0


def test_nth_failure_starts_cooldown_for_initial():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 5.0)
    h.fail(server_error(), COOL, 100.0)
    assert h.view().state(100.0) == "cooldown"
    assert h.view().cooldown_until == pytest.approx(100.0 + INITIAL)
    assert h.view().last_failure is FailureClass.SERVER
    assert "500" in h.view().last_error


def test_one_failure_threshold():
    h = Health()
    h.fail(server_error(), CooldownPolicy(failures=1, initial=5.0, multiplier=2.0, max=60.0), 1.0)
    assert h.view().state(1.0) == "cooldown"
    assert h.view().cooldown_until == pytest.approx(6.0)


def test_no_admission_while_cooling():
    h = cooled(now=0.0)
    for now in (0.0, 1.0, INITIAL / 2, INITIAL - 0.001):
        assert h.view().state(now) == "cooldown"
        assert h.admit(now) is COOLING
    assert not h.view().probing


def test_after_deadline_exactly_one_probe():
    h = cooled(now=0.0)
    assert h.view().state(INITIAL) == "half_open"
    assert h.admit(INITIAL) is PROBE
    for now in (INITIAL, INITIAL + 1, INITIAL + 1000):
        assert h.admit(now) is PROBE_IN_FLIGHT
    assert h.view().probing


def test_probe_success_closes_and_resets():
    h = cooled(now=0.0)
    assert h.admit(INITIAL + 1) is PROBE
    h.succeed(latency=0.2)
    assert h.view().state(INITIAL + 1) == "ok"
    assert h.view().failures == 0
    assert h.view().cooldowns == 0
    assert h.view().cooldown_until == 0.0
    assert not h.view().probing
    assert h.admit(INITIAL + 1) is ADMITTED
    assert h.admit(INITIAL + 1) is ADMITTED
    # counters reset: the next cooldown needs N failures again and lasts `initial` again
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 500.0)
    assert h.view().state(500.0) == "ok"
    h.fail(server_error(), COOL, 500.0)
    assert h.view().cooldown_until == pytest.approx(500.0 + INITIAL)


def test_probe_failure_grows_cooldown_up_to_max():
    h = cooled(now=0.0)
    lengths = [h.view().cooldown_until - 0.0]
    now = h.view().cooldown_until
    for _ in range(8):
        assert h.view().state(now) == "half_open"
        assert h.admit(now) is PROBE
        now += 1.0  # the probe takes a second, then fails once: that is enough
        h.fail(server_error(), COOL, now)
        assert h.view().state(now) == "cooldown"
        assert not h.view().probing
        lengths.append(h.view().cooldown_until - now)
        now = h.view().cooldown_until
    assert lengths == pytest.approx([30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0, 600.0])


def test_probe_failure_sequence_explicit():
    h = cooled(now=0.0)
    assert h.view().cooldown_until == pytest.approx(INITIAL)
    h.admit(INITIAL)
    h.fail(server_error(), COOL, 40.0)
    assert h.view().cooldown_until == pytest.approx(40.0 + INITIAL * MULT)
    h.admit(h.view().cooldown_until)
    h.fail(server_error(), COOL, 200.0)
    assert h.view().cooldown_until == pytest.approx(200.0 + INITIAL * MULT**2)


def test_cooldown_cap_holds_for_a_long_outage():
    # A deployment down for days (a YAML `multiplier: 2` is an int): the cooldown
    # stays at max, and nothing breaks.
    policy = CooldownPolicy(failures=1, initial=30.0, multiplier=2, max=600.0)
    h = Health()
    now = 0.0
    for _ in range(3000):
        h.fail(server_error(), policy, now)
        assert h.view().cooldown_until - now <= 600.0
        now = h.view().cooldown_until
        assert h.admit(now) is PROBE
    assert h.view().state(now) == "half_open"


def test_success_resets_failures():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.succeed()
    assert h.view().failures == 0
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 1.0)
    assert h.view().state(1.0) == "ok"
    h.fail(server_error(), COOL, 2.0)
    assert h.view().state(2.0) == "cooldown"


def test_failures_must_be_consecutive():
    h = Health()
    for i in range(10):
        h.fail(server_error(), COOL, float(i))
        if (i + 1) % (N - 1) == 0:
            h.succeed()
        assert h.view().state(float(i)) == "ok"


# ---------------------------------------------------------------- Retry-After and deadlines


def test_429_with_long_retry_after_extends_cooldown():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.fail(rate_limited(500.0), COOL, 10.0)
    assert h.view().cooldown_until == pytest.approx(10.0 + 500.0)
    assert h.view().state(10.0 + INITIAL + 1) == "cooldown"
    assert h.admit(10.0 + INITIAL + 1) is COOLING
    assert h.view().state(510.0) == "half_open"


def test_429_with_short_retry_after_keeps_the_cooldown_length():
    h = Health()
    for _ in range(N):
        h.fail(rate_limited(2.0), COOL, 10.0)
    assert h.view().cooldown_until == pytest.approx(10.0 + INITIAL)


def test_429_retry_after_on_probe_failure():
    h = cooled(now=0.0)
    h.admit(INITIAL)
    h.fail(rate_limited(1000.0), COOL, INITIAL)
    assert h.view().cooldown_until == pytest.approx(INITIAL + 1000.0)


def test_enter_cooldown_retry_after_longer_than_cooldown():
    h = Health()
    h.enter_cooldown(COOL, 0.0, 90.0)
    assert h.view().cooldown_until == pytest.approx(90.0)
    h2 = Health()
    h2.enter_cooldown(COOL, 0.0, None)
    assert h2.view().cooldown_until == pytest.approx(INITIAL)


def test_deadline_never_moves_earlier():
    h = Health()
    h.enter_cooldown(COOL, 0.0, 500.0)
    assert h.view().cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 10.0, None)  # 10 + 60 < 500
    assert h.view().cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 20.0, 5.0)  # 20 + 120 < 500
    assert h.view().cooldown_until == pytest.approx(500.0)
    h.enter_cooldown(COOL, 450.0, None)  # 450 + 240 > 500: later is fine
    assert h.view().cooldown_until == pytest.approx(690.0)


def test_deadline_never_moves_earlier_through_fail():
    h = Health()
    for _ in range(N - 1):
        h.fail(server_error(), COOL, 0.0)
    h.fail(rate_limited(400.0), COOL, 0.0)
    assert h.view().cooldown_until == pytest.approx(400.0)
    # requests admitted before the cooldown keep failing and land meanwhile
    for _ in range(N):
        h.fail(server_error(), COOL, 5.0)
    assert h.view().cooldown_until >= 400.0


# ---------------------------------------------------------------- the half-open slot


def test_abandon_probe_frees_the_slot():
    h = cooled(now=0.0)
    assert h.admit(INITIAL) is PROBE
    assert h.admit(INITIAL) is PROBE_IN_FLIGHT
    h.abandon_probe()
    assert h.view().state(INITIAL) == "half_open"
    assert h.admit(INITIAL + 1) is PROBE
    assert h.admit(INITIAL + 1) is PROBE_IN_FLIGHT


def test_abandon_probe_keeps_state_and_counters():
    h = cooled(now=0.0)
    h.admit(INITIAL)
    until, cooldowns = h.view().cooldown_until, h.view().cooldowns
    h.abandon_probe()
    assert (h.view().cooldown_until, h.view().cooldowns) == (until, cooldowns)


# ---------------------------------------------------------------- latency


def test_latency_moving_average():
    h = Health()
    assert h.view().latency == 0.0
    h.succeed(latency=1.0)
    assert h.view().latency == pytest.approx(1.0)  # the first sample is taken as is
    h.succeed(latency=2.0)
    want = LATENCY_SMOOTHING * 2.0 + (1 - LATENCY_SMOOTHING) * 1.0
    assert h.view().latency == pytest.approx(want)
    h.succeed(latency=0.5)
    want = LATENCY_SMOOTHING * 0.5 + (1 - LATENCY_SMOOTHING) * want
    assert h.view().latency == pytest.approx(want)
    h.succeed()  # no sample: unchanged
    assert h.view().latency == pytest.approx(want)


def test_latency_average_converges():
    h = Health()
    h.succeed(latency=10.0)
    for _ in range(100):
        h.succeed(latency=0.1)
    assert h.view().latency == pytest.approx(0.1, rel=1e-6)


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
    h.admit(h.view().cooldown_until)
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


# ---------------------------------------------------------------- LocalHealthStore


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
    book = LocalHealthStore()
    a = make_deployment("alpha")
    b = Deployment(name="beta", provider=make_provider("renamed-provider"), model="gpt-4o-mini",
                   policy=make_policy())
    assert a.identity == b.identity
    assert book.get(a) is book.get(b)
    assert len(book) == 1
    book.get(a).fail(server_error(), COOL, 0.0)
    assert book.get(b).view().failures == 1


def test_book_same_key_value_is_same_identity():
    book = LocalHealthStore()
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
    book = LocalHealthStore()
    a = make_deployment("a")
    b = make_deployment("a", **change)
    assert a.identity != b.identity
    assert book.get(a) is not book.get(b)
    assert len(book) == 2


def test_book_peek_does_not_create():
    book = LocalHealthStore()
    d = make_deployment()
    assert book.peek(d) is None
    assert len(book) == 0
    h = book.get(d)
    assert book.peek(d) is h


def test_book_retain_drops_the_rest():
    book = LocalHealthStore()
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
    assert kept_health.view().failures == 1
    assert book.peek(gone) is None
    assert book.peek(gone2) is None
    assert book.get(gone).view().failures == 0  # fresh state if it comes back


def test_book_retain_nothing_and_generator():
    book = LocalHealthStore()
    ds = [make_deployment(str(i), model=f"m{i}") for i in range(5)]
    for d in ds:
        book.get(d)
    book.retain(d.identity for d in ds[:2])
    assert len(book) == 2
    book.retain([])
    assert len(book) == 0


def test_book_passes_on_change():
    rec = Recorder()
    book = LocalHealthStore(on_change=rec)
    h = book.get(make_deployment())
    for _ in range(N):
        h.fail(server_error(), COOL, 0.0)
    assert rec.names == ["cooldown_start"]


def test_book_get_hands_out_the_deployments_health_by_identity():
    book = LocalHealthStore()
    d = make_deployment()
    h = book.get(d)
    assert h.view() == FRESH  # nothing happened to it yet
    assert FRESH == HealthView()


# ---------------------------------------------------------------- the interface: admit, in flight, views


def test_admit_without_claim_changes_nothing():
    # status and explain ask; only the router claims the half-open probe
    h = cooled(now=0.0)
    assert h.admit(1.0, claim=False) is COOLING
    for _ in range(3):
        assert h.admit(INITIAL, claim=False) is PROBE
    assert not h.view().probing
    assert h.admit(INITIAL) is PROBE  # still there for a request to take
    assert h.admit(INITIAL, claim=False) is PROBE_IN_FLIGHT
    assert h.view().probing


def test_started_and_finished_count_in_flight():
    h = Health()
    h.started()
    h.started()
    assert (h.inflight, h.view().inflight) == (2, 2)
    h.finished()
    assert (h.inflight, h.view().inflight) == (1, 1)
    h.finished()
    assert h.view().inflight == 0


def test_view_is_a_frozen_copy():
    h = Health()
    before = h.view()
    for _ in range(N):
        h.fail(server_error(), COOL, 100.0)
    assert before == FRESH  # taken before: unchanged
    after = h.view()
    assert (after.failures, after.cooldowns, after.cooldown_until) == (0, 1, pytest.approx(100.0 + INITIAL))
    assert after.last_failure is FailureClass.SERVER and "500" in after.last_error
    with pytest.raises(AttributeError):
        after.failures = 5  # type: ignore[misc]


def test_on_change_names_the_identity():
    events = []
    book = LocalHealthStore(on_change=lambda event, identity, view: events.append((event, identity, view)))
    d = make_deployment()
    h = book.get(d)
    for _ in range(N):
        h.fail(server_error(), COOL, 1000.0)
    h.admit(1000.0 + INITIAL)
    h.succeed(0.1)
    assert [(event, identity) for event, identity, _ in events] == [
        ("cooldown_start", d.identity), ("cooldown_end", d.identity)]
    assert events[0][2].cooldown_until == pytest.approx(1000.0 + INITIAL)
    assert events[1][2].state(2000.0) == "ok"


# ---------------------------------------------------------------- the outcome hook


def test_outcome_listeners_hear_every_settled_try():
    book = LocalHealthStore()
    heard: list[tuple] = []
    a, b = make_deployment("a"), make_deployment("b", model="other")
    early = book.get(a)  # created before anyone subscribed: hears all the same
    book.subscribe(lambda identity, failure, latency: heard.append((identity, failure, latency)))
    early.succeed(0.25)
    book.get(b).fail(rate_limited(3.0), COOL, 0.0)
    book.get(b).abandon_probe()  # no verdict: not an outcome
    book.get(a).succeed()  # a success without a latency sample
    assert heard == [(a.identity, None, 0.25), (b.identity, FailureClass.RATE_LIMIT, None),
                     (a.identity, None, None)]


def test_outcome_listeners_are_per_store():
    one, two = LocalHealthStore(), LocalHealthStore()
    heard = []
    one.subscribe(lambda *outcome: heard.append(outcome))
    two.get(make_deployment()).succeed(0.1)
    Health().succeed(0.1)  # a Health of no store has no listeners
    assert heard == []
