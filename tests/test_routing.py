"""Routing a request, end to end: the real app on 127.0.0.1 in front of
fake OpenAI upstreams, driven over HTTP with aiohttp and the official `openai` SDK.

Every wait is bounded; timing is asserted only as generous lower bounds where the
rule is about waiting (backoff, Retry-After), otherwise through call counts.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import openai
import pytest

from gatewayd.daemon.config.load import load
from tests.fakes import Hang, Ok, Raw, Status, completion, deployment_status, eventually, fakes, gateway_config

CHAT_PATH = "/v1/chat/completions"


def body(model: str = "chat", content: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def call(gw, model: str = "chat", *, headers: dict | None = None, **extra):
    """POST a chat completion; returns (status, headers, parsed JSON body)."""
    async with await gw.post(CHAT_PATH, body(model, **extra), headers=headers) as response:
        return response.status, response.headers, await response.json(content_type=None)


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- 1. authentication and allow lists -------------------------------------------------

async def test_app_keys_authenticate_and_allow_lists_restrict(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}, server={"auth": {"keys": [
        {"name": "app", "key": "${APP_KEY}", "allow": ["chat"]},
        {"name": "ops", "key": "k-ops-0123456789"},
    ]}}), env={"APP_KEY": "k-app-0123456789"})

    status, _, answer = await call(gw)
    assert status == 401 and answer["error"]["code"] == "missing_api_key"
    status, _, answer = await call(gw, headers={"Authorization": "Bearer k-wrong"})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert ups["a"].calls == 0

    status, headers, _ = await call(gw, headers={"Authorization": "Bearer k-app-0123456789"})
    assert status == 200 and headers["x-gatewayd-deployment"] == "a"
    status, _, _ = await call(gw, headers={"x-api-key": "k-app-0123456789"})
    assert status == 200
    status, _, answer = await call(gw, "a", headers={"x-api-key": "k-app-0123456789"})
    assert status == 403 and answer["error"]["code"] == "model_not_allowed"
    status, headers, _ = await call(gw, "a", headers={"Authorization": "Bearer k-ops-0123456789"})
    assert status == 200 and headers["x-gatewayd-deployment"] == "a"
    assert ups["a"].calls == 3

    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])


# -- 2. looking the model up -------------------------------------------------------------

async def test_unknown_model_is_404_model_not_found(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    async with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="chta", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert ups["a"].calls == 0


async def test_a_model_name_routes_directly(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}}))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="b", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-gatewayd-deployment"] == "b"
    assert raw.headers["x-gatewayd-attempts"] == "1"
    assert raw.headers["x-gatewayd-config"] == gw.runtime.holder.current.graph.version
    assert ups["a"].calls == 0
    assert ups["b"].requests[0]["json"]["model"] == "up-b"


# -- 3. one graph snapshot serves the whole request --------------------------------------

async def test_snapshot_current_at_arrival_serves_the_whole_request(gateway, fake_openai):
    ups = await fakes(fake_openai, "x", "y", "z")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["x", "y"]}}))
    old_version = gw.runtime.holder.current.graph.version
    ups["x"].queue(Status(500, delay=0.4))  # x fails slowly; the reload lands meanwhile

    in_flight = asyncio.create_task(call(gw))
    assert await eventually(lambda: ups["x"].calls == 1)
    gw.config_path.write_text(gateway_config(ups, aliases={"chat": {"targets": ["z"]}}))
    old = gw.runtime.holder.current
    snapshot = gw.runtime.install(load(str(gw.config_path), {}).graph)
    assert gw.runtime.holder.current is snapshot and snapshot.graph.version != old_version
    assert all(snapshot.adapters[name] is old.adapters[name] for name in ups)  # same providers, same pools

    status, headers, _ = await asyncio.wait_for(in_flight, 5)
    assert status == 200
    assert headers["x-gatewayd-deployment"] == "y"  # the old plan's fallback, not the new z
    assert headers["x-gatewayd-config"] == old_version
    assert ups["z"].calls == 0

    status, headers, _ = await call(gw)
    assert headers["x-gatewayd-deployment"] == "z"
    assert headers["x-gatewayd-config"] == snapshot.graph.version


# -- 4. windows, disabled providers -------------------------------------------------------

async def test_windows_skip_models_outside_them_in_their_time_zone(gateway, fake_openai):
    ups = await fakes(fake_openai, "closed", "excepted", "open")
    zone = "Asia/Kolkata"  # UTC+05:30: the window strings only match when read in this zone
    now = datetime.now(ZoneInfo(zone))

    def span(start_hours: float, end_hours: float) -> str:
        return f"{now + timedelta(hours=start_hours):%H:%M}-{now + timedelta(hours=end_hours):%H:%M}"

    gw = await gateway(gateway_config(ups, models={
        "closed": {"windows": {"only": [span(2, 3)], "timezone": zone}},
        "excepted": {"windows": {"only": [span(-1, 1)], "except": [span(-0.5, 0.5)], "timezone": zone}},
        "open": {"windows": {"only": [span(-1, 1)], "timezone": zone}},
    }, aliases={"chat": {"targets": ["closed", "excepted", "open"]}}))
    status, headers, _ = await call(gw)
    assert status == 200
    assert headers["x-gatewayd-deployment"] == "open"
    assert headers["x-gatewayd-attempts"] == "1"
    assert ups["closed"].calls == ups["excepted"].calls == 0
    deployments = (await gw.status())["deployments"]
    assert deployments["closed"]["state"] == deployments["excepted"]["state"] == "outside_window"
    assert deployments["open"]["state"] == "ok"

    status, _, answer = await call(gw, "closed")
    assert status == 503 and answer["error"]["code"] == "no_deployment_available"
    assert "closed: outside window" in answer["error"]["message"]


async def test_disabled_provider_is_skipped(gateway, fake_openai):
    ups = await fakes(fake_openai, "off", "on")
    gw = await gateway(gateway_config(ups, providers={"off": {"api_key": "${EMPTY:-}"}},
                                      aliases={"chat": {"targets": ["off", "on"]}}), env={})
    status, headers, _ = await call(gw)
    assert status == 200 and headers["x-gatewayd-deployment"] == "on"
    assert headers["x-gatewayd-attempts"] == "1"
    assert ups["off"].calls == 0
    assert (await deployment_status(gw, "off"))["state"] == "disabled"

    status, _, answer = await call(gw, "off")
    assert status == 503 and answer["error"]["code"] == "no_deployment_available"
    assert "off: disabled" in answer["error"]["message"]
    assert ups["off"].calls == 0


# -- 5. retries, backoff, Retry-After, fallbacks ----------------------------------------

async def test_500_falls_back_to_the_next_candidate_after_its_retries(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2}},
                                      aliases={"chat": {"targets": ["a"], "fallbacks": ["b"]}}))
    ups["a"].queue(Status(500), Status(500))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-gatewayd-deployment"] == "b"
    assert raw.headers["x-gatewayd-attempts"] == "3"  # a twice, then b
    assert (ups["a"].calls, ups["b"].calls) == (2, 1)
    a = await deployment_status(gw, "a")
    assert a["failures"] == 1 and a["last_error"].startswith("server 500")


async def test_retry_on_500_then_success_on_the_same_deployment_sync_sdk(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500))

    def ask():  # the sync client blocks: run it off the loop the gateway shares
        with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=5) as client:
            return client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])

    raw = await asyncio.to_thread(ask)
    assert raw.parse().choices[0].message.content == "from a"
    assert raw.headers["x-gatewayd-deployment"] == "a"
    assert raw.headers["x-gatewayd-attempts"] == "2"
    assert (ups["a"].calls, ups["b"].calls) == (2, 0)
    assert (await deployment_status(gw, "a"))["failures"] == 0


async def test_backoff_is_waited_between_tries(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, defaults={"retry": {
        "attempts": 3, "backoff": {"initial": "100ms", "multiplier": 2, "max": "1s", "jitter": "none"}}},
        aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Status(502), Status(500))
    status, headers, _ = await call(gw)
    assert status == 200 and headers["x-gatewayd-attempts"] == "3"
    first, second, third = (r["at"] for r in ups["a"].requests)
    assert second - first >= 0.09  # initial
    assert third - second >= 0.18  # initial * multiplier


async def test_a_backoff_beyond_the_total_deadline_moves_on(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={
        "timeouts": {"total": "3s"},
        "retry": {"attempts": 3, "backoff": {"initial": "20s", "max": "20s", "jitter": "none"}}},
        aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500))
    status, headers, _ = await asyncio.wait_for(call(gw), 2.5)
    assert status == 200 and headers["x-gatewayd-deployment"] == "b"
    assert (ups["a"].calls, ups["b"].calls) == (1, 1)


async def test_only_failures_listed_in_retry_when_are_retried(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 3, "when": [503, "timeout"]}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500), Status(503), Status(503), Status(503))
    status, headers, _ = await call(gw)  # 500 is not listed: straight to b
    assert headers["x-gatewayd-deployment"] == "b" and ups["a"].calls == 1
    status, headers, _ = await call(gw)  # 503 is: all three tries at a, then b
    assert status == 200
    assert ups["a"].calls == 1 + 3 and headers["x-gatewayd-deployment"] == "b"
    assert headers["x-gatewayd-attempts"] == "4"


async def test_a_models_own_retry_policy_overrides_the_defaults(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, models={"a": {"retry": {"attempts": 3}}},
                                      aliases={"chat": {"targets": ["a", "b"]}, "rev": {"targets": ["b", "a"]}}))
    ups["a"].queue(Status(500), Status(500))
    ups["b"].queue(Status(500))
    status, headers, _ = await call(gw)  # a: three tries of its own
    assert headers["x-gatewayd-deployment"] == "a" and headers["x-gatewayd-attempts"] == "3"
    status, headers, _ = await call(gw, "rev")  # b: the defaults' single try
    assert headers["x-gatewayd-deployment"] == "a" and headers["x-gatewayd-attempts"] == "2"
    assert (ups["a"].calls, ups["b"].calls) == (4, 1)


async def test_429_retry_after_is_honoured_on_the_same_deployment(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2, "retry_after_max": "5s"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(429, "slow down", {"Retry-After": "1"}, type="rate_limit_error"))
    status, headers, _ = await asyncio.wait_for(call(gw), 4)
    assert status == 200
    assert headers["x-gatewayd-deployment"] == "a" and headers["x-gatewayd-attempts"] == "2"
    assert (ups["a"].calls, ups["b"].calls) == (2, 0)
    first, second = (r["at"] for r in ups["a"].requests)
    assert second - first >= 0.9


async def test_429_retry_after_beyond_retry_after_max_moves_on_at_once(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 3, "retry_after_max": "2s"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(429, "slow down", {"Retry-After": "30"}, type="rate_limit_error"))
    status, headers, _ = await asyncio.wait_for(call(gw), 1.5)
    assert status == 200 and headers["x-gatewayd-deployment"] == "b"
    assert headers["x-gatewayd-attempts"] == "2"
    assert (ups["a"].calls, ups["b"].calls) == (1, 1)


async def test_retry_after_as_an_http_date(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2, "retry_after_max": "10s"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    soon = email.utils.formatdate(time.time() + 1.5, usegmt=True)  # within the max: wait and retry a
    late = email.utils.formatdate(time.time() + 120, usegmt=True)  # beyond it: b at once
    ups["a"].queue(Status(429, headers={"Retry-After": soon}), Ok("a after the date"),
                   Status(429, headers={"Retry-After": late}))
    status, headers, answer = await asyncio.wait_for(call(gw), 4)
    assert headers["x-gatewayd-deployment"] == "a" and answer["choices"][0]["message"]["content"] == "a after the date"
    first, second = (r["at"] for r in ups["a"].requests)
    assert second - first >= 0.4  # the date has one-second resolution: at least 0.5 s remained
    status, headers, _ = await asyncio.wait_for(call(gw), 1.5)
    assert headers["x-gatewayd-deployment"] == "b"
    assert (ups["a"].calls, ups["b"].calls) == (3, 1)


@pytest.mark.parametrize("upstream_status", [401, 403, 404])
async def test_auth_and_not_found_fall_back_without_retry_and_count(gateway, fake_openai, upstream_status):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 3}, "cooldown": {"failures": 2}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].default = Status(upstream_status, "misconfigured", type="invalid_request_error")
    status, headers, _ = await call(gw)
    assert status == 200 and headers["x-gatewayd-deployment"] == "b"
    assert headers["x-gatewayd-attempts"] == "2"
    assert ups["a"].calls == 1  # no retry
    a = await deployment_status(gw, "a")
    assert a["failures"] == 1 and str(upstream_status) in a["last_error"]

    await call(gw)  # the second failure puts it in cooldown
    a = await deployment_status(gw, "a")
    assert a["state"] == "cooldown" and a["cooldown_until"] is not None
    status, headers, _ = await call(gw)
    assert headers["x-gatewayd-deployment"] == "b" and headers["x-gatewayd-attempts"] == "1"
    assert ups["a"].calls == 2


# -- 6. client errors go back as they came -----------------------------------------------

@pytest.mark.parametrize("upstream_status", [400, 413, 422])
async def test_client_errors_pass_through_with_one_attempt(gateway, fake_openai, upstream_status):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 3, "when": [400, 413, 422, "5xx"]},
                                                     "cooldown": {"failures": 1}},
                                      aliases={"chat": {"targets": ["a"], "fallbacks": ["b"]}}))
    ups["a"].queue(Status(upstream_status, "This model's maximum context length is 8 tokens",
                          type="invalid_request_error", code="context_length_exceeded", param="messages"))
    async with await gw.post(CHAT_PATH, body()) as response:
        raw = await response.read()
        assert response.status == upstream_status
        assert response.headers["x-gatewayd-deployment"] == "a"
        assert response.headers["x-gatewayd-attempts"] == "1"
    assert raw == json.dumps({"error": {
        "message": "This model's maximum context length is 8 tokens", "type": "invalid_request_error",
        "param": "messages", "code": "context_length_exceeded"}}).encode()
    assert (ups["a"].calls, ups["b"].calls) == (1, 0)
    a = await deployment_status(gw, "a")
    assert (a["state"], a["failures"]) == ("ok", 0)  # no cooldown, not even with failures: 1


async def test_client_error_reaches_the_sdk_as_bad_request(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(400, "Invalid 'temperature'", type="invalid_request_error",
                          code="invalid_value", param="temperature"))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], temperature=9)
    assert caught.value.code == "invalid_value" and caught.value.param == "temperature"
    assert ups["a"].requests[0]["json"]["temperature"] == 9
    assert ups["b"].calls == 0


# -- 7. timeouts ------------------------------------------------------------------------

async def test_answers_that_are_not_an_openai_object_fall_back_as_protocol_failures(gateway, fake_openai):
    """A 200 whose body is not JSON, not UTF-8, not an object, or an in-band error is the
    deployment's failure (`protocol`); the next candidate answers, its bytes and usage kept."""
    names = ("html", "latin1", "array", "inband", "good")
    ups = await fakes(fake_openai, *names)
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": list(names)}}))
    ups["html"].queue(Raw(b"<html>502 Bad Gateway</html>", content_type="text/html"))
    ups["latin1"].queue(Raw(b'{"id": "x", "choices": [{"message": {"content": "caf\xe9"}}]}'))
    ups["array"].queue(Raw(b'[{"usage": {"prompt_tokens": 1}}]'))
    ups["inband"].queue(Raw(b'{"error": {"message": "model overloaded", "type": "server_error"}}'))
    answer = completion("gpt-x", "fine")
    answer["usage"] = {"prompt_tokens": 7.0, "completion_tokens": 5}  # a float: the full reading's int()
    ups["good"].queue(Raw(json.dumps(answer).encode()))
    async with await gw.post(CHAT_PATH, body()) as response:
        assert response.status == 200
        assert await response.read() == json.dumps(answer).encode()  # relayed as it came
        assert response.headers["x-gatewayd-deployment"] == "good"
        assert response.headers["x-gatewayd-attempts"] == "5"
    errors = {name: (await deployment_status(gw, name))["last_error"] for name in names[:-1]}
    assert errors == {"html": "protocol: upstream answer is not JSON",
                      "latin1": "protocol: upstream answer is not JSON",
                      "array": "protocol: upstream answer is not a JSON object",
                      "inband": "protocol: model overloaded"}
    async with gw.session.get(gw.url + "/metrics") as metrics:
        text = await metrics.text()
    assert 'gatewayd_tokens_total{deployment="good",kind="prompt"} 7.0' in text
    assert 'gatewayd_tokens_total{deployment="good",kind="completion"} 5.0' in text


