"""Streams through the gateway: SSE relayed byte for
byte, retries and fallbacks only before the first byte, failures after it ending
the stream with an error event and no [DONE], and client disconnects reaching
the upstream at once. The real app runs on 127.0.0.1 in front of fake upstreams.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai

from tests.fakes import Hang, Ok, Status, Stream, deployment_status, eventually, fakes, gateway_config

CHAT_PATH = "/v1/chat/completions"
DONE = b"data: [DONE]\n\n"
MESSAGES = [{"role": "user", "content": "hi"}]


def body(model: str = "chat", **extra) -> dict:
    return {"model": model, "messages": MESSAGES, "stream": True, **extra}


async def stream_call(gw, model: str = "chat", **extra):
    """POST a streaming chat completion; returns (status, headers, raw body)."""
    async with await gw.post(CHAT_PATH, body(model, **extra)) as response:
        return response.status, response.headers, await response.read()


def events(raw: bytes) -> list[bytes]:
    """The data of each SSE event in `raw`."""
    return [block[len(b"data: "):] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]


def text_of(raw: bytes) -> str:
    pieces = []
    for data in events(raw):
        if data != b"[DONE]":
            payload = json.loads(data)
            if "choices" in payload:
                pieces.append(payload["choices"][0]["delta"].get("content") or "")
    return "".join(pieces)


def assert_ends_with_error_event(raw: bytes) -> dict:
    """A failed stream: its last event is `data: {"error": {...}}` and [DONE] never comes."""
    assert DONE not in raw
    assert raw.endswith(b"\n\n")
    last = json.loads(events(raw)[-1])
    assert set(last) == {"error"}
    assert {"message", "type", "code"} <= set(last["error"])
    return last["error"]


def inflight(gw, name: str) -> int:
    """Requests at deployment `name` right now (what least-busy orders by)."""
    health = gw.runtime.health.peek(gw.runtime.holder.current.graph.deployments[name])
    return health.inflight if health else 0


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


# -- relaying -------------------------------------------------------------------------

async def test_sse_chunks_are_relayed_byte_exact_ending_with_done(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("Hel", "lo", ", ", "wörld", " \u2728 \\n \"quoted\""), gap=0.01))
    status, headers, raw = await stream_call(gw, stream_options={"include_usage": True}, temperature=0.2)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["x-gatewayd-deployment"] == "a" and headers["x-gatewayd-attempts"] == "1"
    assert raw == bytes(ups["a"].sent[0])
    assert raw.endswith(b"}\n\n" + DONE)
    assert text_of(raw) == "Hello, wörld \u2728 \\n \"quoted\""
    sent = ups["a"].requests[0]["json"]
    assert sent == {"model": "up-a", "messages": MESSAGES, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0.2}
    assert (await deployment_status(gw, "a"))["failures"] == 0


async def test_async_sdk_streaming_gets_the_full_text(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("The ", "quick ", "brown ", "fox")))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The quick brown fox"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert ups["a"].calls == 1


async def test_sync_sdk_streaming_gets_the_full_text(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("jumps ", "over ", "the ", "lazy dog"), gap=0.01))

    def read_stream() -> tuple[str, str]:  # the sync client blocks: run it off the shared loop
        with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=5) as client:
            raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            return text, raw.headers["x-gatewayd-deployment"]

    assert await asyncio.to_thread(read_stream) == ("jumps over the lazy dog", "a")


# -- before the first byte: retries and fallbacks ---------------------------------------

async def test_stream_falls_back_before_the_first_byte(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"], "fallbacks": ["b"]}}))
    ups["a"].queue(Status(500))
    ups["b"].queue(Stream(pieces=("from ", "b")))
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "from b"
    assert raw.headers["x-gatewayd-deployment"] == "b" and raw.headers["x-gatewayd-attempts"] == "2"
    assert (ups["a"].calls, ups["b"].calls) == (1, 1)


async def test_stream_retries_the_same_deployment_before_the_first_byte(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, defaults={"retry": {"attempts": 2}},
                                      aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(503), Stream(pieces=("second ", "try")))
    status, headers, raw = await stream_call(gw)
    assert status == 200 and text_of(raw) == "second try" and raw.endswith(DONE)
    assert headers["x-gatewayd-deployment"] == "a" and headers["x-gatewayd-attempts"] == "2"
    assert ups["b"].calls == 0


async def test_stream_first_byte_timeout_and_leading_in_band_error_fall_back(gateway, fake_openai):
    ups = await fakes(fake_openai, "slow", "broken", "good")
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"first_byte": "300ms"}},
                                      aliases={"chat": {"targets": ["slow", "broken", "good"]}}))
    ups["slow"].queue(Stream(first_delay=5))  # headers at once, then silence past first_byte
    ups["broken"].queue(Stream(role=False, error_after=0))  # an in-band error as the first event
    status, headers, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert status == 200 and raw.endswith(DONE)
    assert headers["x-gatewayd-deployment"] == "good" and headers["x-gatewayd-attempts"] == "3"
    assert (await deployment_status(gw, "slow"))["last_error"].startswith("timeout")
    assert (await deployment_status(gw, "broken"))["last_error"].startswith("protocol")
    assert await eventually(lambda: ups["slow"].disconnects)


async def test_stream_client_error_passes_through_as_json(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}}))
    ups["a"].queue(Status(400, "'messages' must not be empty", type="invalid_request_error",
                          code="invalid_value", param="messages"))
    status, headers, raw = await stream_call(gw)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {"error": {"message": "'messages' must not be empty", "type": "invalid_request_error",
                                         "param": "messages", "code": "invalid_value"}}
    assert (ups["a"].calls, ups["b"].calls) == (1, 0)


# -- after the first byte: an error event, never a clean-looking truncation ---------------

async def test_stream_cut_midway_ends_with_an_error_event_and_counts(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"], "fallbacks": ["b"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two ", "three"), cut_after=2))
    status, headers, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert status == 200 and headers["x-gatewayd-deployment"] == "a"
    error = assert_ends_with_error_event(raw)
    assert "upstream" in error["message"]
    assert text_of(raw) == "one two "  # what came before the cut, then the error: no fallback now
    assert ups["b"].calls == 0
    a = await deployment_status(gw, "a")
    assert a["failures"] == 1 and a["last_error"]


async def test_sdk_stream_cut_midway_raises_instead_of_truncating(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two ", "three"), cut_after=1))
    received = []
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        try:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        except openai.APIError as exc:
            failure = exc
        else:
            failure = None
    assert failure is not None and "upstream" in failure.message
    assert "".join(received) == "one "


async def test_malformed_chunk_ends_with_an_error_event(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two"), malformed_after=1))
    status, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert status == 200
    error = assert_ends_with_error_event(raw)
    assert "malformed" in error["message"]
    assert b"{not json" not in raw
    assert text_of(raw) == "one "
    a = await deployment_status(gw, "a")
    assert a["failures"] == 1 and a["last_error"].startswith("protocol")


async def test_in_band_error_ends_with_an_error_event(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two"), error_after=1))
    status, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    error = assert_ends_with_error_event(raw)
    assert "model overloaded" in error["message"]
    assert text_of(raw) == "one "
    assert (await deployment_status(gw, "a"))["failures"] == 1


async def test_in_band_error_quoting_the_provider_key_is_scrubbed(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two"), error_after=1,
                          error_message="Incorrect API key provided: sk-a-secret"))
    _, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    error = assert_ends_with_error_event(raw)
    assert "Incorrect API key provided" in error["message"]
    assert b"sk-a-secret" not in raw
    assert "sk-a-secret" not in json.dumps(await gw.status())


async def test_stream_ending_without_done_ends_with_an_error_event(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("all ", "there"), done=False))
    _, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert_ends_with_error_event(raw)
    assert text_of(raw) == "all there"
    assert (await deployment_status(gw, "a"))["failures"] == 1


async def test_idle_timeout_mid_stream_ends_with_an_error_event(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"idle": "300ms"}},
                                      aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=("one ", "two"), pause_after=1, pause=5))
    started = time.monotonic()
    _, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert time.monotonic() - started < 2.5
    error = assert_ends_with_error_event(raw)
    assert error["code"] == "timeout"
    assert text_of(raw) == "one "
    assert (await deployment_status(gw, "a"))["last_error"].startswith("timeout")
    assert await eventually(lambda: ups["a"].disconnects)  # the silent upstream was hung up on


async def test_total_timeout_ends_a_long_stream_with_an_error_event(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, defaults={"timeouts": {"idle": "2s", "total": "800ms"}},
                                      aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=tuple(f"{i} " for i in range(40)), gap=0.1))
    started = time.monotonic()
    _, _, raw = await asyncio.wait_for(stream_call(gw), 3)
    assert time.monotonic() - started < 2.5
    assert_ends_with_error_event(raw)
    assert 0 < len(text_of(raw).split()) < 40


# -- clients that go away --------------------------------------------------------------

async def test_client_disconnect_mid_stream_closes_the_upstream(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Stream(pieces=tuple(f"{i} " for i in range(50)), gap=0.1))
    response = await gw.post(CHAT_PATH, body())
    assert response.status == 200
    for _ in range(3):
        line = await asyncio.wait_for(response.content.readline(), 2)
        assert line.startswith(b"data: {")
        await asyncio.wait_for(response.content.readline(), 2)
    left = time.monotonic()
    response.close()
    assert await eventually(lambda: ups["a"].disconnects, 2)
    assert ups["a"].disconnects[0] - left < 2
    assert await eventually(lambda: inflight(gw, "a") == 0)
    a = await deployment_status(gw, "a")
    assert (a["state"], a["failures"]) == ("ok", 0)  # the client left: not the deployment's fault


async def test_client_disconnect_before_the_first_byte_cancels_the_upstream(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Hang(30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as impatient:
        try:
            async with impatient.post(gw.url + CHAT_PATH, json=body()) as response:
                await response.read()
        except TimeoutError:
            pass
        else:
            raise AssertionError("the gateway answered although the upstream hangs")
    left = time.monotonic()
    assert await eventually(lambda: ups["a"].disconnects, 2)
    assert ups["a"].disconnects[0] - left < 2
    a = await deployment_status(gw, "a")
    assert (a["state"], a["failures"]) == ("ok", 0)
    assert inflight(gw, "a") == 0


async def test_client_disconnect_before_the_first_byte_non_streaming(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a"]}}))
    ups["a"].queue(Ok("too late", delay=30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as impatient:
        try:
            async with impatient.post(gw.url + CHAT_PATH, json={**body(), "stream": False}) as response:
                await response.read()
        except TimeoutError:
            pass
    assert await eventually(lambda: ups["a"].disconnects, 2)


# -- streams and strategies -------------------------------------------------------------

async def test_least_busy_counts_a_stream_in_flight_after_its_first_byte(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    gw = await gateway(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"], "strategy": "least-busy"}}))
    ups["a"].queue(Stream(pieces=tuple(f"{i} " for i in range(8)), gap=0.1))
    long_stream = asyncio.create_task(stream_call(gw))
    assert await eventually(lambda: ups["a"].sent and len(ups["a"].sent[0]) > 0)
    await asyncio.sleep(0.15)  # the gateway is relaying a's stream now
    for _ in range(3):
        status, headers, _ = await stream_call(gw)
        assert status == 200 and headers["x-gatewayd-deployment"] == "b"
    _, headers, raw = await asyncio.wait_for(long_stream, 3)
    assert headers["x-gatewayd-deployment"] == "a" and raw.endswith(DONE)
    assert await eventually(lambda: inflight(gw, "a") == 0)
