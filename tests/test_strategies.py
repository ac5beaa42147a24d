"""Ordering a tier's candidates by its strategy (daemon/routing/strategies.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gatewayd.daemon.core.graph import Candidate, Tier
from gatewayd.daemon.routing.strategies import Strategies
from gatewayd.daemon.state.health import Health

STRATEGIES = ["ordered", "round-robin", "weighted", "least-busy", "lowest-latency"]


def cands(*names: str, weights: dict[str, float] | None = None) -> tuple[Candidate, ...]:
    weights = weights or {}
    return tuple(Candidate(n, weights.get(n, 1.0)) for n in names)


def tier(strategy: str, *names: str, origin: str = "chat", weights=None) -> Tier:
    return Tier(strategy=strategy, candidates=cands(*names, weights=weights), origin=origin)


def healths(**spec: dict) -> dict[str, Health]:
    """Local health records with the given in-flight counts and latencies (as a store's `get` gives)."""
    return {name: Health(**fields) for name, fields in spec.items()}


def lookup(book: dict[str, Health]):
    def health_of(candidate: Candidate) -> Health:
        return book.setdefault(candidate.deployment, Health())
    return health_of


def names(order) -> list[str]:
    return [c.deployment for c in order]


def no_health(candidate: Candidate) -> Health:
    raise AssertionError(f"health of {candidate.deployment} was not needed")


# ---------------------------------------------------------------- ordered


def test_ordered_keeps_order():
    s = Strategies(random.Random(0))
    t = tier("ordered", "c", "a", "b")
    for _ in range(5):
        assert s.order(t, no_health) == t.candidates
        assert names(s.order(t, no_health)) == ["c", "a", "b"]


# ---------------------------------------------------------------- round-robin


def test_round_robin_rotates_start():
    s = Strategies(random.Random(0))
    t = tier("round-robin", "a", "b", "c")
    got = [names(s.order(t, no_health)) for _ in range(7)]
    assert got == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],
    ]


def test_retain_keeps_the_rotation_of_tiers_that_stay_and_forgets_the_rest():
    s = Strategies(random.Random(0))
    stays, leaves = tier("round-robin", "a", "b", "c"), tier("round-robin", "x", "y", origin="old")
    s.order(stays, no_health)
    s.order(leaves, no_health)
    s.retain([stays])  # a reload whose graph has only `stays`
    assert names(s.order(stays, no_health))[0] == "b"  # its rotation went on
    assert names(s.order(leaves, no_health))[0] == "x"  # the one that left starts afresh if it returns


def test_round_robin_spreads_first_choice_evenly():
    s = Strategies(random.Random(0))
    t = tier("round-robin", "a", "b", "c", "d")
    firsts = Counter(names(s.order(t, no_health))[0] for _ in range(400))
    assert firsts == {"a": 100, "b": 100, "c": 100, "d": 100}


def test_round_robin_counter_per_tier():
    s = Strategies(random.Random(0))
    chat = tier("round-robin", "a", "b", "c", origin="chat")
    code = tier("round-robin", "x", "y", origin="code")
    assert names(s.order(chat, no_health))[0] == "a"
    assert names(s.order(chat, no_health))[0] == "b"
    assert names(s.order(code, no_health))[0] == "x"  # its own counter, from the start
    assert names(s.order(chat, no_health))[0] == "c"
    assert names(s.order(code, no_health))[0] == "y"
    assert names(s.order(code, no_health))[0] == "x"
    assert names(s.order(chat, no_health))[0] == "a"


def test_round_robin_same_candidates_different_origin_are_different_tiers():
    s = Strategies(random.Random(0))
    one = tier("round-robin", "a", "b", origin="one")
    two = tier("round-robin", "a", "b", origin="two")
    assert names(s.order(one, no_health))[0] == "a"
    assert names(s.order(two, no_health))[0] == "a"
    assert names(s.order(one, no_health))[0] == "b"


def test_round_robin_counter_is_per_strategies_instance():
    t = tier("round-robin", "a", "b")
    s1, s2 = Strategies(), Strategies()
    s1.order(t, no_health)
    assert names(s2.order(t, no_health))[0] == "a"


def test_round_robin_is_a_rotation():
    s = Strategies(random.Random(0))
    t = tier("round-robin", "a", "b", "c", "d", "e")
    for _ in range(12):
        got = names(s.order(t, no_health))
        i = got.index("a")
        assert got[i:] + got[:i] == ["a", "b", "c", "d", "e"]


# ---------------------------------------------------------------- weighted


def first_frequencies(t: Tier, draws: int, seed: int) -> dict[str, float]:
    s = Strategies(random.Random(seed))
    everyone = sorted(names(t.candidates))
    counts: Counter[str] = Counter()
    for _ in range(draws):
        order = names(s.order(t, no_health))
        assert sorted(order) == everyone  # each candidate exactly once: the rest are fallbacks
        counts[order[0]] += 1
    return {name: counts[name] / draws for name in everyone}


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_weighted_three_to_one(seed):
    t = tier("weighted", "big", "small", weights={"big": 3.0, "small": 1.0})
    freq = first_frequencies(t, 10_000, seed)
    assert freq["big"] == pytest.approx(0.75, abs=0.03)
    assert freq["small"] == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("seed", [2, 99])