async def test_first_byte_timeout_fails_the_attempt_and_falls_back(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"first_byte": "300ms"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Hang(10))
    status, headers, _ = await asyncio.wait_for(call(gw), 3)
    assert status == 200 and headers["x-gatewayd-deployment"] == "b"
    assert headers["x-gatewayd-attempts"] == "2"
    assert (await deployment_status(gw, "a"))["last_error"].startswith("timeout")
    assert await eventually(lambda: ups["a"].disconnects, 2)  # the abandoned attempt was closed


async def test_first_byte_timeout_without_fallback_is_503_naming_the_timeout(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"first_byte": "300ms"}},
                                      aliases={"chat": {"targets": ["a"]}}))
    ups["a"].default = Hang(10)
    status, headers, answer = await asyncio.wait_for(call(gw), 3)
    assert status == 503
    assert answer["error"]["code"] == "no_deployment_available"
    assert "a: timeout" in answer["error"]["message"]
    assert headers["x-gatewayd-attempts"] == "1"


@pytest.mark.parametrize("candidates", [2, 3])
async def test_total_timeout_bounds_every_attempt_together(gateway, fake_openai, candidates):
    names = ["a", "b", "c"][:candidates]
    ups = await fakes(fake_openai, *names)
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"first_byte": "400ms", "total": "700ms"}},
                                      aliases={"chat": {"targets": names}}))
    for fake in ups.values():
        fake.default = Hang(10)
    started = time.monotonic()
    status, headers, answer = await asyncio.wait_for(call(gw), 3)
    assert time.monotonic() - started < 2.5
    assert status == 504
    assert answer["error"]["code"] == "timeout"
    assert headers["x-gatewayd-attempts"] == "2"
    assert ups["a"].calls == ups["b"].calls == 1
    if candidates == 3:
        assert ups["c"].calls == 0


