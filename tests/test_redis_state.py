"""State shared through a real redis-server (`state.backend: redis`): the Lua scripts' arithmetic,
and two real gatewayd processes on one Redis sharing cooldowns, a key's limit, the cache, and
serving on when Redis goes away and comes back. Redis runs on a free loopback port and is
stopped by its PID (tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from gatewayd.daemon.core.graph import RedisSettings, Secret
from gatewayd.daemon.state.counters import RequestWindow, Window
from gatewayd.daemon.state.redis_counters import Booked, Over, RedisCounters
from gatewayd.daemon.state.redis_link import RedisLink
from tests.compiling import compiled, errors, in_tmp  # noqa: F401 (in_tmp: the autouse fixture)
from tests.daemon_proc import Daemon, free_port, wait_until
from tests.fakes import Ok, Status, gateway_config
from tests.redis_server import RedisServer

APP, ADMIN = "sk-app-key-000000001", "sk-admin-key-0000002"
PASSWORD = "redis-pass-7f3a9c2e1b"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def settings(url: str, prefix: str = "t:") -> RedisSettings:
    return RedisSettings(url=Secret(url), address=url, url_password=None, password_file=None, prefix=prefix,
                         timeout=1.0)


@pytest.fixture
async def link(redis_server, tmp_path):
    link = RedisLink(settings(redis_server.url), str(tmp_path))
    assert await link.probe()
    yield link
    await link.close()


# --- the config ----------------------------------------------------------------------------------

BASE = """
version: 1
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-up-secret-1}
models:
  m: {provider: up, model: x}
"""


def test_state_defaults_to_local_and_redis_is_shown_without_its_password():
    assert compiled(BASE).state.backend == "local"
    graph = compiled(BASE + """
state:
  backend: redis
  redis: {url: "rediss://:p%40ss-word-9@cache.internal:6380/3", timeout: 50ms}
""")
    redis = graph.state.redis
    assert redis.address == "rediss://cache.internal:6380/3" and "p@ss" not in repr(graph.state)
    assert (redis.prefix, redis.timeout) == ("gatewayd:", 0.05)
    assert "p@ss-word-9" in graph.redactions  # a line that quotes it is scrubbed


def test_bad_state_settings_are_located_errors():
    both = errors(BASE + """
state:
  backend: redis
  redis: {url: "redis://:secret-pass@127.0.0.1:6379/0", password_file: redis.pass}
""")
    assert len(both) == 1 and both[0].startswith("gateway.yaml:10:57:") and "password_file" in both[0]
    assert "secret-pass" not in both[0]
    scheme = errors(BASE + """
state:
  backend: redis
  redis: {url: "http://127.0.0.1:6379"}
