"""The router books every try through the HealthStore (daemon/routing/router.py with
daemon/state/): in-flight counts, wall-clock cooldown deadlines, the outcome hook, and
the half-open probe, which only the router claims. A fake adapter, no network."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import (
    Backoff,
    Candidate,
    CooldownPolicy,
    Deployment,
    Policy,
    RetryPolicy,
    Route,
    Tier,
    Timeouts,
)
from gatewayd.daemon.routing.explain import out_reason
from gatewayd.daemon.routing.router import Outcome, Router, RoutingFailed
from gatewayd.daemon.routing.status import deployments_status
from gatewayd.daemon.state.health import LocalHealthStore
from gatewayd.daemon.state.store import PROBE, PROBE_IN_FLIGHT
from tests.test_health import make_provider
from tests.wire import chat_request

COOL = CooldownPolicy(failures=2, initial=30.0, multiplier=2.0, max=600.0)
ONE_TRY = Policy(
    timeouts=Timeouts(connect=1.0, first_byte=5.0, idle=5.0, total=10.0),
    retry=RetryPolicy(attempts=1, backoff=Backoff(0.01, 0.01, 2.0, "full"), retry_statuses=frozenset({500}),
                      retry_timeout=False, retry_connect=False, retry_after_max=30.0),
    cooldown=COOL,
)


class Fake:
    """An adapter whose chat answers, fails with a 500, or waits for `gate` first."""

    capabilities = frozenset({"chat"})

    def __init__(self) -> None:
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def chat(self, deployment, request):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise UpstreamError(FailureClass.SERVER, "boom", status=500)
        return object()


@pytest.fixture
def world():
    deployment = Deployment(name="d", provider=make_provider("p"), model="m", policy=ONE_TRY)
    graph = SimpleNamespace(deployments={"d": deployment}, default_policy=ONE_TRY)
    adapter = Fake()
    snapshot = SimpleNamespace(graph=graph, adapters={"p": adapter})
    route = Route("chat", "alias", (Tier("ordered", (Candidate("d"),), "chat"),))
    store = LocalHealthStore()
    heard: list[tuple] = []
    store.subscribe(lambda identity, failure, latency: heard.append((identity, failure, latency)))
    router = Router(store)

    async def call():
        return await router.route(snapshot, route, chat_request({}))

    return SimpleNamespace(deployment=deployment, adapter=adapter, snapshot=snapshot, store=store,
                           heard=heard, call=call)


async def test_a_success_is_booked_and_heard(world):
    outcome = await world.call()
    assert outcome.deployment is world.deployment and outcome.attempts == 1
    health = world.store.peek(world.deployment)
    assert outcome.health is health and health.view().inflight == 0
    assert world.heard == [(world.deployment.identity, None, outcome.latency)]


async def test_failures_cool_it_down_until_a_wall_clock_deadline(world):
    world.adapter.failing = True
    with pytest.raises(RoutingFailed):
        await world.call()
    before = time.time()
    with pytest.raises(RoutingFailed) as caught:
        await world.call()  # the second counted failure: cooling from now
    after = time.time()
    until = world.store.peek(world.deployment).view().cooldown_until
    assert before + COOL.initial <= until <= after + COOL.initial
    assert caught.value.status == 503 and caught.value.retry_after == COOL.initial
    assert world.heard == [(world.deployment.identity, FailureClass.SERVER, None)] * 2

    with pytest.raises(RoutingFailed) as refused:  # cooling: not even tried
        await world.call()
    assert world.adapter.calls == 2
    assert refused.value.reasons["d"].startswith("cooling down until ")
    assert refused.value.retry_after in (COOL.initial - 1, COOL.initial)


async def test_only_the_router_claims_the_half_open_probe(world):
    health = world.store.get(world.deployment)
    for _ in range(COOL.failures):  # a cooldown that has just ended
        health.fail(UpstreamError(FailureClass.SERVER, "boom", status=500), COOL, time.time() - COOL.initial - 1)
    for _ in range(2):  # explain and status ask without taking it
        assert out_reason(world.deployment, datetime.now(timezone.utc), world.store) is None
        assert deployments_status(world.snapshot, world.store)["d"]["state"] == "half_open"
    assert not health.view().probing

    world.adapter.gate = asyncio.Event()
    probe = asyncio.create_task(world.call())
    while world.adapter.calls == 0:
        await asyncio.sleep(0)
    assert health.view().probing and health.view().inflight == 1
    with pytest.raises(RoutingFailed) as second:
        await world.call()
    assert second.value.reasons == {"d": "half-open: a probe request is in flight"}
    assert out_reason(world.deployment, datetime.now(timezone.utc), world.store) == second.value.reasons["d"]

    world.adapter.gate.set()
    await probe
    assert health.view().state(time.time()) == "ok" and not health.view().probing
    assert deployments_status(world.snapshot, world.store)["d"]["state"] == "ok"


def test_a_stream_that_ends_without_a_verdict_frees_the_probe_only_if_it_held_it(world):
    store, deployment = world.store, world.deployment
    health = store.get(deployment)
    router = Router(store)
    relayed = Outcome(deployment, health, 1, probe=False)  # a stream that started before the cooldown
    now = time.time()
    for _ in range(COOL.failures):
        health.fail(UpstreamError(FailureClass.SERVER, "boom", status=500), COOL, now)
    assert health.admit(now + COOL.initial + 1) is PROBE  # another request now holds the probe
    router.abandon_stream(relayed)  # the old stream's client leaves
    router.finish_stream(relayed, UpstreamError(FailureClass.INTERNAL, "relay bug"))
    assert health.view().probing  # the probe is still the other request's
    assert health.admit(now + COOL.initial + 2) is PROBE_IN_FLIGHT
    router.abandon_stream(Outcome(deployment, health, 1, probe=True))  # the probe's own client leaves
    assert not health.view().probing
