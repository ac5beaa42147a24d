"""The state of every deployment, as /admin/status, /readyz and /metrics show it."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from gatewayd.daemon.core.graph import Deployment
from gatewayd.daemon.state.health import Health, HealthBook, wall

if TYPE_CHECKING:
    from gatewayd.daemon.routing.snapshot import Snapshot


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def deployment_state(deployment: Deployment, health: Health | None, now: float,
                     at: datetime | None = None) -> str:
    if deployment.disabled:
        return "disabled"
    if deployment.windows is not None and not deployment.windows.is_open(at or datetime.now(timezone.utc)):
        return "outside_window"
    return health.state(now) if health is not None else "ok"


def deployments_status(snapshot: Snapshot, book: HealthBook) -> dict[str, dict]:
    """`deployments` of /admin/status, exactly the SPEC §3 fields; `last_error` comes
    from the adapters, which scrub the provider's key out of what upstreams send."""
    now = time.monotonic()
    at = datetime.now(timezone.utc)
    result = {}
    for name, deployment in snapshot.graph.deployments.items():
        health = book.peek(deployment)
        state = deployment_state(deployment, health, now, at)
        cooling = health is not None and health.cooldown_until > now
        result[name] = {
            "state": state,
            "cooldown_until": iso(wall(health.cooldown_until)) if cooling else None,
            "failures": health.failures if health else 0,
            "last_error": health.last_error if health else None,
        }
    return result


def usable_count(snapshot: Snapshot, book: HealthBook) -> int:
    now = time.monotonic()
    at = datetime.now(timezone.utc)
    return sum(1 for d in snapshot.graph.deployments.values()
               if deployment_state(d, book.peek(d), now, at) in ("ok", "half_open"))


def cooldown_reason(book: HealthBook):
    """A HealthProbe for explain: why a deployment is out right now, from live health."""
    def probe(deployment: Deployment) -> str | None:
        health = book.peek(deployment)
        if health is None:
            return None
        now = time.monotonic()
        if health.cooldown_until > now:
            return f"cooling down until {iso(wall(health.cooldown_until))} after {health.last_error}"
        if health.cooldown_until and health.probing:
            return "half-open: a probe request is in flight"
        return None
    return probe
