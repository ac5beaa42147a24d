"""The statistics `strategy: ucb` learns from, per deployment identity, behind one interface.

    BanditStore       the interface: `arms` (the statistics of several deployments at once),
                      `record` (one outcome; an `OutcomeListener` of the health store),
                      `track` (which identities to keep statistics for)
    Arm               one deployment's statistics: pulls, and discounted sums of outcomes
    LocalBanditStore  the statistics kept in this process

A pull is a deployment's verdict on one request: the outcome the health store
settles once the request leaves it (its retries there are one pull), whether it
was the tier's first choice or a fallback. A success is worth 1 and its seconds
to the answer (a stream's first event) are kept; a failure that counts against
the deployment is worth 0. What is no verdict on the deployment is no pull: a
client error passed back as it came, a client gone, the gateway's own fault.

Old outcomes fade: each new outcome of a deployment multiplies the weight of its
earlier ones by `DISCOUNT`, so its mean follows about its last 1 / (1 - DISCOUNT)
outcomes (50) and a provider that degrades loses its good name within tens of
requests, however long it served well. `pulls` itself is a plain count: the
exploration bonus grows with the log of a tier's pulls, so a deployment left
alone is tried again now and then (UCB1's guarantee).

Statistics are kept by `Deployment.identity`, so a reload keeps them for every
deployment whose identity did not change, renamed or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from gatewayd.daemon.core.failures import FailureClass

DISCOUNT = 0.98  # the weight each new outcome leaves to a deployment's earlier ones


@dataclass(slots=True)
class Arm:
    """One deployment's statistics. Readers treat it as read-only; `record` alone changes it."""

    pulls: int = 0  # verdicts recorded, undiscounted
    weight: float = 0.0  # verdicts recorded, discounted: sum of DISCOUNT**age
    wins: float = 0.0  # successes, discounted alike
    seconds: float = 0.0  # seconds to the answer of those successes, discounted alike

    @property
    def latency(self) -> float:
        """Mean seconds to the answer over the recent successes; 0.0 when none."""
        return self.seconds / self.wins if self.wins > 0.0 else 0.0


class BanditStore(Protocol):
    """Statistics keyed by `Deployment.identity`; a shared backend (Redis) may implement it."""

    def arms(self, identities: Sequence[tuple]) -> list[Arm | None]:
        """Each identity's statistics, in order; None for one nothing is kept for."""
        ...

    def record(self, identity: tuple, failure: FailureClass | None, latency: float | None) -> None:
        """One verdict: `failure` None and the seconds to the answer on success, else the
        failure class that counted against the deployment."""
        ...

    def track(self, identities: Iterable[tuple]) -> None:
        """Keep statistics for these identities only (a reload's, in tiers that learn): those
        already kept stay, new ones start untried, the rest are dropped; outcomes of others
        are ignored."""
        ...


class LocalBanditStore:
    """Statistics kept in this process (a `BanditStore`)."""

    def __init__(self, discount: float = DISCOUNT) -> None:
        self.discount = discount
        self._by_identity: dict[tuple, Arm] = {}

    def arms(self, identities: Sequence[tuple]) -> list[Arm | None]:
        return list(map(self._by_identity.get, identities))

    def record(self, identity: tuple, failure: FailureClass | None, latency: float | None) -> None:
        arm = self._by_identity.get(identity)
        if arm is None:  # no tier learns from this deployment
            return
        keep = self.discount
        arm.pulls += 1
        arm.weight = arm.weight * keep + 1.0
        if failure is None:
            # a success without a time (none is booked so today) keeps the mean time as it was
            seconds = latency if latency is not None else arm.latency
            arm.wins = arm.wins * keep + 1.0
            arm.seconds = arm.seconds * keep + seconds
        else:
            arm.wins *= keep
            arm.seconds *= keep

    def track(self, identities: Iterable[tuple]) -> None:
        old = self._by_identity
        self._by_identity = {identity: old.get(identity) or Arm() for identity in identities}

    def __len__(self) -> int:
        return len(self._by_identity)