# -- 9. cooldown, half-open probes ------------------------------------------------------

async def test_cooldown_skips_then_one_probe_closes_it(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"cooldown": {"failures": 2, "initial": "500ms"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500), Status(503))
    for _ in range(2):
        status, headers, _ = await call(gw)
        assert headers["x-gatewayd-deployment"] == "b"
    a = await deployment_status(gw, "a")
    assert a["state"] == "cooldown"
    until = parse_iso(a["cooldown_until"])
    now = datetime.now(timezone.utc)
    assert now - timedelta(seconds=2) <= until <= now + timedelta(seconds=2)

    status, headers, _ = await call(gw)  # skipped while cooling: no upstream call
    assert headers["x-gatewayd-deployment"] == "b" and headers["x-gatewayd-attempts"] == "1"
    assert ups["a"].calls == 2

    async def half_open() -> bool:
        return (await deployment_status(gw, "a"))["state"] == "half_open"

    deadline = time.monotonic() + 3
    while not await half_open():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    status, headers, _ = await call(gw)  # the probe
    assert headers["x-gatewayd-deployment"] == "a"
    assert ups["a"].calls == 3
    a = await deployment_status(gw, "a")
    assert (a["state"], a["failures"], a["cooldown_until"]) == ("ok", 0, None)


async def test_half_open_lets_one_probe_through_at_a_time(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"cooldown": {"failures": 1, "initial": "300ms"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500), Ok("slow probe", delay=0.5))
    await call(gw)
    assert (await deployment_status(gw, "a"))["state"] == "cooldown"
    await asyncio.sleep(0.4)
    probe = asyncio.create_task(call(gw))
    assert await eventually(lambda: ups["a"].calls == 2)
    status, headers, answer = await call(gw)  # the probe is in flight: this one goes to b
    assert headers["x-gatewayd-deployment"] == "b"
    assert (await deployment_status(gw, "a"))["state"] == "half_open"
    status, headers, answer = await asyncio.wait_for(probe, 3)
    assert answer["choices"][0]["message"]["content"] == "slow probe"
    assert ups["a"].calls == 2
    assert (await deployment_status(gw, "a"))["state"] == "ok"


