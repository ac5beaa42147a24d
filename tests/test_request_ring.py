"""The request ring, `GET /admin/requests` and `GET /admin/requests/{id}`, through the real daemon."""

from __future__ import annotations

import json

import anthropic
import openai

from tests.compiling import compiled, in_tmp  # noqa: F401 (in_tmp: autouse)
from tests.daemon_proc import Daemon, free_port, rename_save
from tests.fakes import Ok, Status, fakes, gateway_config

ADMIN, APP = "sk-admin-7f3e9d21c0", "sk-app-52b8e4a6d1"
CANARY = "CANARY-9c1f7e2b"


def ring_config(ups: dict, port: int, **server) -> str:
    document = json.loads(gateway_config(
        ups, aliases={"chat": {"targets": ["a", "b"]}, "cached": {"targets": ["b"], "cache": "exact"}},
        models={"b": {"pricing": {"input_per_mtok": 1, "output_per_mtok": 2}}}))
    document["server"] = {"listen": f"127.0.0.1:{port}", "shutdown_grace": "2s", "auth": {"keys": [
        {"name": "ops", "key": ADMIN, "role": "admin"},
        {"name": "billing-app", "key": APP, "limits": {"rpm": 1000}}]}, **server}
    document["cache"] = {"ttl": "1m"}
    return json.dumps(document)


async def start(tmp_path, ups: dict, **server) -> Daemon:
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(ring_config(ups, port, **server))
    return Daemon(path, port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"})


def sdk(gw: Daemon) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=APP, max_retries=0, timeout=20)


