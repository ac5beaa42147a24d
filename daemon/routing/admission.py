"""Is this deployment usable now, and why not: the one check behind the router,
`explain`, `/admin/status`, `/readyz` and the deployment-state gauge.

`judge` looks, in this order, at:

    capability      its provider type cannot serve the operation (only when one is given)
    disabled        its provider is disabled (an empty key, `disabled: true`)
    outside_window  outside its time windows at the instant
    limited         at its `rpm` or `tpm` (the upstream's quota) for a request of that size
    cooldown        cooling down after failures
    half_open       its cooldown ended and another request is the half-open probe

and answers a `Verdict`: usable, usable as the half-open probe, or out with one of
those kinds (which are also /admin/status's states) and a reason in words. Only the
router claims the probe (`claim=True`); everyone else only asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.core.graph import Deployment
from gatewayd.daemon.routing.quota import quota_wait
from gatewayd.daemon.state.counters import DeploymentUsage
from gatewayd.daemon.state.store import ADMITTED, PROBE_IN_FLIGHT, DeploymentHealth
from gatewayd.daemon.state.store import PROBE as CLAIMABLE  # the half-open probe is there to take

CAPABILITY = "capability"
DISABLED = "disabled"
OUTSIDE_WINDOW = "outside_window"
LIMITED = "limited"
COOLDOWN = "cooldown"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Verdict:
    usable: bool
    probe: bool = False  # usable as the half-open probe (claimed when judged with claim=True)
    out: str | None = None  # why not usable: one of the kinds above
    reason: str = ""  # the same in words, as the 503 message names it
    cooldown_until: float = 0.0  # wall clock, when `out` is cooldown (or limited: when it has room)
    rate_limited: bool = False  # out at its quota, or on health after a 429

    @property
    def state(self) -> str:
        """What /admin/status calls it: ok | cooldown | half_open | limited | disabled | outside_window."""
        return self.out or (HALF_OPEN if self.probe else "ok")


# The common answers, shared: admitting a request allocates nothing.
USABLE = Verdict(True)
PROBE = Verdict(True, probe=True)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def judge(deployment: Deployment, health: DeploymentHealth | None, now: float, operation: str | None = None,
          capabilities: frozenset[str] = frozenset(), *, claim: bool = False,
          at: datetime | None = None, usage: DeploymentUsage | None = None, tokens: int = 0) -> Verdict:
    """Whether `deployment` is usable for `operation` (None: any) at `now` (wall clock).
    `health` is its health (None: nothing happened to it yet); `at` is the instant its
    windows are read at, `now` by default; `claim` makes a PROBE verdict the caller's probe;
    `usage` its quota's counters (None: none kept), for a request of `tokens`."""
    if operation is not None and operation not in capabilities:  # "chat", "stream", "embeddings"
        return Verdict(False, out=CAPABILITY,
                       reason=f"provider type {deployment.provider.type} cannot serve {operation}")
    disabled = deployment.provider.disabled
    if disabled:
        return Verdict(False, out=DISABLED, reason=f"disabled ({disabled})")
    windows = deployment.windows
    if windows is not None:
        at = at or datetime.fromtimestamp(now, timezone.utc)
        if not windows.is_open(at):
            return Verdict(False, out=OUTSIDE_WINDOW, reason=windows.explain(at) or "outside its window")
    if usage is not None:  # before health: a deployment at its quota must not take the probe
        over = quota_wait(deployment.limits, usage, tokens, now)
        if over is not None:
            limit, wait = over
            return Verdict(False, out=LIMITED, reason=f"{limit} (room again in {wait:.1f}s)",
                           cooldown_until=now + wait, rate_limited=True)
    if health is None:
        return USABLE
    admission = health.admit(now, claim)
    if admission is ADMITTED:
        return USABLE
    if admission is CLAIMABLE:
        return PROBE
    view = health.view()
    rate_limited = view.last_failure is FailureClass.RATE_LIMIT
    if admission is PROBE_IN_FLIGHT:
        return Verdict(False, out=HALF_OPEN, reason="half-open: a probe request is in flight",
                       rate_limited=rate_limited)
    after = f" after {view.last_error}" if view.last_error else ""
    return Verdict(False, out=COOLDOWN, reason=f"cooling down until {iso(view.cooldown_until)}{after}",
                   cooldown_until=view.cooldown_until, rate_limited=rate_limited)
