"""The state of every deployment, as /admin/status, /readyz and the deployment-state
gauge of /metrics show it: `admission.judge` at `now` (wall clock, the present unless a
test gives one), claiming nothing."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

from gatewayd.daemon.routing.admission import HALF_OPEN, iso, judge
from gatewayd.daemon.state.store import FRESH, HealthStore

if TYPE_CHECKING:
    from gatewayd.daemon.routing.snapshot import Snapshot

USABLE_STATES = ("ok", HALF_OPEN)  # a half-open deployment takes its probe: the daemon is ready


def deployment_states(snapshot: Snapshot, store: HealthStore, now: float | None = None) -> Iterator[tuple[str, str]]:
    """(name, state) of each deployment: ok | cooldown | half_open | disabled | outside_window."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, timezone.utc)
    for name, deployment in snapshot.graph.deployments.items():
        yield name, judge(deployment, store.peek(deployment), now, at=at).state


def deployments_status(snapshot: Snapshot, store: HealthStore, now: float | None = None) -> dict[str, dict]:
    """`deployments` of /admin/status, exactly the fields docs/operations.md lists; `last_error` comes
    from the adapters, which scrub the provider's key out of what upstreams send."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, timezone.utc)
    result = {}
    for name, deployment in snapshot.graph.deployments.items():
        health = store.peek(deployment)
        view = health.view() if health is not None else FRESH
        result[name] = {
            "state": judge(deployment, health, now, at=at).state,
            "cooldown_until": iso(view.cooldown_until) if view.cooldown_until > now else None,
            "failures": view.failures,
            "last_error": view.last_error,
        }
    return result


def usable_count(snapshot: Snapshot, store: HealthStore, now: float | None = None) -> int:
    return sum(1 for _name, state in deployment_states(snapshot, store, now) if state in USABLE_STATES)
