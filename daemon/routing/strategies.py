"""Ordering a tier's candidates for one request, by the tier's strategy.

    ordered         as written
    round-robin     rotate the start per request (a counter per tier)
    weighted        a random order drawn by weight (Efraimidis-Spirakis), so the
                    first choice follows the weights and the rest stay as fallbacks
    least-busy      fewest requests in flight first
    lowest-latency  lowest moving-average time to first byte first; unmeasured first
    ucb             highest UCB1 score first (routing/bandit), from the statistics the
                    bandit store learns from every outcome; untried first
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping

from gatewayd.daemon.core.graph import Candidate, Deployment, Tier
from gatewayd.daemon.routing.bandit import DEFAULT_UCB, ucb_order
from gatewayd.daemon.state.bandit import BanditStore, LocalBanditStore
from gatewayd.daemon.state.store import DeploymentHealth


class Strategies:
    """Holds the state strategies need: round-robin counters, keyed by tier content, and the
    store of what ucb learns (fed by the health store's outcome listeners, keyed by identity)."""

    def __init__(self, rng: random.Random | None = None, bandit: BanditStore | None = None) -> None:
        self._counters: dict[tuple, int] = {}
        self._rng = rng or random.Random()
        self.bandit = bandit if bandit is not None else LocalBanditStore()
        # the identities of a ucb tier's candidates, by id() of the tier, found once per graph
        self._identities: dict[int, tuple[Tier, Mapping[str, Deployment], tuple[tuple, ...]]] = {}

    def order(self, tier: Tier, health_of: Callable[[Candidate], DeploymentHealth],
              deployments: Mapping[str, Deployment] | None = None) -> tuple[Candidate, ...]:
        """`tier`'s candidates in the order to try them; `health_of` gives a candidate's live
        health, read only by least-busy and lowest-latency (its `inflight` and `latency`);
        `deployments` (the graph's) give ucb the identities its statistics are kept by."""
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
        if tier.strategy == "ucb":
            known = self._identities.get(id(tier))
            if known is None or known[0] is not tier or known[1] is not deployments:
                known = self.identify(tier, deployments)
            return ucb_order(candidates, self.bandit.arms(known[2]), tier.ucb or DEFAULT_UCB)
        raise ValueError(f"unknown strategy {tier.strategy!r}")

    def identify(self, tier: Tier, deployments: Mapping[str, Deployment] | None) -> tuple:
        """(tier, deployments, the identities of its candidates), remembered for the tier."""
        if deployments is None:
            raise ValueError("ucb orders by deployment identity: pass the graph's deployments")
        known = (tier, deployments, tuple(deployments[c.deployment].identity for c in tier.candidates))
        self._identities[id(tier)] = known
        return known

    def retain(self, tiers: Iterable[Tier]) -> None:
        """Keep the round-robin counters of these tiers only (a reload's), so tiers that left
        the config do not pile up; a tier that stays keeps its place in the rotation. The
        identities of ucb tiers are found again for the new graph's tiers."""
        keep = {(tier.origin, tier.candidates) for tier in tiers}
        self._counters = {key: count for key, count in self._counters.items() if key in keep}
        self._identities = {}