def test_weighted_several(seed):
    weights = {"a": 1.0, "b": 2.0, "c": 7.0}
    t = tier("weighted", "a", "b", "c", weights=weights)
    freq = first_frequencies(t, 10_000, seed)
    for name, w in weights.items():
        assert freq[name] == pytest.approx(w / 10.0, abs=0.03), name


def test_weighted_fractional_weights():
    weights = {"a": 0.1, "b": 0.3}
    t = tier("weighted", "a", "b", weights=weights)
    freq = first_frequencies(t, 10_000, 5)
    assert freq["b"] == pytest.approx(0.75, abs=0.03)


def test_weighted_equal_weights_are_uniform():
    t = tier("weighted", "a", "b", "c", "d")
    freq = first_frequencies(t, 10_000, 7)
    for name in "abcd":
        assert freq[name] == pytest.approx(0.25, abs=0.03)


def test_weighted_second_choice_follows_remaining_weights():
    # Efraimidis-Spirakis: given the first, the second follows the remaining weights.
    weights = {"a": 1.0, "b": 2.0, "c": 7.0}
    t = tier("weighted", "a", "b", "c", weights=weights)
    s = Strategies(random.Random(11))
    seconds: Counter[str] = Counter()
    n = 0
    for _ in range(20_000):
        order = names(s.order(t, no_health))
        if order[0] == "c":
            n += 1
            seconds[order[1]] += 1
    assert seconds["b"] / n == pytest.approx(2 / 3, abs=0.03)


def test_weighted_seeded_is_reproducible():
    t = tier("weighted", "a", "b", "c", weights={"a": 1.0, "b": 2.0, "c": 3.0})
    s1, s2 = Strategies(random.Random(42)), Strategies(random.Random(42))
    assert [s1.order(t, no_health) for _ in range(50)] == [s2.order(t, no_health) for _ in range(50)]


# ---------------------------------------------------------------- least-busy


def test_least_busy_orders_by_inflight():
    s = Strategies(random.Random(0))
    book = healths(a={"inflight": 5}, b={"inflight": 0}, c={"inflight": 2}, d={"inflight": 9})
    t = tier("least-busy", "a", "b", "c", "d")
    assert names(s.order(t, lookup(book))) == ["b", "c", "a", "d"]
    book["b"] = Health(inflight=3)  # the counts of the next request's moment
    book["d"] = Health(inflight=1)
    assert names(s.order(t, lookup(book))) == ["d", "c", "b", "a"]


def test_least_busy_keeps_every_candidate():
    s = Strategies(random.Random(0))
    book = healths(a={"inflight": 1}, b={"inflight": 1}, c={"inflight": 0})
    t = tier("least-busy", "a", "b", "c")
    got = names(s.order(t, lookup(book)))
    assert got[0] == "c"
    assert sorted(got) == ["a", "b", "c"]


# ---------------------------------------------------------------- lowest-latency


def test_lowest_latency_orders_by_latency_unmeasured_first():
    s = Strategies(random.Random(0))
    book = healths(slow={"latency": 2.5}, fresh={"latency": 0.0}, fast={"latency": 0.2},
                   mid={"latency": 0.9})
    t = tier("lowest-latency", "slow", "fresh", "fast", "mid")
    assert names(s.order(t, lookup(book))) == ["fresh", "fast", "mid", "slow"]


def test_lowest_latency_follows_the_moving_average():
    s = Strategies(random.Random(0))
    book = healths(a={}, b={})
    t = tier("lowest-latency", "a", "b")
    book["a"].succeed(latency=1.0)
    book["b"].succeed(latency=0.5)
    assert names(s.order(t, lookup(book))) == ["b", "a"]
    for _ in range(10):
        book["b"].succeed(latency=3.0)
    assert names(s.order(t, lookup(book))) == ["a", "b"]


# ---------------------------------------------------------------- single candidates


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_candidate_returned_as_is(strategy):
    s = Strategies(random.Random(0))
    t = tier(strategy, "only", weights={"only": 0.5})
    for _ in range(3):
        assert s.order(t, no_health) == t.candidates


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_a_permutation(strategy):
    s = Strategies(random.Random(0))
    book = healths(a={"inflight": 2, "latency": 0.3}, b={"inflight": 0, "latency": 0.0},
                   c={"inflight": 1, "latency": 0.1})
    t = tier(strategy, "a", "b", "c", weights={"a": 1.0, "b": 2.0, "c": 3.0})
    for _ in range(10):
        got = s.order(t, lookup(book))
        assert isinstance(got, tuple)
        assert sorted(names(got)) == ["a", "b", "c"]


def test_unknown_strategy_is_an_error():
    s = Strategies(random.Random(0))
    with pytest.raises(ValueError, match="fastest"):
        s.order(tier("fastest", "a", "b"), no_health)


def test_least_busy_follows_started_and_finished():
    s = Strategies(random.Random(0))
    book = healths(a={}, b={}, c={})
    t = tier("least-busy", "a", "b", "c")
    book["a"].started()
    book["a"].started()
    book["b"].started()
    assert names(s.order(t, lookup(book))) == ["c", "b", "a"]
    book["a"].finished()
    book["a"].finished()
    book["c"].started()
    assert names(s.order(t, lookup(book))) == ["a", "b", "c"]