async def test_failed_probe_reenters_a_longer_cooldown(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"cooldown": {
        "failures": 2, "initial": "300ms", "multiplier": 20, "max": "1m"}},
        aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].default = Status(500)
    await call(gw)
    await call(gw)
    assert (await deployment_status(gw, "a"))["state"] == "cooldown"
    await asyncio.sleep(0.4)
    status, headers, _ = await call(gw)  # the probe fails: one failure is enough to re-enter
    assert headers["x-gatewayd-deployment"] == "b" and headers["x-gatewayd-attempts"] == "2"
    assert ups["a"].calls == 3
    a = await deployment_status(gw, "a")
    assert a["state"] == "cooldown"
    assert parse_iso(a["cooldown_until"]) > datetime.now(timezone.utc) + timedelta(seconds=3)  # 6 s now
    await call(gw)
    assert ups["a"].calls == 3


async def test_success_resets_the_failure_count(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"cooldown": {"failures": 2}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500), Ok(), Status(500), Ok())
    for expected_failures in (1, 0, 1, 0):
        await call(gw)
        a = await deployment_status(gw, "a")
        assert (a["state"], a["failures"]) == ("ok", expected_failures)


async def test_a_429_retry_after_longer_than_the_cooldown_extends_it(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={
        "retry": {"retry_after_max": "1s"}, "cooldown": {"failures": 1, "initial": "1s"}},
        aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(429, headers={"Retry-After": "60"}, type="rate_limit_error"))
    status, headers, _ = await call(gw)
    assert headers["x-gatewayd-deployment"] == "b"
    a = await deployment_status(gw, "a")
    assert a["state"] == "cooldown"
    assert parse_iso(a["cooldown_until"]) > datetime.now(timezone.utc) + timedelta(seconds=50)


