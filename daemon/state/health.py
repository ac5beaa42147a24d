"""Health kept in this process: `LocalHealthStore` and its `Health` per deployment
identity, the local implementation of `state.store`'s interface.

Consecutive failures put a deployment in cooldown for `initial`, growing by
`multiplier` each further time up to `max`; a 429 whose Retry-After is longer
extends it; a deadline only ever moves later. After the cooldown exactly one
request probes it (half-open); its success closes it, its failure starts the
next cooldown. Times are wall-clock seconds (`time.time()`), passed in as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import CooldownPolicy, Deployment
from gatewayd.daemon.state.store import (
    ADMITTED,
    PROBE,
    Admission,
    ChangeListener,
    HealthView,
    OutcomeListener,
    admission,
)

LATENCY_SMOOTHING = 0.3  # weight of the newest sample in the moving average


def capped_growth(initial: float, multiplier: float, steps: int, cap: float) -> float:
    """min(cap, initial * multiplier**steps) without overflowing in a long outage."""
    try:
        return min(cap, initial * multiplier**steps)
    except OverflowError:
        return cap


@dataclass(slots=True, eq=False)
class Health:
    """One deployment's health in this process (a `DeploymentHealth`). Only its methods
    change its fields; others read them through `view()`, the strategies `inflight` and
    `latency` directly. The fields mean what `HealthView`'s do."""

    identity: tuple = ()
    failures: int = 0
    cooldown_until: float = 0.0
    cooldowns: int = 0
    probing: bool = False
    last_error: str | None = None
    last_failure: FailureClass | None = None
    inflight: int = 0
    latency: float = 0.0
    # the store's listeners, shared by every Health of one store
    on_change: ChangeListener | None = field(default=None, repr=False)
    outcome_listeners: list[OutcomeListener] | tuple = field(default=(), repr=False)

    def admit(self, now: float, claim: bool = True) -> Admission:
        if self.cooldown_until == 0.0:  # the common case, answered without a call
            return ADMITTED
        answer = admission(self.cooldown_until, self.probing, now)
        if answer is PROBE and claim:
            self.probing = True  # half-open: exactly one request probes
        return answer

    def started(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        self.inflight -= 1

    def abandon_probe(self) -> None:
        self.probing = False

    def succeed(self, latency: float | None = None) -> None:
        recovered = self.cooldown_until != 0.0
        self.failures = 0
        self.cooldown_until = 0.0
        self.cooldowns = 0
        self.probing = False
        if latency is not None:
            self.latency = latency if self.latency == 0.0 else (
                LATENCY_SMOOTHING * latency + (1 - LATENCY_SMOOTHING) * self.latency)
        if self.outcome_listeners:  # tested first: no iterator on every request while nothing listens
            self.settled(None, latency)
        if recovered and self.on_change:
            self.on_change("cooldown_end", self.identity, self.view())

    def fail(self, error: UpstreamError, policy: CooldownPolicy, now: float) -> None:
        self.failures += 1
        self.last_error = error.describe()
        self.last_failure = error.failure
        probe_failed = self.probing
        self.probing = False
        if self.outcome_listeners:
            self.settled(error.failure, None)
        if probe_failed or self.failures >= policy.failures:
            self.enter_cooldown(policy, now, error.retry_after if error.failure is FailureClass.RATE_LIMIT else None)

    def enter_cooldown(self, policy: CooldownPolicy, now: float, retry_after: float | None) -> None:
        length = capped_growth(policy.initial, policy.multiplier, self.cooldowns, policy.max)
        until = now + max(length, retry_after or 0.0)
        self.cooldowns += 1
        self.failures = 0
        self.cooldown_until = max(self.cooldown_until, until)  # a deadline only moves later
        if self.on_change:
            self.on_change("cooldown_start", self.identity, self.view())

    def settled(self, failure: FailureClass | None, latency: float | None) -> None:
        for listener in self.outcome_listeners:
            listener(self.identity, failure, latency)

    def view(self) -> HealthView:
        return HealthView(self.failures, self.cooldown_until, self.cooldowns, self.probing,
                          self.last_error, self.last_failure, self.inflight, self.latency)


class LocalHealthStore:
    """Health per deployment identity, in this process (a `HealthStore`)."""

    def __init__(self, on_change: ChangeListener | None = None) -> None:
        self._by_identity: dict[tuple, Health] = {}
        self._on_change = on_change
        self._outcome_listeners: list[OutcomeListener] = []

    def get(self, deployment: Deployment) -> Health:
        health = self._by_identity.get(deployment.identity)
        if health is None:
            health = self._by_identity[deployment.identity] = Health(
                deployment.identity, on_change=self._on_change, outcome_listeners=self._outcome_listeners)
        return health

    def peek(self, deployment: Deployment) -> Health | None:
        return self._by_identity.get(deployment.identity)

    def retain(self, identities: Iterable[tuple]) -> None:
        keep = set(identities)
        for identity in list(self._by_identity):
            if identity not in keep:
                del self._by_identity[identity]

    def subscribe(self, listener: OutcomeListener) -> None:
        self._outcome_listeners.append(listener)  # every Health of this store shares the list

    def __len__(self) -> int:
        return len(self._by_identity)