""")
    assert len(scheme) == 1 and scheme[0].startswith("gateway.yaml:10:")
    backend = errors(BASE + "state: {backend: memcached}\n")
    assert len(backend) == 1 and backend[0].startswith("gateway.yaml:7:")


# --- the scripts' arithmetic ---------------------------------------------------------------------

async def test_a_shared_request_window_decides_as_the_local_one_for_any_arrivals(link):
    """rpm: the script admits exactly what the local window admits, at every arrival (so no 60 s
    window ever holds more than the limit), and says the same wait when it refuses."""
    counters = RedisCounters(link)
    rng = random.Random(7)
    local, now, limit = RequestWindow(), 1_000_000.0, 7
    decisions = 0
    for _ in range(300):
        now += rng.choice((0.0, 0.001, 0.5, 3.0, 9.0, 30.0))
        booked = await counters.book(("key", "rpm"), now, 0, rpm=limit)
        fits = local.fits(limit, 1, now)
        assert isinstance(booked, Booked) is fits
        if fits:
            wait = 0.0
            local.add(1, now)
            assert booked.requests == local.total
            decisions += 1
        else:
            wait = local.wait(limit, 1, now)
            assert booked.limit == "rpm" and booked.wait == pytest.approx(wait, abs=0.002)
    assert 0 < decisions < 300


async def test_a_shared_token_window_settles_and_expires_as_the_local_one(link):
    """tpm: reservations, their settlement to what was used, and their leaving the window."""
    counters = RedisCounters(link)
    rng = random.Random(11)
    local, now, limit = Window(), 2_000_000.0, 1000
    held = []  # (shared booking id, local entry)
    for _ in range(200):
        now += rng.choice((0.0, 0.2, 2.0, 15.0))
        tokens = rng.randint(1, 400)
        booked = await counters.book(("key", "tpm"), now, tokens, tpm=limit)
        fits = local.fits(limit, tokens, now)
        assert isinstance(booked, Booked) is fits, (now, tokens, local.total)
        if fits:
            held.append((booked.id, local.add(tokens, now)))
            assert booked.tokens == local.total
        else:
            assert booked.wait == pytest.approx(local.wait(limit, tokens, now), abs=0.002)
        if held and rng.random() < 0.5:  # an answer's usage replaces a reservation
            booking, entry = held.pop(rng.randrange(len(held)))
            used = rng.randint(0, 300)
            counters.settle(("key", "tpm"), booking, used, False)
            local.settle(entry, used)
            await asyncio.sleep(0)  # the settlement is sent in the background
            await wait_until(lambda: _no_tasks(link), timeout=5, what="the settlement")


async def _no_tasks(link) -> bool:
    return not link._tasks


async def test_concurrency_and_budget_are_booked_and_released_atomically(link):
    counters = RedisCounters(link)
    owner = ("key", "both")
    first = await counters.book(owner, 100.0, 0, concurrency=2, hold=30, budget=1.0, period_start=0.0)
    second = await counters.book(owner, 100.0, 0, concurrency=2, hold=30, budget=1.0, period_start=0.0)
    third = await counters.book(owner, 100.0, 0, concurrency=2, hold=30, budget=1.0, period_start=0.0)
    assert isinstance(first, Booked) and isinstance(second, Booked)
    assert third == Over("concurrency", 1.0)
    ends = time.time() + 3600  # the spend's expiry is on Redis's clock
    counters.settle(owner, first.id, None, True, cost=0.6, period_start=0.0, period_end=ends)
    counters.settle(owner, second.id, None, True, cost=0.5, period_start=0.0, period_end=ends)
    await wait_until(lambda: _no_tasks(link), timeout=5, what="the settlements")
    over = await counters.book(owner, 100.0, 0, concurrency=2, hold=30, budget=1.0, period_start=0.0)
    assert over.limit == "budget" and over.spent == pytest.approx(1.1)
    # a claim its instance never released lapses after `hold`
    lapsing = await counters.book(("key", "lapse"), 100.0, 0, concurrency=1, hold=5)
    assert isinstance(lapsing, Booked)
    assert isinstance(await counters.book(("key", "lapse"), 104.0, 0, concurrency=1, hold=5), Over)
    assert isinstance(await counters.book(("key", "lapse"), 106.0, 0, concurrency=1, hold=5), Booked)


async def test_every_key_written_expires(link, redis_server):
    counters = RedisCounters(link)
    now = time.time()
    booked = await counters.book(("key", "ttl"), now, 10, rpm=5, tpm=100, concurrency=3, hold=30, budget=5.0,
                                 period_start=now - 10)
    counters.settle(("key", "ttl"), booked.id, 4, True, cost=0.25, period_start=now - 10, period_end=now + 100)
    await wait_until(lambda: _no_tasks(link), timeout=5, what="the settlement")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in client.scan_iter(match="t:*")]
        assert len(keys) >= 4
        for key in keys:
            assert await client.pttl(key) > 0, key  # -1 would be a key that never expires
    finally:
        await client.aclose()


# --- two gateways on one Redis -------------------------------------------------------------------

def config(port: int, ups: dict, redis_url: str, *, aliases: dict | None = None, keys: list | None = None,
           state: dict | None = None, cache: bool = False, cooldown: str = "60s") -> str:
    server = {"listen": f"127.0.0.1:{port}", "shutdown_grace": "2s",
              "auth": {"keys": [{"name": "ops", "key": ADMIN, "role": "admin"}, *(keys or [])]}}
    document = json.loads(gateway_config(ups, aliases=aliases or {"chat": {"targets": ["a"]}}, server=server,
                                         defaults={"cooldown": {"failures": 1, "initial": cooldown}}))
    document["state"] = state or {"backend": "redis", "redis": {"url": redis_url, "prefix": "gw:",
                                                                 "timeout": "2s"}}
    if cache:
        document["cache"] = {"ttl": "10m"}
    return json.dumps(document, indent=2)


async def two(tmp_path: Path, ups: dict, redis_url: str, **options) -> tuple[Daemon, Daemon]:
    pair = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        port = free_port()
        (folder / "gateway.yaml").write_text(config(port, ups, redis_url, **options))
        pair.append(Daemon(folder / "gateway.yaml", port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}))
    return pair[0], pair[1]


async def post(gw: Daemon, key: str = APP, content: str = "hi", **extra) -> tuple[int, dict, dict]:
    body = {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}
    async with gw.session.post(gw.url + "/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, await response.json(), dict(response.headers)


async def shared(gw: Daemon) -> bool:
    return (await gw.status())["state"]["status"] == "shared"


async def test_a_cooldown_seen_by_one_gateway_is_honoured_by_the_other(tmp_path, fake_openai, redis_server):
    a = await fake_openai("a")
    one, two_ = await two(tmp_path, {"a": a}, redis_server.url, keys=[{"name": "app", "key": APP}])
    async with one, two_:
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state")
        a.queue(Status(500))
        status, _, _ = await post(one)
        assert status == 503
        assert (await one.status())["deployments"]["a"]["state"] == "cooldown"

        async def cooling() -> bool:
            return (await two_.status())["deployments"]["a"]["state"] == "cooldown"

        await wait_until(cooling, timeout=5, what="the other gateway to learn of the cooldown")
        calls = a.calls
        status, body, headers = await post(two_)
        assert status == 503 and "a: cooling down" in body["error"]["message"]
        seen = [(await gw.status())["deployments"]["a"]["cooldown_until"] for gw in (one, two_)]
        assert seen[0] is not None and seen[0] == seen[1]  # the same wall-clock deadline
        assert int(headers["Retry-After"]) > 30
        assert a.calls == calls  # the other gateway never sent it to the cooling upstream


async def test_only_one_gateway_probes_a_deployment_after_its_cooldown(tmp_path, fake_openai, redis_server):
    a = await fake_openai("a")
    one, two_ = await two(tmp_path, {"a": a}, redis_server.url, keys=[{"name": "app", "key": APP}], cooldown="1s")
    async with one, two_:
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state")
        a.queue(Status(500), Ok("probed", delay=1.5))
        assert (await post(one))[0] == 503

        async def half_open() -> bool:
            states = [(await gw.status())["deployments"]["a"]["state"] for gw in (one, two_)]
            return states == ["half_open", "half_open"]

        await wait_until(half_open, timeout=10, what="the cooldown to end on both")
        probe = asyncio.ensure_future(post(one))
        await wait_until(lambda: _at_least(a.requests, 2), timeout=5, what="the probe to reach the upstream")
        status, body, _ = await post(two_)
        assert status == 503 and "another instance is probing" in body["error"]["message"]
        assert a.calls == 2  # the failure and the probe: the other gateway held back
        assert (await probe)[0] == 200

        async def ok_on_both() -> bool:
            return [(await gw.status())["deployments"]["a"]["state"] for gw in (one, two_)] == ["ok", "ok"]

        await wait_until(ok_on_both, timeout=5, what="the probe's success to reach the other gateway")
        assert (await post(two_))[0] == 200


async def test_a_key_limit_is_exact_across_gateways(tmp_path, fake_openai, redis_server):
    a = await fake_openai("a")
    keys = [{"name": "app", "key": APP, "limits": {"rpm": 7}}]
    one, two_ = await two(tmp_path, {"a": a}, redis_server.url, keys=keys)
    async with one, two_:
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state")
        answers = await asyncio.gather(*(post(one if i % 2 else two_) for i in range(20)))
        statuses = [status for status, _, _ in answers]
        assert statuses.count(200) == 7 and statuses.count(429) == 13
        assert a.calls == 7
        refused = next(body for status, body, _ in answers if status == 429)
        assert refused["error"]["code"] == "rate_limit_exceeded"
        remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for s, _, h in answers if s == 200)
        assert remaining == [0, 1, 2, 3, 4, 5, 6]  # each admission saw the others' from both gateways


async def test_the_cache_is_shared_between_gateways(tmp_path, fake_openai, redis_server):
    a = await fake_openai("a")
    one, two_ = await two(tmp_path, {"a": a}, redis_server.url, keys=[{"name": "app", "key": APP}],
                          aliases={"chat": {"targets": ["a"], "cache": "exact"}}, cache=True)
    async with one, two_:
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state")
        status, first, headers = await post(one, content="what is shared?")
        assert status == 200 and headers["x-gatewayd-cache"] == "miss"

        client = aioredis.Redis.from_url(redis_server.url)
        try:  # the answer is stored in Redis in the background, after the first answer went out

            async def stored() -> bool:
                return bool([key async for key in client.scan_iter(match="gw:*:answer")])

            await wait_until(stored, timeout=5, what="the answer to reach Redis")
        finally:
            await client.aclose()
        status, again, headers = await post(two_, content="what is shared?")
        assert status == 200 and headers["x-gatewayd-cache"] == "hit" and again == first
        assert a.calls == 1


async def test_redis_gone_mid_load_fails_nothing_and_shared_state_resumes(tmp_path, fake_openai, redis_server):
    a = await fake_openai("a")
    keys = [{"name": "app", "key": APP, "limits": {"rpm": 100000, "concurrency": 50}}]
    one, two_ = await two(tmp_path, {"a": a}, redis_server.url, keys=keys,
                          aliases={"chat": {"targets": ["a"], "cache": "exact"}}, cache=True)
    async with one, two_:
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state")
        statuses: list[int] = []

        async def load(gw: Daemon, rounds: int) -> None:
            for index in range(rounds):
                status, _, _ = await post(gw, content=f"q{index % 7}")
                statuses.append(status)

        loading = asyncio.gather(load(one, 150), load(two_, 150))
        await wait_until(lambda: _at_least(statuses, 40), timeout=20, what="the load to start")
        redis_server.kill()
        await loading
        assert len(statuses) == 300 and set(statuses) == {200}
        for gw in (one, two_):
            state = (await gw.status())["state"]
            assert state["status"] == "degraded" and state["backend"] == "redis"
            metrics = await (await gw.session.get(gw.url + "/metrics")).text()
            assert "gatewayd_state_degraded 1.0" in metrics
            assert gw.log().count("is unavailable") == 1  # logged once, not per request
        redis_server.start()  # the same port: Redis is back
        for gw in (one, two_):
            await wait_until(lambda gw=gw: shared(gw), timeout=10, what="shared state to resume")
            status, _, _ = await post(gw)
            assert status == 200


async def _at_least(items: list, count: int) -> bool:
    return len(items) >= count


async def test_a_password_file_works_and_no_password_is_shown(tmp_path, fake_openai):
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        a = await fake_openai("a")
        folder = tmp_path / "conf"
        folder.mkdir()
        (folder / "redis.pass").write_text(PASSWORD + "\n")
        port = free_port()
        (folder / "gateway.yaml").write_text(config(port, {"a": a}, server.url, keys=[{"name": "app", "key": APP}],
                                                    state={"backend": "redis", "redis": {
                                                        "url": server.url, "password_file": "redis.pass"}}))
        async with Daemon(folder / "gateway.yaml", port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}) as gw:
            await wait_until(lambda: shared(gw), timeout=10, what="shared state with the password")
            status, _, _ = await post(gw)
            assert status == 200
            async with gw.session.get(gw.url + "/admin/status") as response:
                text = await response.text()
            metrics = await (await gw.session.get(gw.url + "/metrics")).text()
            assert PASSWORD not in text and PASSWORD not in metrics and PASSWORD not in gw.log()
    finally:
        server.stop()


async def test_an_unreadable_password_file_leaves_the_gateway_serving_on_local_state(tmp_path, fake_openai,
                                                                                   redis_server):
    a = await fake_openai("a")
    folder = tmp_path / "conf"
    folder.mkdir()
    port = free_port()
    (folder / "gateway.yaml").write_text(config(port, {"a": a}, redis_server.url, keys=[{"name": "app", "key": APP}],
                                                state={"backend": "redis", "redis": {
                                                    "url": redis_server.url, "password_file": "missing.pass"}}))
    async with Daemon(folder / "gateway.yaml", port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}) as gw:
        assert (await post(gw))[0] == 200
        state = (await gw.status())["state"]
        assert state["status"] == "degraded" and "password_file" in state["last_error"]
        assert "password_file" in gw.log()


async def test_a_wrong_password_leaves_the_gateway_serving_degraded_without_showing_it(tmp_path, fake_openai):
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        a = await fake_openai("a")
        folder = tmp_path / "conf"
        folder.mkdir()
        port = free_port()
        wrong = "not-the-password-42"
        url = f"redis://:{wrong}@127.0.0.1:{server.port}/0"
        (folder / "gateway.yaml").write_text(config(port, {"a": a}, url, keys=[{"name": "app", "key": APP}],
                                                    state={"backend": "redis", "redis": {"url": url}}))
        async with Daemon(folder / "gateway.yaml", port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}) as gw:
            status, _, _ = await post(gw)
            assert status == 200
            state = (await gw.status())["state"]
            assert state["status"] == "degraded" and state["redis"] == f"redis://127.0.0.1:{server.port}/0"
            async with gw.session.get(gw.url + "/admin/status") as response:
                text = await response.text()
            assert wrong not in text and wrong not in gw.log()
            assert "is unavailable" in gw.log()  # why it serves on local state, once
            metrics = await (await gw.session.get(gw.url + "/metrics")).text()
            assert "gatewayd_state_degraded 1.0" in metrics
    finally:
        server.stop()


# --- several workers without Redis ---------------------------------------------------------------

async def test_local_state_divides_limits_among_workers(gateway, fake_openai, monkeypatch):
    a = await fake_openai("a")
    monkeypatch.setenv("GATEWAYD_WORKERS", "2")
    server = {"auth": {"keys": [{"name": "ops", "key": ADMIN, "role": "admin"},
                                {"name": "app", "key": APP, "limits": {"rpm": 5}}]}}
    gw = await gateway(gateway_config({"a": a}, aliases={"chat": {"targets": ["a"]}}, server=server))
    statuses = []
    for _ in range(4):
        response = await gw.chat(headers={"Authorization": f"Bearer {APP}"})
        statuses.append(response.status)
        await response.read()
    assert statuses == [200, 200, 429, 429]  # this worker's share of 5: 2
    state = (await gw.status(headers={"Authorization": f"Bearer {ADMIN}"}))["state"]
    assert state == {"backend": "local", "status": "local", "limits_divided_by": 2}


async def test_with_redis_gone_each_gateway_applies_its_share_of_a_limit(gateway, fake_openai, redis_server):
    """Degraded: a key's limit divided by the instances last seen alive (here this one and another)."""
    a = await fake_openai("a")
    server = {"auth": {"keys": [{"name": "ops", "key": ADMIN, "role": "admin"},
                                {"name": "app", "key": APP, "limits": {"rpm": 6}}]}}
    document = json.loads(gateway_config({"a": a}, aliases={"chat": {"targets": ["a"]}}, server=server))
    document["state"] = {"backend": "redis", "redis": {"url": redis_server.url, "prefix": "share:", "timeout": "2s"}}
    gw = await gateway(json.dumps(document))
    client = aioredis.Redis.from_url(redis_server.url)
    try:  # another gateway, as its probe registers it
        await client.zadd("share:instances", {"other-gateway": int(time.time() * 1000) + 60_000})
    finally:
        await client.aclose()

    async def two_seen() -> bool:
        return (await gw.status(headers={"Authorization": f"Bearer {ADMIN}"}))["state"]["instances"] == 2

    await wait_until(two_seen, timeout=10, what="the other instance to be counted")
    redis_server.kill()
    statuses = []
    for _ in range(5):
        response = await gw.chat(headers={"Authorization": f"Bearer {APP}"})
        statuses.append(response.status)
        await response.read()
    assert statuses == [200, 200, 200, 429, 429]  # 6 shared by 2: 3 here
    state = (await gw.status(headers={"Authorization": f"Bearer {ADMIN}"}))["state"]
    assert state["status"] == "degraded" and state["instances"] == 2 and state["fallbacks"] >= 5
