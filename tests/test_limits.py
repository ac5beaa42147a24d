"""Admission control through the real app: app keys' limits and budgets (429 before any
upstream call, `x-ratelimit-*` on every answer), deployments' quotas (skipped at rpm/tpm,
queued at concurrency, by priority), counters across reloads, and what /admin/status,
/admin/explain and /metrics show of them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gatewayd.daemon.config.load import load
from tests.fakes import Ok, Status, Stream, eventually, fakes, gateway_config

LOW, NORMAL, HIGH = "sk-low-0000000001", "sk-normal-0000002", "sk-high-00000003"
ADMIN = "sk-admin-000000004"


def keys(*entries: dict) -> dict:
    admin = {"name": "ops", "key": ADMIN, "role": "admin"}
    return {"auth": {"keys": [admin, *entries]}}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def chat(gw, key: str, model: str = "chat", **extra) -> aiohttp.ClientResponse:
    response = await gw.chat(model, headers=bearer(key), **extra)
    await response.read()
    return response


async def admin_get(gw, path: str) -> dict:
    async with gw.session.get(gw.url + path, headers=bearer(ADMIN)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def metrics_text(gw) -> str:
    async with gw.session.get(gw.url + "/metrics", headers=bearer(ADMIN)) as response:
        return await response.text()


def sample(text: str, name: str, **labels) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def queued(gw, deployment: str) -> int:
    graph = gw.runtime.holder.current.graph
    usage = gw.runtime.counters.peek_deployment(graph.deployments[deployment].identity)
    return usage.slots.queued if usage is not None else 0


# --- an app key's limits ---------------------------------------------------------------------

async def test_a_key_over_its_rpm_gets_429_before_any_upstream_call(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}},
                                      server=keys({"name": "app", "key": NORMAL, "limits": {"rpm": 3}})))
    answers = [await chat(gw, NORMAL) for _ in range(4)]
    assert [r.status for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in answers)
    assert all(r.headers["x-ratelimit-reset-requests"].endswith("s") for r in answers)
    refused = answers[-1]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    error = (await refused.json())["error"]
    assert error["code"] == "rate_limit_exceeded" and "app" in error["message"]
    assert ups["a"].calls == 3  # the refused request never left the gateway
    assert "x-ratelimit-limit-tokens" not in refused.headers  # no tpm: no token headers
    assert sample(await metrics_text(gw), "gatewayd_admission_rejected_total", reason="key_rpm") == 1.0


async def test_another_key_and_an_unlimited_key_are_not_affected(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server=keys(
        {"name": "tight", "key": LOW, "limits": {"rpm": 1}}, {"name": "free", "key": HIGH})))
    assert [(await chat(gw, LOW)).status for _ in range(2)] == [200, 429]
    free = [await chat(gw, HIGH) for _ in range(3)]
    assert [r.status for r in free] == [200, 200, 200]
    assert all("x-ratelimit-limit-requests" not in r.headers for r in free)


async def test_an_anthropic_client_over_its_limit_gets_an_anthropic_429(gateway):
    gw = await gateway(f"""
        version: 1
        server:
          auth: {{keys: [{{name: app, key: {NORMAL}, limits: {{rpm: 1}}}}]}}
        providers: {{demo: {{type: mock}}}}
        models: {{echo: {{provider: demo, model: echo}}}}
    """)
    body = {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    first = await gw.post("/v1/messages", body, headers={"x-api-key": NORMAL})
    second = await gw.post("/v1/messages", body, headers={"x-api-key": NORMAL})
    assert (first.status, second.status) == (200, 429)
    error = await second.json()
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    assert second.headers["x-ratelimit-remaining-requests"] == "0" and "Retry-After" in second.headers


async def test_tokens_are_reserved_at_admission_and_settled_from_the_usage(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")  # each answer's usage: 12 tokens
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}},
                                      server=keys({"name": "app", "key": NORMAL, "limits": {"tpm": 1000}})))
    too_big = await chat(gw, NORMAL, max_tokens=5000)  # the estimate alone exceeds the tpm
    assert too_big.status == 429 and too_big.headers["Retry-After"] == "60"
    assert (await too_big.json())["error"]["code"] == "rate_limit_exceeded"
    # 600 reserved each; settled to 12 after each answer, so many fit in the minute
    answers = [await chat(gw, NORMAL, max_tokens=600) for _ in range(5)]
    assert [r.status for r in answers] == [200] * 5
    remaining = int(answers[-1].headers["x-ratelimit-remaining-tokens"])
    assert 1000 - 600 - 5 * 40 <= remaining < 1000 - 600  # this request's reservation, the others' usage
    status = await admin_get(gw, "/admin/status")
    assert status["keys"]["app"]["limits"]["tpm"]["used"] == 5 * 12


async def test_a_failed_request_releases_its_reservation(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}},
                                      server=keys({"name": "app", "key": NORMAL, "limits": {"tpm": 1000}})))
    for _ in range(3):
        ups["a"].queue(Status(500))
        assert (await chat(gw, NORMAL, max_tokens=700)).status == 503
    status = await admin_get(gw, "/admin/status")
    assert status["keys"]["app"]["limits"]["tpm"]["used"] == 0


async def test_a_keys_concurrency_counts_a_stream_until_its_end(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}},
                                      server=keys({"name": "app", "key": NORMAL, "limits": {"concurrency": 1}})))
    ups["a"].queue(Stream(pieces=tuple(f"{i} " for i in range(6)), gap=0.1))
    streaming = await gw.chat(headers=bearer(NORMAL), stream=True)
    assert streaming.status == 200
    await asyncio.wait_for(streaming.content.readline(), 2)  # the stream is being relayed
    busy = await chat(gw, NORMAL)
    assert busy.status == 429 and (await busy.json())["error"]["code"] == "rate_limit_exceeded"
    await asyncio.wait_for(streaming.read(), 5)
    assert (await chat(gw, NORMAL)).status == 200
    assert sample(await metrics_text(gw), "gatewayd_admission_rejected_total", reason="key_concurrency") == 1.0


async def test_a_key_over_its_budget_gets_budget_exceeded_until_the_period_resets(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(
        ups, aliases={"chat": {"targets": ["a"]}},
        models={"a": {"pricing": {"input_per_mtok": 1000, "output_per_mtok": 1000}}},  # $0.012 an answer
        server=keys({"name": "app", "key": NORMAL, "budget": {"usd": 0.02, "period": "day"}})))
    assert [(await chat(gw, NORMAL)).status for _ in range(2)] == [200, 200]  # 0.012, then 0.024
    over = await chat(gw, NORMAL)
    assert over.status == 429 and ups["a"].calls == 2
    error = (await over.json())["error"]
    assert error["code"] == "budget_exceeded"
    assert "0.024" in error["message"] and "0.02" in error["message"] and "T00:00:00" in error["message"]
    budget = (await admin_get(gw, "/admin/status"))["keys"]["app"]["budget"]
    assert budget["spent"] == pytest.approx(0.024) and budget["remaining"] == 0 and budget["period"] == "day"
    # the next day: the spend starts again from nothing
    usage = gw.runtime.counters.peek_key(gw.runtime.holder.current.graph.server.keys[1].identity)
    usage.period_start -= 86400
    usage.period_end -= 86400
    assert (await chat(gw, NORMAL)).status == 200


# --- a deployment's quota ----------------------------------------------------------------------

async def test_a_deployment_at_its_rpm_is_skipped_and_named_as_the_reason(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}, "only-a": {"targets": ["a"]}},
                                      models={"a": {"limits": {"rpm": 2}}}, server=keys()))
    served = [(await chat(gw, ADMIN)).headers["x-gatewayd-deployment"] for _ in range(4)]
    assert served == ["a", "a", "b", "b"] and ups["a"].calls == 2
    refused = await chat(gw, ADMIN, "only-a")
    assert refused.status == 429  # every candidate at its limit: rate limited, not unavailable
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "limit rpm 2" in (await refused.json())["error"]["message"]
    status = await admin_get(gw, "/admin/status")
    a = status["deployments"]["a"]
    assert a["state"] == "limited" and "limit rpm 2" in a["limited"]
    assert a["limits"]["rpm"] == {"limit": 2, "used": 2, "remaining": 0}
    explained = await admin_get(gw, "/admin/explain?model=chat")
    first = explained["tiers"][0]["candidates"][0]
    assert first["model"] == "a" and not first["in"] and "limit rpm 2" in first["why"]
    assert first["limits"] == "rpm 2"
    text = await metrics_text(gw)
    assert sample(text, "gatewayd_admission_rejected_total", reason="deployment_rpm") >= 2
    assert sample(text, "gatewayd_deployment_state", deployment="a", state="limited") == 1.0


async def test_a_deployment_at_its_tpm_is_skipped(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}},
                                      models={"a": {"limits": {"tpm": 500}}}, server=keys()))
    small = await chat(gw, ADMIN, max_tokens=100)
    large = await chat(gw, ADMIN, max_tokens=800)  # more than a's tpm alone
    assert small.headers["x-gatewayd-deployment"] == "a" and large.headers["x-gatewayd-deployment"] == "b"


async def test_at_its_concurrency_a_request_waits_in_the_queue_then_is_served(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}}, server=keys(),
                                      models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "5s"}}}))
    ups["a"].queue(Ok("slow", delay=0.4), Ok("second"))
    first = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: ups["a"].calls == 1, 2)
    second = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: queued(gw, "a") == 1, 2)
    answers = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [r.headers["x-gatewayd-deployment"] for r in answers] == ["a", "a"]
    assert ups["b"].calls == 0 and queued(gw, "a") == 0
    text = await metrics_text(gw)
    assert sample(text, "gatewayd_queue_wait_seconds_count", deployment="a", result="admitted") == 1.0
    assert sample(text, "gatewayd_queue_length", deployment="a") == 0.0


async def test_a_queue_wait_past_max_wait_moves_to_the_next_candidate(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}}, server=keys(),
                                      models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "100ms"}}}))
    ups["a"].queue(Ok("slow", delay=1.0))
    first = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: ups["a"].calls == 1, 2)
    second = await asyncio.wait_for(chat(gw, ADMIN), 3)
    assert second.status == 200 and second.headers["x-gatewayd-deployment"] == "b"
    assert (await asyncio.wait_for(first, 3)).headers["x-gatewayd-deployment"] == "a"
    text = await metrics_text(gw)
    assert sample(text, "gatewayd_queue_wait_seconds_count", deployment="a", result="timeout") == 1.0
    assert sample(text, "gatewayd_admission_rejected_total", reason="deployment_concurrency") == 1.0


async def test_the_queue_serves_higher_priority_first(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(
        ups, aliases={"chat": {"targets": ["a"]}},
        models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "5s"}}},
        server=keys({"name": "batch", "key": LOW, "priority": "low"},
                    {"name": "web", "key": NORMAL},
                    {"name": "pager", "key": HIGH, "priority": "high"})))
    ups["a"].queue(Ok("occupying", delay=0.4))
    holder = asyncio.create_task(chat(gw, NORMAL, content="occupy"))
    assert await eventually(lambda: ups["a"].calls == 1, 2)
    waiting = []
    for key, content in ((LOW, "low"), (NORMAL, "normal"), (HIGH, "high")):  # arriving in this order
        waiting.append(asyncio.create_task(chat(gw, key, content=content)))
        assert await eventually(lambda: queued(gw, "a") == len(waiting), 2)
    answers = await asyncio.wait_for(asyncio.gather(holder, *waiting), 8)
    assert [r.status for r in answers] == [200] * 4
    order = [seen["json"]["messages"][0]["content"] for seen in ups["a"].requests]
    assert order == ["occupy", "high", "normal", "low"]


async def test_a_client_that_leaves_while_queued_leaves_the_queue_at_once(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server=keys(),
                                      models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "10s"}}}))
    ups["a"].queue(Ok("slow", delay=1.0))
    holder = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: ups["a"].calls == 1, 2)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as impatient:
        with pytest.raises(TimeoutError):
            async with impatient.post(gw.url + "/v1/chat/completions", headers=bearer(ADMIN),
                                      json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}) as r:
                await r.read()
    assert await eventually(lambda: queued(gw, "a") == 0, 1)  # long before its max_wait
    assert (await asyncio.wait_for(holder, 3)).status == 200
    assert ups["a"].calls == 1  # the one that left never reached the upstream
    assert (await chat(gw, ADMIN)).status == 200  # and the slot it never took is free


async def test_a_queue_wait_ends_with_the_requests_total_deadline(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server=keys(),
                                      defaults={"timeouts": {"total": "400ms"}},
                                      models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "30s"}}}))
    deployment = gw.runtime.holder.current.graph.deployments["a"]
    slots = gw.runtime.counters.deployment(deployment.identity).slots
    assert slots.try_take(1)  # the one slot is busy for longer than any request may take
    waited = await asyncio.wait_for(chat(gw, ADMIN), 3)  # not 30 s: the total deadline bounds the wait
    assert waited.status == 429 and "limit concurrency 1" in (await waited.json())["error"]["message"]
    assert ups["a"].calls == 0 and slots.queued == 0
    slots.release()
    assert (await chat(gw, ADMIN)).status == 200


async def test_embeddings_are_limited_like_chat(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server=keys(
        {"name": "app", "key": NORMAL, "limits": {"rpm": 1, "tpm": 100}})))
    answers = []
    for _ in range(2):
        response = await gw.post("/v1/embeddings", {"model": "chat", "input": "hello"}, headers=bearer(NORMAL))
        await response.read()
        answers.append(response)
    assert [r.status for r in answers] == [200, 429]
    # an embeddings request reserves only its input (no answer to come): 100 tokens were room enough
    assert int(answers[0].headers["x-ratelimit-remaining-tokens"]) > 80


# --- across reloads ----------------------------------------------------------------------------

async def test_counters_survive_a_reload_and_a_changed_limit_applies_at_once(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    config = json.loads(gateway_config(ups, aliases={"chat": {"targets": ["a"]}},
                                       server=keys({"name": "app", "key": NORMAL, "limits": {"rpm": 2}})))
    gw = await gateway(json.dumps(config))
    assert [(await chat(gw, NORMAL)).status for _ in range(3)] == [200, 200, 429]

    config["server"]["auth"]["keys"][1].update(name="renamed", limits={"rpm": 3})  # the same key, renamed
    gw.config_path.write_text(json.dumps(config))
    gw.runtime.install(load(str(gw.config_path), {}).graph)
    answers = [await chat(gw, NORMAL) for _ in range(2)]
    assert [r.status for r in answers] == [200, 429]  # 2 of the new 3 were already used
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    status = await admin_get(gw, "/admin/status")
    assert status["keys"]["renamed"]["limits"]["rpm"]["used"] == 3

    config["server"]["auth"]["keys"][1]["key"] = LOW  # another key under that name: counted afresh
    gw.config_path.write_text(json.dumps(config))
    gw.runtime.install(load(str(gw.config_path), {}).graph)
    assert (await chat(gw, LOW)).status == 200


async def test_a_raised_concurrency_lets_waiting_requests_in_at_once(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    config = json.loads(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server=keys(),
                                       models={"a": {"limits": {"concurrency": 1}, "queue": {"max_wait": "10s"}}}))
    gw = await gateway(json.dumps(config))
    ups["a"].queue(Ok("slow", delay=2.0), Ok("quick"))
    holder = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: ups["a"].calls == 1, 2)
    waiting = asyncio.create_task(chat(gw, ADMIN))
    assert await eventually(lambda: queued(gw, "a") == 1, 2)
    config["models"]["a"]["limits"]["concurrency"] = 2
    gw.config_path.write_text(json.dumps(config))
    gw.runtime.install(load(str(gw.config_path), {}).graph)
    assert (await asyncio.wait_for(waiting, 1.5)).status == 200  # before the slow one ended
    assert not holder.done()
    await asyncio.wait_for(holder, 3)


# --- a burst -----------------------------------------------------------------------------------

async def test_a_burst_of_1000_requests_from_50_clients_admits_exactly_the_rpm(gateway):
    gw = await gateway(f"""
        version: 1
        server:
          auth: {{keys: [{{name: app, key: {NORMAL}, limits: {{rpm: 300}}}}]}}
        providers: {{demo: {{type: mock}}}}
        models: {{echo: {{provider: demo, model: echo}}}}
    """)
    statuses: list[int] = []
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

    async def client(requests: int) -> None:
        for _ in range(requests):
            async with gw.session.post(gw.url + "/v1/chat/completions", json=body, headers=bearer(NORMAL)) as r:
                await r.read()
                statuses.append(r.status)

    await asyncio.wait_for(asyncio.gather(*(client(20) for _ in range(50))), 60)
    assert len(statuses) == 1000
    assert statuses.count(200) == 300 and statuses.count(429) == 700


async def test_a_responses_client_over_its_limit_gets_an_openai_429(gateway):
    gw = await gateway(f"""
        version: 1
        server:
          auth: {{keys: [{{name: app, key: {NORMAL}, limits: {{rpm: 1}}}}]}}
        providers: {{demo: {{type: mock}}}}
        models: {{echo: {{provider: demo, model: echo}}}}
    """)
    first = await gw.post("/v1/responses", {"model": "echo", "input": "hi"}, headers=bearer(NORMAL))
    second = await gw.post("/v1/responses", {"model": "echo", "input": "hi"}, headers=bearer(NORMAL))
    assert (first.status, second.status) == (200, 429)
    assert (await second.json())["error"]["code"] == "rate_limit_exceeded"
    assert second.headers["x-ratelimit-remaining-requests"] == "0" and "Retry-After" in second.headers
