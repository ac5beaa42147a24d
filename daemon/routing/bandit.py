"""UCB1 over one tier: pure arithmetic on the statistics of `state.bandit`.

A deployment's score is its mean reward plus an exploration bonus:

    score = mean + sqrt(exploration * ln(pulls of the tier) / weight)

where `pulls of the tier` is the sum of its deployments' pulls and `weight` the
deployment's discounted count of pulls (`state.bandit` says what a pull is and
how old ones fade). A deployment never pulled scores infinity: untried ones go
first, in the order written. Scores that tie keep the order written too.

The mean reward is in [0, 1]:
    success   the recent success rate: wins / weight
    latency   the success rate times the tier's fastest mean time to the answer
              divided by the deployment's own (the fastest keeps its success rate;
              one twice as slow, half of it), so no scale of seconds is assumed
"""

from __future__ import annotations

import math
from typing import Sequence

from gatewayd.daemon.core.graph import Candidate, Graph, Ucb
from gatewayd.daemon.state.bandit import Arm

UNTRIED = math.inf
DEFAULT_UCB = Ucb()  # a tier built without settings (the compiler always gives them)


def tried(arm: Arm | None) -> bool:
    return arm is not None and arm.pulls > 0


def fastest_latency(arms: Sequence[Arm | None]) -> float:
    """The least mean time to the answer among deployments that answered recently; 0.0 if none.
    (A mean of zero, which no clock gives, is left out rather than zeroing every other reward.)"""
    return min((arm.latency for arm in arms if arm is not None and arm.latency > 0.0), default=0.0)


def mean_reward(arm: Arm, reward: str, fastest: float = 0.0) -> float:
    """The deployment's mean reward in [0, 1]; `fastest` is the tier's `fastest_latency`."""
    if arm.weight <= 0.0:
        return 0.0
    rate = min(1.0, arm.wins / arm.weight)
    if reward == "latency":
        latency = arm.latency
        if latency > 0.0:
            rate *= min(1.0, fastest / latency)
    return rate


def scores(arms: Sequence[Arm | None], settings: Ucb) -> list[float]:
    """The UCB1 score of each deployment of a tier (UNTRIED for one never pulled).

    Runs for every request to a ucb tier, so it is written out plainly: loops, no helpers
    called on the success reward's path."""
    total = 0
    for arm in arms:
        if arm is not None:
            total += arm.pulls
    spread = settings.exploration * math.log(total) if total > 1 else 0.0
    by_latency = settings.reward == "latency"
    fastest = fastest_latency(arms) if by_latency else 0.0
    sqrt = math.sqrt
    result = []
    for arm in arms:
        if arm is None or arm.pulls == 0:
            result.append(UNTRIED)
        else:
            # wins <= weight: both are discounted alike, and wins grows by less
            mean = mean_reward(arm, "latency", fastest) if by_latency else arm.wins / arm.weight
            result.append(mean + sqrt(spread / arm.weight))
    return result


def ranked(values: Sequence[float]) -> list[int]:
    """Positions from the highest score down; equal scores keep their order (a reversed sort
    is still stable)."""
    return sorted(range(len(values)), key=values.__getitem__, reverse=True)


def ucb_order(candidates: tuple[Candidate, ...], arms: Sequence[Arm | None], settings: Ucb) -> tuple[Candidate, ...]:
    """`candidates` (with their statistics, in the same order) from the highest score down."""
    if len(arms) == 2 and settings.reward == "success":
        first, second = arms
        if first is not None and second is not None and first.pulls and second.pulls:
            # the usual tier, on every request to it: `scores` for two, written out
            spread = settings.exploration * math.log(first.pulls + second.pulls)
            if (first.wins / first.weight + math.sqrt(spread / first.weight)
                    >= second.wins / second.weight + math.sqrt(spread / second.weight)):
                return candidates
            return (candidates[1], candidates[0])
    return tuple([candidates[index] for index in ranked(scores(arms, settings))])


def learning_identities(graph: Graph) -> set[tuple]:
    """The identities of the deployments some ucb tier orders: whose statistics are kept."""
    deployments = graph.deployments
    return {deployments[candidate.deployment].identity
            for route in graph.routes.values() for tier in route.tiers if tier.strategy == "ucb"
            for candidate in tier.candidates}


def describe_arms(arms: Sequence[Arm | None], settings: Ucb) -> list[dict]:
    """For status and explain, per deployment of a tier: its place in the order now (1 first), score
    (None while untried), mean reward (None while untried) and pulls."""
    values = scores(arms, settings)
    fastest = fastest_latency(arms) if settings.reward == "latency" else 0.0
    places = {index: place for place, index in enumerate(ranked(values), 1)}
    result = []
    for index, (arm, value) in enumerate(zip(arms, values, strict=True)):
        untried = not tried(arm)
        result.append({
            "rank": places[index],
            "score": None if untried else round(value, 4),
            "mean_reward": None if untried else round(mean_reward(arm, settings.reward, fastest), 4),
            "pulls": arm.pulls if arm is not None else 0,
        })
    return result