# -- 10. nothing usable -----------------------------------------------------------------

async def test_nothing_usable_is_503_naming_every_candidate_and_why(gateway, fake_openai):
    ups = await fakes(fake_openai, "cool", "closed", "off")
    now = datetime.now(timezone.utc)
    gw = await gateway(gateway_config(ups, defaults={"cooldown": {"failures": 1, "initial": "30s"}},
                                      providers={"off": {"api_key": "${EMPTY:-}"}},
                                      models={"closed": {"windows": {"only": [
                                          f"{now + timedelta(hours=3):%H:%M}-{now + timedelta(hours=4):%H:%M}"]}}},
                                      aliases={"chat": {"targets": ["cool", "closed", "off"]}}), env={})
    ups["cool"].queue(Status(500, "kaput"))

    status, headers, answer = await call(gw)  # cool fails now and starts cooling
    assert status == 503
    assert answer["error"]["code"] == "no_deployment_available"
    message = answer["error"]["message"]
    assert "cool: server 500: kaput" in message
    assert "closed: outside window" in message
    assert "off: disabled" in message
    assert headers["x-gatewayd-attempts"] == "1"
    assert 25 <= int(headers["Retry-After"]) <= 30  # the cooldown end is known

    status, headers, answer = await call(gw)  # now cool is skipped for its cooldown
    assert status == 503
    message = answer["error"]["message"]
    assert "cool: cooling down until" in message and "kaput" in message
    assert "closed: outside window" in message and "off: disabled" in message
    assert headers["x-gatewayd-attempts"] == "0"
    assert 25 <= int(headers["Retry-After"]) <= 30
    assert ups["cool"].calls == 1 and ups["closed"].calls == 0 and ups["off"].calls == 0

    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and caught.value.code == "no_deployment_available"


