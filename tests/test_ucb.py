"""strategy: ucb — the UCB1 arithmetic (daemon/routing/bandit.py), the statistics it learns from
(daemon/state/bandit.py), the `ucb:` settings as compiled, what status and explain show, and
the strategy learning through HTTP: the real app, and the real daemon in front of fake OpenAI
upstreams on 127.0.0.1."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.core.graph import Candidate, Tier, Ucb
from gatewayd.daemon.routing.bandit import (
    UNTRIED,
    describe_arms,
    fastest_latency,
    mean_reward,
    scores,
    ucb_order,
)
from gatewayd.daemon.routing.explain import explain_plan, format_plan
from gatewayd.daemon.routing.status import deployments_status
from gatewayd.daemon.routing.strategies import Strategies
from gatewayd.daemon.state.bandit import DISCOUNT, Arm, LocalBanditStore
from tests.compiling import F, compiled, errors, in_tmp  # noqa: F401 (in_tmp: autouse)
from tests.daemon_proc import Daemon, free_port
from tests.fakes import Ok, Status, gateway_config

SERVER = FailureClass.SERVER


def learned(*outcomes: bool | float, discount: float = DISCOUNT) -> Arm:
    """An arm that saw `outcomes` in order: False a failure, True a success in 0.1 s, a
    number a success in that many seconds."""
    store = LocalBanditStore(discount)
    store.track([("d",)])
    for outcome in outcomes:
        if outcome is False:
            store.record(("d",), SERVER, None)
        else:
            store.record(("d",), None, 0.1 if outcome is True else float(outcome))
    return store.arms([("d",)])[0]


def cands(*names: str) -> tuple[Candidate, ...]:
    return tuple(Candidate(name) for name in names)


def names(order) -> list[str]:
    return [candidate.deployment for candidate in order]


# ---------------------------------------------------------------- the arithmetic


def test_untried_deployments_go_first_in_the_order_written():
    good = learned(*[True] * 30)
    order = ucb_order(cands("good", "never", "also-never", "known"),
                      [good, None, Arm(), learned(True, False)], Ucb())
    assert names(order)[:2] == ["never", "also-never"]
    assert scores([good, None, Arm()], Ucb())[1:] == [UNTRIED, UNTRIED]


def test_the_score_is_the_mean_plus_the_ucb1_bonus():
    a, b = learned(True, True, False), learned(True, *[False] * 4)
    total = a.pulls + b.pulls
    got = scores([a, b], Ucb(exploration=2.0))
    assert got[0] == pytest.approx(a.wins / a.weight + math.sqrt(2.0 * math.log(total) / a.weight))
    assert got[1] == pytest.approx(b.wins / b.weight + math.sqrt(2.0 * math.log(total) / b.weight))


def test_exploration_zero_exploits_and_a_large_one_tries_the_less_known():
    known = learned(*[True, True, True, True, False] * 10)  # 80 %, 50 pulls
    scarce = learned(True, False, False)  # 33 %, 3 pulls
    arms = [known, scarce]
    assert names(ucb_order(cands("known", "scarce"), arms, Ucb(exploration=0.0))) == ["known", "scarce"]
    assert names(ucb_order(cands("known", "scarce"), arms, Ucb(exploration=2.0))) == ["scarce", "known"]


def test_equal_scores_keep_the_order_written():
    same = [learned(True, False), learned(True, False), learned(True, False)]
    assert names(ucb_order(cands("c", "a", "b"), same, Ucb())) == ["c", "a", "b"]


def test_latency_reward_scales_the_success_rate_by_speed_against_the_fastest():
    fast, slow = learned(*[0.5] * 10), learned(*[1.0] * 10)
    fastest = fastest_latency([fast, slow, None])
    assert fastest == pytest.approx(0.5)
    assert mean_reward(fast, "latency", fastest) == pytest.approx(1.0)
    assert mean_reward(slow, "latency", fastest) == pytest.approx(0.5)  # twice as slow: half
    assert mean_reward(slow, "success", fastest) == pytest.approx(1.0)  # success ignores time
    order = ucb_order(cands("slow", "fast"), [slow, fast], Ucb(exploration=0.0, reward="latency"))
    assert names(order) == ["fast", "slow"]


outcome = st.one_of(st.just(False), st.floats(min_value=0.0, max_value=600.0))


@given(st.lists(st.lists(outcome, min_size=1, max_size=60), min_size=1, max_size=4),
       st.sampled_from(["success", "latency"]))
def test_the_mean_reward_stays_within_0_and_1(histories, reward):
    arms = [learned(*history) for history in histories]
    fastest = fastest_latency(arms)
    for arm in arms:
        assert 0.0 <= mean_reward(arm, reward, fastest) <= 1.0
    assert all(math.isfinite(score) for score in scores(arms, Ucb(reward=reward)))


@given(st.lists(st.one_of(st.none(), st.lists(outcome, max_size=60)), min_size=1, max_size=5),
       st.sampled_from(["success", "latency"]), st.floats(min_value=0.0, max_value=10.0))
def test_the_order_is_by_score_highest_first_ties_as_written(histories, reward, exploration):
    arms = [None if history is None else learned(*history) for history in histories]
    settings = Ucb(exploration, reward)
    values = scores(arms, settings)
    expected = sorted(range(len(arms)), key=lambda index: (-values[index], index))
    order = ucb_order(cands(*map(str, range(len(arms)))), arms, settings)
    assert [int(name) for name in names(order)] == expected


# ---------------------------------------------------------------- the statistics


def test_old_outcomes_fade_so_a_long_good_record_is_lost_within_tens_of_failures():
    for record in (100, 1000):
        arm = learned(*[True] * record, *[False] * 35)
        assert arm.pulls == record + 35
        assert mean_reward(arm, "success") < 0.5  # DISCOUNT**35 = 0.49
        assert arm.weight < 1 / (1 - DISCOUNT)  # at most about the last 50 outcomes count
    never_forgets = learned(*[True] * 1000, *[False] * 35, discount=1.0)
    assert mean_reward(never_forgets, "success") > 0.95  # what discounting is for


def test_the_mean_follows_the_recent_outcomes():
    recovered = learned(*[False] * 100, *[True] * 60)
    assert mean_reward(recovered, "success") > 0.7
    assert recovered.latency == pytest.approx(0.1)


def test_track_keeps_statistics_of_identities_that_stay_and_ignores_others():
    store = LocalBanditStore()
    store.track([("a",), ("b",)])
    store.record(("a",), None, 0.2)
    store.record(("b",), SERVER, None)
    store.record(("elsewhere",), None, 0.1)  # no tier learns from it
    store.track([("a",), ("c",)])  # a reload: b left, c came
    a, b, c, elsewhere = store.arms([("a",), ("b",), ("c",), ("elsewhere",)])
    assert (a.pulls, a.wins, a.latency) == (1, 1.0, pytest.approx(0.2))
    assert b is None and elsewhere is None
    assert c.pulls == 0
    assert len(store) == 2


def test_strategies_order_a_ucb_tier_by_identity():
    graph = compiled(UCB_CONFIG)
    strategies = Strategies(bandit=LocalBanditStore())
    deployments = graph.deployments
    strategies.bandit.track(d.identity for d in deployments.values())
    tier = graph.routes["chat"].tiers[0]
    assert names(strategies.order(tier, None, deployments)) == ["a", "b"]  # both untried: as written
    for _ in range(5):
        strategies.bandit.record(deployments["a"].identity, SERVER, None)
    strategies.bandit.record(deployments["b"].identity, None, 0.1)
    assert names(strategies.order(tier, None, deployments)) == ["b", "a"]
    with pytest.raises(ValueError):
        strategies.order(tier, None)


# ---------------------------------------------------------------- the settings

UCB_CONFIG = """\
    version: 1
    providers:
      p: {type: mock}
    models:
      a: {provider: p, model: one}
      b: {provider: p, model: two}
      c: {provider: p, model: three}
    aliases:
      chat:
        targets: [a, b]
        strategy: ucb
        ucb: {exploration: 1.5, reward: latency}
      plain:
        targets: [c, a, b]
        strategy: ucb
      outer:
        targets: [a]
        fallbacks: [plain]
    """


def test_ucb_settings_compile_with_the_schema_defaults():
    graph = compiled(UCB_CONFIG)
    assert graph.routes["chat"].tiers[0] == Tier("ucb", cands("a", "b"), "chat", Ucb(1.5, "latency"))
    assert graph.routes["plain"].tiers[0].ucb == Ucb(2.0, "success")
    # a ucb alias as a fallback keeps its settings where the plan drops a deployment seen before
    inner = graph.routes["outer"].tiers[1]
    assert (inner.strategy, names(inner.candidates), inner.ucb) == ("ucb", ["c", "b"], Ucb(2.0, "success"))
    assert graph.routes["a"].tiers[0].ucb is None


def test_ucb_settings_with_another_strategy_are_an_error_at_the_key():
    assert errors("""\
        version: 1
        providers:
          p: {type: mock}
        models:
          m: {provider: p, model: echo}
        aliases:
          a:
            targets: [m]
            strategy: weighted
            ucb: {exploration: 1}
        """) == [f"{F}:10:5: ucb settings apply only with strategy: ucb (alias 'a' has strategy: weighted)"]


@pytest.mark.parametrize("ucb, where", [
    ("{reward: cost}", "aliases.a.ucb.reward"),
    ("{exploration: -1}", "aliases.a.ucb.exploration"),
    ("{explore: 1}", "aliases.a.ucb"),
])
def test_bad_ucb_settings_are_located_errors(ucb, where):
    problems = errors(f"""\
        version: 1
        providers:
          p: {{type: mock}}
        models:
          m: {{provider: p, model: echo}}
        aliases:
          a:
            targets: [m]
            strategy: ucb
            ucb: {ucb}
        """)
    assert len(problems) == 1
    assert problems[0].startswith(f"{F}:10:") and where in problems[0]


# ---------------------------------------------------------------- status and explain


def test_status_and_explain_show_rank_score_mean_reward_and_pulls():
    graph = compiled(UCB_CONFIG)
    bandit = LocalBanditStore()
    bandit.track(d.identity for d in graph.deployments.values())
    for _ in range(4):
        bandit.record(graph.deployments["a"].identity, None, 0.2)
    bandit.record(graph.deployments["a"].identity, SERVER, None)
    plan = explain_plan(graph, "chat", datetime.now(timezone.utc), bandit=bandit)
    a, b = plan["tiers"][0]["candidates"]
    assert b["ucb"] == {"rank": 1, "score": None, "mean_reward": None, "pulls": 0}  # untried: first
    assert a["ucb"]["rank"] == 2 and a["ucb"]["pulls"] == 5
    assert a["ucb"]["mean_reward"] == pytest.approx(0.8, abs=0.01)
    assert a["ucb"]["score"] == pytest.approx(describe_arms(bandit.arms([graph.deployments["a"].identity]),
                                                            Ucb(1.5, "latency"))[0]["score"])
    text = format_plan(plan)
    assert "[ucb: #1, untried]" in text and "[ucb: #2, score " in text and "5 pulls" in text
    without_state = explain_plan(graph, "chat", datetime.now(timezone.utc))  # `gatewayd explain`: none known
    assert all("ucb" not in candidate for candidate in without_state["tiers"][0]["candidates"])


# ---------------------------------------------------------------- through the real app


def two_upstreams(flaky, healthy, *, extra_aliases: dict | None = None, **config) -> str:
    aliases = {"chat": {"targets": ["flaky", "healthy"], "strategy": "ucb"}, **(extra_aliases or {})}
    # cooldown out of the way: what moves traffic here is the strategy, not a deployment taken out
    return gateway_config({"flaky": flaky, "healthy": healthy}, aliases=aliases,
                          defaults={"cooldown": {"failures": 100000}}, **config)


def first_attempts(fakes: dict, count: int) -> list[str]:
    """For the first `count` requests numbered in their content, which fake got each first."""
    seen: dict[int, tuple[float, str]] = {}
    for name, fake in fakes.items():
        for request in fake.requests:
            number = int(request["json"]["messages"][0]["content"].split()[-1])
            if number not in seen or request["at"] < seen[number][0]:
                seen[number] = (request["at"], name)
    return [seen[number][1] for number in range(count)]


def eighty_percent_failing() -> list:
    return [Status(500), Status(500), Status(500), Status(500), Ok("from flaky")] * 200


async def test_outcomes_through_the_app_are_learned_and_client_errors_are_not(gateway, fake_openai):
    flaky, healthy = await fake_openai("flaky"), await fake_openai("healthy")
    gw = await gateway(two_upstreams(flaky, healthy))
    bandit, graph = gw.runtime.bandit, gw.runtime.holder.current.graph
    identities = [graph.deployments[name].identity for name in ("flaky", "healthy")]
    flaky.queue(Status(500))
    async with await gw.chat(content="request 0") as response:  # flaky first (untried), then healthy
        assert response.status == 200 and response.headers["x-gatewayd-deployment"] == "healthy"
    first, second = bandit.arms(identities)
    assert (first.pulls, first.wins, second.pulls, second.wins) == (1, 0.0, 1, 1.0)
    assert second.latency > 0.0
    healthy.queue(Status(400, "bad parameter", type="invalid_request_error"))
    flaky.queue(Status(400, "bad parameter", type="invalid_request_error"))
    async with await gw.chat(content="request 1") as response:  # the client's fault: no pull
        assert response.status == 400
    assert [arm.pulls for arm in bandit.arms(identities)] == [1, 1]
    async with await gw.chat(content="request 2", stream=True) as response:  # a stream counts at its end
        assert response.status == 200
        await response.read()
    assert sum(arm.pulls for arm in bandit.arms(identities)) == 3
    shown = deployments_status(gw.runtime.holder.current, gw.runtime.health, bandit=bandit)
    assert set(shown["flaky"]["ucb"]) == {"chat"} and shown["flaky"]["ucb"]["chat"]["pulls"] >= 1
    assert "ucb" not in deployments_status(gw.runtime.holder.current, gw.runtime.health)["flaky"]
    over_http = (await gw.status())["deployments"]["flaky"]["ucb"]["chat"]
    assert over_http["pulls"] >= 1 and 0.0 <= over_http["mean_reward"] <= 1.0
    async with gw.session.get(gw.url + "/admin/explain", params={"model": "chat"}) as response:
        plan = await response.json()
    assert response.status == 200
    shown = {candidate["model"]: candidate["ucb"] for candidate in plan["tiers"][0]["candidates"]}
    assert shown["healthy"]["rank"] == 1 and shown["healthy"]["mean_reward"] > shown["flaky"]["mean_reward"]


async def test_a_reload_keeps_what_was_learned_for_unchanged_identities(gateway, fake_openai, tmp_path):
    flaky, healthy = await fake_openai("flaky"), await fake_openai("healthy")
    gw = await gateway(two_upstreams(flaky, healthy))
    for number in range(3):
        async with await gw.chat(content=f"request {number}") as response:
            assert response.status == 200
    before = gw.runtime.bandit.arms([d.identity for d in gw.runtime.holder.current.graph.deployments.values()])
    # flaky renamed (same upstream: same identity); healthy pointed at another upstream model
    document = json.loads(two_upstreams(flaky, healthy))
    document["models"]["renamed"] = document["models"].pop("flaky")
    document["models"]["healthy"]["model"] = "up-healthy-2"
    document["aliases"]["chat"]["targets"] = ["renamed", "healthy"]
    gw.config_path.write_text(json.dumps(document))
    graph = gw.runtime.install(load(str(gw.config_path), {}).graph).graph
    kept, fresh = gw.runtime.bandit.arms([graph.deployments[name].identity for name in ("renamed", "healthy")])
    assert kept is before[0] and kept.pulls >= 1 and before[1].pulls >= 1
    assert fresh.pulls == 0


async def test_a_config_without_ucb_keeps_no_statistics(gateway, fake_openai):
    flaky, healthy = await fake_openai("flaky"), await fake_openai("healthy")
    gw = await gateway(gateway_config({"flaky": flaky, "healthy": healthy},
                                      aliases={"chat": {"targets": ["flaky", "healthy"]}}))
    async with await gw.chat(content="request 0") as response:
        assert response.status == 200
    assert len(gw.runtime.bandit) == 0


# ---------------------------------------------------------------- the real daemon learns


async def test_the_daemon_learns_the_healthy_deployment_and_moves_when_it_degrades(fake_openai, tmp_path):
    """One deployment failing 4 requests in 5 (written first), one healthy: of the last 100 of
    200 requests' first attempts, at least 85 go to the healthy one. Then they swap: within 10
    requests the choice has moved, and at least 85 of the 100 first attempts after those go to
    the one that recovered. (The arithmetic alone gives 99 of 100 and a move after 2 requests.)"""
    flaky, healthy = await fake_openai("flaky"), await fake_openai("healthy")
    flaky.queue(*eighty_percent_failing())
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(two_upstreams(flaky, healthy, server={"listen": f"127.0.0.1:{port}"}))
    fakes = {"flaky": flaky, "healthy": healthy}
    async with Daemon(path, port, tmp_path) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        try:
            for number in range(200):
                await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"request {number}"}])
            learned_phase = first_attempts(fakes, 200)
            assert learned_phase[100:].count("healthy") >= 85, learned_phase

            flaky.script, flaky.default = [], Ok("from flaky")  # it recovers
            healthy.queue(*eighty_percent_failing())  # and the other degrades
            for number in range(200, 310):
                await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"request {number}"}])
            swapped = first_attempts(fakes, 310)[200:]
            assert swapped[10:].count("flaky") >= 85, swapped
        finally:
            await client.close()
