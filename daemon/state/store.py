"""The health interface the router books against, whatever keeps the state.

    HealthStore        health per deployment identity: `get` (created on first use),
                       `peek` (never creates), `retain`, `subscribe`
    DeploymentHealth   one deployment's health: every change goes through its methods
                       (`admit`, `started`/`finished`, `succeed`, `fail`, `abandon_probe`)
    HealthView         a frozen copy of one deployment's health, for status, explain and events
    Admission          what `admit` answers: admitted, the half-open probe, or refused and why

A request looks its deployment's health up once (`get`) and books through that
handle, so a store shared between processes (Redis) can keep its key with it.
Times are wall-clock seconds (`time.time()`), meaningful to another process;
every method that depends on the time takes it as `now`, so tests pass their own.

Two kinds of listener hear what happens:
- on_change (given to the store when it is built): `(event, identity, view)` with event
  `cooldown_start` or `cooldown_end`, for logs and the event stream;
- outcome listeners (`HealthStore.subscribe`): `(identity, failure, latency)` for each
  settled try at a deployment: `failure` None and the seconds to the answer (a stream's
  first event) on success, or the failure class that counted against it (latency None).
  A try that ends without a verdict (a client error passed through, a client gone, the
  gateway's own fault) is not an outcome. This is where a learning strategy (`ucb`) will
  take its samples (daemon/state/bandit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Protocol

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import CooldownPolicy, Deployment


class Admission(Enum):
    ADMITTED = "admitted"  # usable, not in cooldown
    PROBE = "probe"  # usable as the single half-open probe
    COOLING = "cooling"  # refused: the cooldown has not ended
    PROBE_IN_FLIGHT = "probe_in_flight"  # refused: half-open, and another request is the probe


# As module names: reading an Enum member through its class costs more than the rest of
# an admission together (Python 3.11), and admission runs for every candidate of every request.
ADMITTED, PROBE = Admission.ADMITTED, Admission.PROBE
COOLING, PROBE_IN_FLIGHT = Admission.COOLING, Admission.PROBE_IN_FLIGHT


def admission(cooldown_until: float, probing: bool, now: float) -> Admission:
    """The half-open state machine's answer, claiming nothing."""
    if cooldown_until == 0.0:
        return ADMITTED
    if now < cooldown_until:
        return COOLING
    return PROBE_IN_FLIGHT if probing else PROBE


@dataclass(frozen=True, slots=True)
class HealthView:
    failures: int = 0  # consecutive failed requests
    cooldown_until: float = 0.0  # wall clock; 0 = not cooling since the last success
    cooldowns: int = 0  # consecutive cooldowns, for the multiplier
    probing: bool = False  # a half-open probe is in flight
    last_error: str | None = None
    last_failure: FailureClass | None = None
    inflight: int = 0  # requests at the deployment now, streams until their relay ends
    latency: float = 0.0  # moving average of seconds to first byte; 0 = no sample yet

    def state(self, now: float) -> str:
        """ok, cooldown or half_open."""
        if self.cooldown_until == 0.0:
            return "ok"
        return "cooldown" if now < self.cooldown_until else "half_open"


FRESH = HealthView()  # a deployment that nothing has happened to yet

ChangeListener = Callable[[str, tuple, HealthView], None]  # event, identity, the view after it
OutcomeListener = Callable[[tuple, FailureClass | None, float | None], None]  # identity, failure, latency


class DeploymentHealth(Protocol):
    """One deployment's health. `inflight` and `latency` are read live by the strategies
    (least-busy, lowest-latency) on every request, so they are attributes, not a view."""

    @property
    def inflight(self) -> int: ...

    @property
    def latency(self) -> float: ...

    def admit(self, now: float, claim: bool = True) -> Admission:
        """May a request use the deployment now? With `claim`, a PROBE answer makes the caller
        the half-open probe (until `succeed`, `fail` or `abandon_probe`); without, nothing
        changes (status and explain ask this way)."""
        ...

    def started(self) -> None:
        """A request (or a relayed stream) is now in flight at the deployment."""
        ...

    def finished(self) -> None:
        """One that `started` is not in flight any more."""
        ...

    def succeed(self, latency: float | None = None) -> None:
        """It answered: failures reset, a cooldown ends, `latency` joins the average."""
        ...

    def fail(self, error: UpstreamError, policy: CooldownPolicy, now: float) -> None:
        """A failure that counts against it: `policy` decides when it cools down and for how long."""
        ...

    def abandon_probe(self) -> None:
        """The probe ended without a verdict (a client error, the client gone)."""
        ...

    def view(self) -> HealthView: ...


class HealthStore(Protocol):
    """Health keyed by `Deployment.identity`: it survives reloads for deployments whose
    identity did not change (a rename keeps it)."""

    def get(self, deployment: Deployment) -> DeploymentHealth:
        """The deployment's health, created on first use."""
        ...

    def peek(self, deployment: Deployment) -> DeploymentHealth | None:
        """The deployment's health if anything happened to it yet; never creates."""
        ...

    def retain(self, identities: Iterable[tuple]) -> None:
        """Drop the state of deployments that left the config."""
        ...

    def subscribe(self, listener: OutcomeListener) -> None:
        """Call `listener` with every settled try from now on."""
        ...