async def test_every_candidate_rate_limited_is_429(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2, "retry_after_max": "1s"},
                                                     "cooldown": {"failures": 1, "initial": "1s"}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    for fake in ups.values():
        fake.default = Status(429, "Rate limit reached", {"Retry-After": "20"}, type="rate_limit_error")
    status, headers, answer = await call(gw)
    assert status == 429
    assert answer["error"]["code"] == "no_deployment_available"
    assert "a: rate_limit 429" in answer["error"]["message"] and "b: rate_limit 429" in answer["error"]["message"]
    assert 15 <= int(headers["Retry-After"]) <= 20
    assert (ups["a"].calls, ups["b"].calls) == (1, 1)

    status, headers, answer = await call(gw)  # both cooling after their 429s: still 429
    assert status == 429 and headers["x-gatewayd-attempts"] == "0"
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])


# -- strategies -------------------------------------------------------------------------

async def test_round_robin_alternates_exactly(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"], "strategy": "round-robin"}}))
    answered = []
    for _ in range(200):
        _, headers, _ = await call(gw)
        answered.append(headers["x-gatewayd-deployment"])
    assert Counter(answered) == {"a": 100, "b": 100}
    assert all(x != y for x, y in zip(answered, answered[1:], strict=False))
    assert (ups["a"].calls, ups["b"].calls) == (100, 100)


async def test_weighted_3_to_1_follows_the_weights(gateway, fake_openai):
    ups = await fakes(fake_openai, "heavy", "light")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"strategy": "weighted", "targets": [
        {"model": "heavy", "weight": 3}, {"model": "light", "weight": 1}]}}))
    answered = Counter()
    for _ in range(200):
        _, headers, _ = await call(gw)
        answered[headers["x-gatewayd-deployment"]] += 1
    assert answered["heavy"] + answered["light"] == 200
    assert 0.6 <= answered["heavy"] / 200 <= 0.9


