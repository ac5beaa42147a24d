"""Why each candidate of a plan is in or out at a given instant.

Shared by `gatewayd explain` and `GET /admin/explain`; the daemon passes its
health store and its counters so cooldowns and deployments at their quota show
too. Windows are read at the instant asked about, health and quotas as they are
now; the check is `admission.judge`, claiming nothing.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from gatewayd.daemon.core.graph import Deployment, Graph, Limits
from gatewayd.daemon.core.problems import suggest
from gatewayd.daemon.routing.admission import DISABLED, judge
from gatewayd.daemon.routing.bandit import DEFAULT_UCB, describe_arms
from gatewayd.daemon.state.bandit import BanditStore
from gatewayd.daemon.state.counters import CounterStore
from gatewayd.daemon.state.store import HealthStore


class UnknownRoute(LookupError):
    pass


def out_reason(deployment: Deployment, at: datetime, health: HealthStore | None = None,
               now: float | None = None, counters: CounterStore | None = None) -> str | None:
    """Why `deployment` is out at `at` (its health and quota as at `now`, the present by default), or None."""
    usage = counters.peek_deployment(deployment.identity) if counters and deployment.limits else None
    verdict = judge(deployment, health.peek(deployment) if health else None,
                    time.time() if now is None else now, at=at, usage=usage)
    if verdict.usable:
        return None
    if verdict.out is DISABLED:  # operators are told which provider to fix
        return f"provider '{deployment.provider.name}' disabled: {deployment.disabled}"
    return verdict.reason


def describe_limits(limits: Limits | None, queue_wait: float) -> str | None:
    """A deployment's quota in words: `rpm 500, concurrency 50, queue 2s`."""
    if limits is None:
        return None
    parts = [f"{name} {value}" for name, value in
             (("rpm", limits.rpm), ("tpm", limits.tpm), ("concurrency", limits.concurrency)) if value is not None]
    if limits.concurrency is not None:
        parts.append(f"queue {queue_wait:g}s")
    return ", ".join(parts)


def explain_plan(graph: Graph, name: str, at: datetime, health: HealthStore | None = None,
                 counters: CounterStore | None = None, bandit: BanditStore | None = None) -> dict:
    """The plan of `name`: each tier and each candidate, in or out and why; with `bandit` (the
    daemon's), each candidate of a ucb tier has `ucb`: its rank, score, mean reward and pulls."""
    route = graph.routes.get(name)
    if route is None:
        raise UnknownRoute(f"'{name}' is neither an alias nor a model{suggest(name, graph.routes)}")
    now = time.time()
    tiers = []
    for tier in route.tiers:
        candidates = []
        for candidate in tier.candidates:
            deployment = graph.deployments[candidate.deployment]
            reason = out_reason(deployment, at, health, now, counters)
            candidates.append({
                "model": deployment.name, "provider": deployment.provider.name,
                "upstream_model": deployment.model, "weight": candidate.weight,
                "in": reason is None, "why": reason,
                "limits": describe_limits(deployment.limits, deployment.queue_wait),
            })
        if tier.strategy == "ucb" and bandit is not None:
            arms = bandit.arms([graph.deployments[c.deployment].identity for c in tier.candidates])
            for shown, learned in zip(candidates, describe_arms(arms, tier.ucb or DEFAULT_UCB), strict=True):
                shown["ucb"] = learned
        tiers.append({"from": tier.origin, "strategy": tier.strategy, "candidates": candidates})
    return {"model": name, "kind": route.kind, "at": at.isoformat(), "config": graph.version, "tiers": tiers}


def format_plan(plan: dict) -> str:
    lines = [f"{plan['kind']} '{plan['model']}' at {plan['at']} (config {plan['config']})"]
    position = 0
    for number, tier in enumerate(plan["tiers"], 1):
        lines.append(f"  tier {number} from '{tier['from']}' ({tier['strategy']}):")
        for candidate in tier["candidates"]:
            position += 1
            weight = f" weight {candidate['weight']:g}" if tier["strategy"] == "weighted" else ""
            state = "in " if candidate["in"] else "out"
            limits = f" [limits: {candidate['limits']}]" if candidate.get("limits") else ""
            why = f" — {candidate['why']}" if candidate["why"] else ""
            learned = f" [ucb: {describe_learned(candidate['ucb'])}]" if candidate.get("ucb") else ""
            lines.append(f"    {position}. [{state}] {candidate['model']} "
                         f"({candidate['provider']}/{candidate['upstream_model']}){weight}{limits}{learned}{why}")
    return "\n".join(lines)


def describe_learned(learned: dict) -> str:
    """A ucb candidate's statistics in words: `#1, score 1.2345, mean reward 0.8, 12 pulls`."""
    if learned["score"] is None:
        return f"#{learned['rank']}, untried"
    return (f"#{learned['rank']}, score {learned['score']:g}, mean reward {learned['mean_reward']:g}, "
            f"{learned['pulls']} pulls")


def parse_instant(text: str | None) -> datetime:
    """An ISO 8601 instant (`Z` for UTC; no offset reads as UTC); now when `text` is empty.
    Raises ValueError for anything else."""
    if not text:
        return datetime.now(timezone.utc)
    instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return instant if instant.tzinfo else instant.replace(tzinfo=timezone.utc)