async def entry(gw: Daemon, request_id: str) -> dict:
    async with gw.session.get(f"{gw.url}/admin/requests/{request_id}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def latest(gw: Daemon, limit: int) -> list[dict]:
    async with gw.session.get(f"{gw.url}/admin/requests", params={"limit": str(limit)}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["requests"]


async def test_a_failed_first_attempt_shows_both_attempts_and_why_the_next_was_tried(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    ups["a"].queue(Status(503, "overloaded", headers={"Retry-After": "7"}))
    async with await start(tmp_path, ups) as gw, sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "from b"
        seen = await entry(gw, raw.headers["x-request-id"])

    assert seen["id"] == raw.headers["x-request-id"]
    assert seen["model"] == "chat" and seen["format"] == "openai" and seen["key"] == "billing-app"
    assert seen["config"] == raw.headers["x-gatewayd-config"]
    assert seen["status"] == 200 and seen["outcome"] == "answered" and seen["deployment"] == "b"
    first, second = seen["attempts"]
    assert first["deployment"] == "a" and first["status"] == 503 and first["failure"] == "overloaded"
    assert first["retry_after"] == 7
    assert first["then"].startswith("next candidate") and "retry.attempts (1)" in first["then"]
    assert second["deployment"] == "b" and second["status"] == 200 and second["failure"] is None
    assert 0 <= first["start_ms"] <= first["start_ms"] + first["duration_ms"] <= second["start_ms"]
    assert seen["tokens"] == {"prompt": 9, "completion": 3}
    assert seen["cost"] == (9 * 1 + 3 * 2) / 1e6
    assert seen["limits"] == {"key": "admitted"}
    assert seen["cache"] is None


async def test_a_retry_and_a_cache_hit_are_told(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    ups["a"].queue(Status(500), Ok("from a"))
    port = free_port()
    path = tmp_path / "gateway.yaml"
    document = json.loads(ring_config(ups, port))
    document["models"]["a"]["retry"] = {"attempts": 2}
    path.write_text(json.dumps(document))
    async with Daemon(path, port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}) as gw, \
            sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        retried = await entry(gw, raw.headers["x-request-id"])
        for _ in range(2):
            await client.chat.completions.create(model="cached", messages=[{"role": "user", "content": "same"}])
        hit, miss = (await latest(gw, 2))
    first, second = retried["attempts"]
    assert first["deployment"] == second["deployment"] == "a"
    assert first["failure"] == "server" and first["then"].startswith("retried after")
    assert second["status"] == 200
    assert (miss["cache"], hit["cache"]) == ("miss", "hit")
    assert hit["attempts"] == [] and hit["deployment"] == "b" and hit["tokens"] is None


async def test_a_candidate_passed_over_is_told_without_the_upstream_s_words(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    ups["a"].queue(Status(500, f"trouble with '{CANARY}'"))
    port = free_port()
    path = tmp_path / "gateway.yaml"
    document = json.loads(ring_config(ups, port))
    document["defaults"]["cooldown"] = {"failures": 1, "initial": "1m"}
    path.write_text(json.dumps(document))
    async with Daemon(path, port, tmp_path, headers={"Authorization": f"Bearer {ADMIN}"}) as gw, \
            sdk(gw) as client:
        for _ in range(2):  # the first puts `a` in cooldown, the second passes it over
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])
        seen = await entry(gw, raw.headers["x-request-id"])
    assert [a["deployment"] for a in seen["attempts"]] == ["b"]
    assert list(seen["skipped"]) == ["a"]
    assert seen["skipped"]["a"].startswith("cooling down until ")
    assert CANARY not in json.dumps(seen)


async def test_refusals_are_told_by_their_code(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    ups["a"].default = Status(401, "bad key")
    ups["b"].default = Status(500, "down too")
    async with await start(tmp_path, ups) as gw:
        headers = {"Authorization": f"Bearer {APP}"}
        async with gw.session.post(gw.url + "/v1/chat/completions", headers=headers,
                                   json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 503
            failed = await entry(gw, r.headers["x-request-id"])
        async with gw.session.post(gw.url + "/v1/chat/completions", headers=headers,
                                   json={"model": "nope", "messages": []}) as r:
            assert r.status == 404
            unknown = await entry(gw, r.headers["x-request-id"])
    assert failed["outcome"] == "no_deployment_available" and failed["status"] == 503
    assert [(a["deployment"], a["failure"]) for a in failed["attempts"]] == [("a", "auth"), ("b", "server")]
    assert failed["attempts"][0]["then"] == "next candidate: auth failures are never retried"
    assert unknown["outcome"] == "model_not_found" and unknown["model"] == "nope" and unknown["attempts"] == []


async def test_the_ring_is_bounded_and_answers_newest_first(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    async with await start(tmp_path, ups, recent_requests=3) as gw, sdk(gw) as client:
        ids = []
        for _ in range(5):
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])
            ids.append(raw.headers["x-request-id"])
        async with gw.session.get(f"{gw.url}/admin/requests") as response:
            listing = await response.json()
        assert listing["kept"] == 3
        assert [e["id"] for e in listing["requests"]] == ids[:1:-1]
        assert [e["id"] for e in await latest(gw, 1)] == ids[-1:]
        async with gw.session.get(f"{gw.url}/admin/requests/{ids[0]}") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "request_not_found"
        for bad in ("0", "abc", "1001", "-1"):
            async with gw.session.get(f"{gw.url}/admin/requests", params={"limit": bad}) as response:
                assert response.status == 400
                assert (await response.json())["error"]["code"] == "invalid_limit"


async def test_a_ring_of_none_keeps_nothing_until_a_reload_gives_it_room(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    async with await start(tmp_path, ups, recent_requests=0) as gw, sdk(gw) as client:
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert await latest(gw, 10) == []
        rename_save(tmp_path / "gateway.yaml", ring_config(ups, gw.port, recent_requests=2))
        assert (await gw.reload())["ok"]
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        assert [e["id"] for e in await latest(gw, 10)] == [raw.headers["x-request-id"]]
        rename_save(tmp_path / "gateway.yaml", ring_config(ups, gw.port, recent_requests=0))
        assert (await gw.reload())["ok"]
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert await latest(gw, 10) == []


async def test_a_client_id_sent_twice_finds_its_latest_request(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    async with await start(tmp_path, ups) as gw:
        headers = {"Authorization": f"Bearer {APP}", "x-request-id": "retry-of-order-77"}
        for model, status in (("chat", 200), ("nope", 404)):
            async with gw.session.post(gw.url + "/v1/chat/completions", headers=headers,
                                       json={"model": model, "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == status
        seen = await entry(gw, "retry-of-order-77")
        assert len(await latest(gw, 10)) == 2
    assert seen["model"] == "nope" and seen["outcome"] == "model_not_found"


async def test_only_an_admin_key_reads_the_ring(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    async with await start(tmp_path, ups) as gw:
        for headers, status in (({"Authorization": f"Bearer {APP}"}, 403), ({"Authorization": ""}, 401)):
            for path in ("/admin/requests", "/admin/requests/anything"):
                async with gw.session.get(gw.url + path, headers=headers) as response:
                    assert response.status == status, path


async def test_no_body_no_answer_and_no_key_ever_reaches_the_ring(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    # an upstream that quotes the prompt back in its error, and one that answers with it
    ups["a"].default = Status(400, f"Invalid 'messages[0].content': '{CANARY} prompt' is not allowed",
                              type="invalid_request_error")
    ups["b"].default = Ok(f"{CANARY} answer")
    async with await start(tmp_path, ups) as gw, sdk(gw) as client:
        try:
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"{CANARY} p"}])
        except openai.BadRequestError as refused:
            assert CANARY in str(refused)  # the client is told; the ring is not
        answer = await client.chat.completions.create(
            model="b", messages=[{"role": "user", "content": f"{CANARY} prompt"}], user=CANARY,
            metadata={"tag": CANARY}, store=False)
        assert CANARY in answer.choices[0].message.content
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=APP, max_retries=0, timeout=20) as claude:
            message = await claude.messages.create(model="b", max_tokens=50, system=CANARY,
                                                   messages=[{"role": "user", "content": CANARY}])
            assert message.content
        headers = {"Authorization": f"Bearer {APP}", "Content-Type": "application/json"}
        broken = f'{{"model": "b", "messages": [{{"role": "user", "content": "{CANARY}"}}], nul}}'
        async with gw.session.post(gw.url + "/v1/chat/completions", data=broken, headers=headers) as response:
            assert response.status == 400
        async with gw.session.get(f"{gw.url}/admin/requests", params={"limit": "50"}) as response:
            listing = await response.text()
        entries = json.loads(listing)["requests"]
        singles = [await entry(gw, e["id"]) for e in entries]
    assert len(entries) == 4
    assert {e["outcome"] for e in entries} == {"upstream_client_error", "answered", "invalid_json"}
    text = listing + json.dumps(singles)
    for secret in (CANARY, APP, ADMIN, "sk-a-secret", "sk-b-secret"):
        assert secret not in text


def test_the_ring_keeps_a_thousand_by_default():
    graph = compiled("version: 1\nserver: {}\n")
    assert graph.server.recent_requests == 1000
    assert compiled("version: 1\nserver: {recent_requests: 0}\n").server.recent_requests == 0