async def test_weighted_keeps_the_others_as_fallbacks(gateway, fake_openai):
    ups = await fakes(fake_openai, "heavy", "light")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"strategy": "weighted", "targets": [
        {"model": "heavy", "weight": 3}, {"model": "light", "weight": 1}]}}))
    ups["light"].default = Status(500)
    for _ in range(20):
        status, headers, _ = await call(gw)
        assert status == 200 and headers["x-gatewayd-deployment"] == "heavy"


async def test_least_busy_prefers_the_idle_deployment(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"], "strategy": "least-busy"}}))
    ups["a"].queue(Ok("slow", delay=0.6))
    slow = asyncio.create_task(call(gw))
    assert await eventually(lambda: ups["a"].calls == 1)
    for _ in range(3):
        _, headers, _ = await call(gw)
        assert headers["x-gatewayd-deployment"] == "b"
    _, headers, _ = await asyncio.wait_for(slow, 3)
    assert headers["x-gatewayd-deployment"] == "a"
    assert (ups["a"].calls, ups["b"].calls) == (1, 3)


async def test_lowest_latency_prefers_the_faster_deployment(gateway, fake_openai):
    ups = await fakes(fake_openai, "slow", "fast")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["slow", "fast"],
                                                             "strategy": "lowest-latency"}}))
    ups["slow"].default = Ok("slow", delay=0.2)
    answered = [(await call(gw))[1]["x-gatewayd-deployment"] for _ in range(6)]
    assert answered[:2] == ["slow", "fast"]  # unmeasured ones are tried first, in order
    assert answered[2:] == ["fast"] * 4
    assert ups["slow"].calls == 1


# -- embeddings -------------------------------------------------------------------------

async def test_embeddings_route_with_the_body_passed_through(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"embed": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(500))
    async with sdk(gw) as client:
        raw = await client.embeddings.with_raw_response.create(
            model="embed", input=["one", "two"], encoding_format="float", dimensions=3, user="u-1")
    result = raw.parse()
    assert [item.embedding for item in result.data] == [[0.1, 0.2, 0.3]] * 2
    assert raw.headers["x-gatewayd-deployment"] == "b" and raw.headers["x-gatewayd-attempts"] == "2"
    sent = ups["b"].requests[0]
    assert sent["path"] == "/v1/embeddings"
    assert sent["json"] == {"model": "up-b", "input": ["one", "two"], "encoding_format": "float",
                            "dimensions": 3, "user": "u-1"}
    assert sent["headers"]["Authorization"] == "Bearer sk-b-secret"
