"""Ordering a tier's candidates for one request, by the tier's strategy.

    ordered         as written
    round-robin     rotate the start per request (a counter per tier)
    weighted        a random order drawn by weight (Efraimidis-Spirakis), so the
                    first choice follows the weights and the rest stay as fallbacks
    least-busy      fewest requests in flight first
    lowest-latency  lowest moving-average time to first byte first; unmeasured first
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

from gatewayd.daemon.core.graph import Candidate, Tier
from gatewayd.daemon.state.store import DeploymentHealth


class Strategies:
    """Holds the only state strategies need: round-robin counters, keyed by tier content."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._counters: dict[tuple, int] = {}
        self._rng = rng or random.Random()

    def order(self, tier: Tier, health_of: Callable[[Candidate], DeploymentHealth]) -> tuple[Candidate, ...]:
        """`tier`'s candidates in the order to try them; `health_of` gives a candidate's live
        health, read only by least-busy and lowest-latency (its `inflight` and `latency`)."""
        candidates = tier.candidates
        if len(candidates) < 2 or tier.strategy == "ordered":
            return candidates
        if tier.strategy == "round-robin":
            key = (tier.origin, candidates)
            start = self._counters.get(key, 0)
            self._counters[key] = (start + 1) % len(candidates)
            return candidates[start:] + candidates[:start]
        if tier.strategy == "weighted":
            draw = self._rng.random
            return tuple(sorted(candidates, key=lambda c: draw() ** (1.0 / c.weight), reverse=True))
        if tier.strategy == "least-busy":
            return tuple(sorted(candidates, key=lambda c: health_of(c).inflight))
        if tier.strategy == "lowest-latency":
            return tuple(sorted(candidates, key=lambda c: health_of(c).latency))
        raise ValueError(f"unknown strategy {tier.strategy!r}")

    def retain(self, tiers: Iterable[Tier]) -> None:
        """Keep the round-robin counters of these tiers only (a reload's), so tiers that left
        the config do not pile up; a tier that stays keeps its place in the rotation."""
        keep = {(tier.origin, tier.candidates) for tier in tiers}
        self._counters = {key: count for key, count in self._counters.items() if key in keep}
