"""Runtime health of deployments: failure counts, cooldowns, half-open probes,
in-flight counts and latency averages (SPEC §3, step 9).

This is mutable state, kept apart from the immutable graph and keyed by
`Deployment.identity`, so it survives reloads for deployments whose identity
did not change (a rename keeps it) and is dropped for those that left.
Times are `time.monotonic()` seconds; `wall()` converts for display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import CooldownPolicy, Deployment

LATENCY_SMOOTHING = 0.3  # weight of the newest sample in the moving average


def capped_growth(initial: float, multiplier: float, steps: int, cap: float) -> float:
    """min(cap, initial * multiplier**steps) without overflowing in a long outage."""
    try:
        return min(cap, initial * multiplier**steps)
    except OverflowError:
        return cap


def wall(monotonic_deadline: float) -> float:
    return time.time() + (monotonic_deadline - time.monotonic())


@dataclass(slots=True)
class Health:
    failures: int = 0  # consecutive failed requests
    cooldown_until: float = 0.0  # monotonic; 0 = never cooled
    cooldowns: int = 0  # consecutive cooldowns, for the multiplier
    probing: bool = False  # a half-open probe is in flight
    last_error: str | None = None
    last_failure: FailureClass | None = None
    inflight: int = 0
    latency: float = 0.0  # moving average of seconds to first byte; 0 = no sample yet
    on_change: Callable[[str, "Health"], None] | None = field(default=None, repr=False)

    def state(self, now: float) -> str:
        if self.cooldown_until == 0.0:
            return "ok"
        return "cooldown" if now < self.cooldown_until else "half_open"

    def admit(self, now: float) -> tuple[bool, bool]:
        """May a request use this deployment now? Returns (admitted, is_probe)."""
        if self.cooldown_until == 0.0:
            return True, False
        if now < self.cooldown_until or self.probing:
            return False, False
        self.probing = True  # half-open: exactly one request probes
        return True, True

    def abandon_probe(self) -> None:
        """The probe ended without a verdict (client error, client gone)."""
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
        if recovered and self.on_change:
            self.on_change("cooldown_end", self)

    def fail(self, error: UpstreamError, policy: CooldownPolicy, now: float) -> None:
        self.failures += 1
        self.last_error = error.describe()
        self.last_failure = error.failure
        probe_failed = self.probing
        self.probing = False
        if probe_failed or self.failures >= policy.failures:
            self.enter_cooldown(policy, now, error.retry_after if error.failure is FailureClass.RATE_LIMIT else None)

    def enter_cooldown(self, policy: CooldownPolicy, now: float, retry_after: float | None) -> None:
        length = capped_growth(policy.initial, policy.multiplier, self.cooldowns, policy.max)
        until = now + max(length, retry_after or 0.0)
        self.cooldowns += 1
        self.failures = 0
        self.cooldown_until = max(self.cooldown_until, until)  # a deadline only moves later
        if self.on_change:
            self.on_change("cooldown_start", self)


class HealthBook:
    """Health per deployment identity."""

    def __init__(self, on_change: Callable[[str, Health], None] | None = None) -> None:
        self._by_identity: dict[tuple, Health] = {}
        self._on_change = on_change

    def get(self, deployment: Deployment) -> Health:
        health = self._by_identity.get(deployment.identity)
        if health is None:
            health = self._by_identity[deployment.identity] = Health(on_change=self._on_change)
        return health

    def peek(self, deployment: Deployment) -> Health | None:
        return self._by_identity.get(deployment.identity)

    def retain(self, identities: Iterable[tuple]) -> None:
        """Drop the state of deployments that left the config."""
        keep = set(identities)
        for identity in list(self._by_identity):
            if identity not in keep:
                del self._by_identity[identity]

    def __len__(self) -> int:
        return len(self._by_identity)
