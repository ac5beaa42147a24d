"""The state of every deployment and the usage of every limited key, as /admin/status,
/readyz and the deployment-state gauge of /metrics show it: `admission.judge` at `now`
(wall clock, the present unless a test gives one), claiming nothing."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.routing.admission import HALF_OPEN, iso, judge
from gatewayd.daemon.routing.bandit import DEFAULT_UCB, describe_arms
from gatewayd.daemon.routing.quota import deployment_limits_status, key_status
from gatewayd.daemon.state.bandit import BanditStore
from gatewayd.daemon.state.counters import CounterStore
from gatewayd.daemon.state.store import FRESH, HealthStore

if TYPE_CHECKING:
    from gatewayd.daemon.routing.snapshot import Snapshot

USABLE_STATES = ("ok", HALF_OPEN)  # a half-open deployment takes its probe: the daemon is ready


def deployment_states(snapshot: Snapshot, store: HealthStore, now: float | None = None,
                      counters: CounterStore | None = None) -> Iterator[tuple[str, str]]:
    """(name, state) of each deployment: ok | cooldown | half_open | limited | disabled | outside_window."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, timezone.utc)
    for name, deployment in snapshot.graph.deployments.items():
        usage = counters.peek_deployment(deployment.identity) if counters and deployment.limits else None
        yield name, judge(deployment, store.peek(deployment), now, at=at, usage=usage).state


def deployments_status(snapshot: Snapshot, store: HealthStore, now: float | None = None,
                       counters: CounterStore | None = None, bandit: BanditStore | None = None) -> dict[str, dict]:
    """`deployments` of /admin/status, exactly the fields docs/operations.md lists; `last_error` comes
    from the adapters, which scrub the provider's key out of what upstreams send. A deployment
    with limits has them too, each with what is used and what remains; one that an alias's
    ucb tier orders has `ucb`, by alias, with its rank, score, mean reward and pulls there."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, timezone.utc)
    result = {}
    for name, deployment in snapshot.graph.deployments.items():
        health = store.peek(deployment)
        view = health.view() if health is not None else FRESH
        usage = counters.peek_deployment(deployment.identity) if counters and deployment.limits else None
        verdict = judge(deployment, health, now, at=at, usage=usage)
        result[name] = {
            "state": verdict.state,
            "cooldown_until": iso(view.cooldown_until) if view.cooldown_until > now else None,
            "failures": view.failures,
            "last_error": view.last_error,
        }
        if deployment.limits is not None:
            result[name]["limits"] = deployment_limits_status(deployment.limits, usage, now)
            if verdict.state == "limited":
                result[name]["limited"] = verdict.reason
    if bandit is not None:
        for name, by_alias in ucb_status(snapshot.graph, bandit).items():
            result[name]["ucb"] = by_alias
    return result


def ucb_status(graph: Graph, bandit: BanditStore) -> dict[str, dict[str, dict]]:
    """{deployment: {alias: its rank, score, mean reward and pulls in the alias's targets}} for
    each alias whose targets are ordered by ucb."""
    result: dict[str, dict[str, dict]] = {}
    for name in graph.aliases:
        route = graph.routes.get(name)
        tier = route.tiers[0] if route is not None and route.tiers else None
        if tier is None or tier.strategy != "ucb" or tier.origin != name:
            continue
        arms = bandit.arms([graph.deployments[c.deployment].identity for c in tier.candidates])
        for candidate, shown in zip(tier.candidates, describe_arms(arms, tier.ucb or DEFAULT_UCB), strict=True):
            result.setdefault(candidate.deployment, {})[name] = shown
    return result


def keys_status(snapshot: Snapshot, counters: CounterStore, now: float | None = None) -> dict[str, dict]:
    """`keys` of /admin/status: each app key with limits or a budget, by name, with its usage
    and headroom (never the key)."""
    now = time.time() if now is None else now
    graph = snapshot.graph
    return {key.name: key_status(key, counters.peek_key(key.identity), now, graph.timezone)
            for key in graph.server.keys or () if key.limited}


def usable_count(snapshot: Snapshot, store: HealthStore, now: float | None = None,
                 counters: CounterStore | None = None) -> int:
    return sum(1 for _name, state in deployment_states(snapshot, store, now, counters) if state in USABLE_STATES)
