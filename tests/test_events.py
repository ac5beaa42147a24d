"""The event bus (daemon/observe/events.py) and GET /admin/events on the real app."""

from __future__ import annotations

import asyncio
from datetime import datetime

import orjson

from gatewayd.daemon.observe.events import EventBus
from tests.fakes import Ok, Status

SECRET = "sk-events-secret-9999"
READ_TIMEOUT = 5.0


# -- the bus ------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_with_kind_and_time():
    bus = EventBus()
    assert bus.publish("fallback", alias="chat") is None  # nobody listens: nothing is built
    with bus.subscribe() as first, bus.subscribe() as second:
        bus.publish("fallback", alias="chat", **{"from": "a"}, error="server", status=500)
        for subscription in (first, second):
            event = await asyncio.wait_for(subscription.next(), 1)
            assert event["kind"] == "fallback"
            assert datetime.fromisoformat(event["at"]).tzinfo is not None
            assert {k: event[k] for k in ("alias", "from", "error", "status")} == {
                "alias": "chat", "from": "a", "error": "server", "status": 500}
    assert bus.subscribers == 0


async def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many():
    bus = EventBus(maxsize=3)
    with bus.subscribe() as slow:
        for number in range(5):
            bus.publish("reload", version=str(number))  # never blocks, never raises
        dropped = await asyncio.wait_for(slow.next(), 1)
        assert (dropped["kind"], dropped["count"]) == ("dropped", 2)
        got = [(await asyncio.wait_for(slow.next(), 1))["version"] for _ in range(3)]
        assert got == ["2", "3", "4"]
        assert slow.dropped_total == 2


async def test_publishing_to_a_full_queue_does_not_block():
    bus = EventBus()
    with bus.subscribe() as subscription:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for number in range(3000):
            bus.publish("reload", version=str(number))
        assert loop.time() - started < 2
        assert (await subscription.next())["count"] == 2000
        assert (await subscription.next())["version"] == "2000"


async def test_close_ends_every_stream_even_a_full_one():
    bus = EventBus(maxsize=2)
    with bus.subscribe() as subscription:
        for _ in range(5):
            bus.publish("reload", version="v")
        bus.close()
        seen = []
        while (event := await asyncio.wait_for(subscription.next(), 1)) is not None:
            seen.append(event["kind"])
        assert seen[0] == "dropped" and seen[1:] == ["reload"]
    assert bus.publish("reload", version="v") is None
    with bus.subscribe() as late:
        assert await asyncio.wait_for(late.next(), 1) is None


async def test_fields_are_redacted_and_made_json_ready():
    bus = EventBus(redact=lambda text: text.replace(SECRET, "[redacted]"))
    with bus.subscribe() as subscription:
        bus.publish("cooldown_start", deployment="a", last_error=f"401: bad key {SECRET}",
                    deployments=("a", f"x{SECRET}"), extra={"nested": SECRET}, when=datetime(2026, 1, 1))
        event = await subscription.next()
    assert SECRET not in orjson.dumps(event).decode()
    assert event["last_error"] == "401: bad key [redacted]"
    assert event["deployments"] == ["a", "x[redacted]"]
    assert event["when"] == "2026-01-01 00:00:00"


async def test_publish_from_another_thread_is_handed_to_the_loop():
    bus = EventBus()
    with bus.subscribe() as subscription:
        await asyncio.to_thread(bus.publish, "reload", version="t")
        assert (await asyncio.wait_for(subscription.next(), 1))["version"] == "t"


# -- GET /admin/events --------------------------------------------------------


async def read_event(response) -> tuple[str, dict] | None:
    """The next SSE event (`event:` + `data:`), skipping ping comments; None at the end."""
    kind, data = None, None
    while True:
        line = await asyncio.wait_for(response.content.readline(), READ_TIMEOUT)
        if not line:
            return None
        text = line.decode().rstrip("\r\n")
        if text.startswith(":"):
            continue
        if text.startswith("event: "):
            kind = text[7:]
        elif text.startswith("data: "):
            data = orjson.loads(text[6:])
        elif text == "" and kind is not None:
            return kind, data


async def test_events_stream_fallbacks_and_cooldowns_in_order(gateway, fake_openai):
    bad, good = await fake_openai("bad"), await fake_openai("good")
    bad.default = Status(500, message=f"exploded; key {SECRET}")
    gw = await gateway(f"""
        version: 1
        providers:
          bad: {{type: openai, base_url: "{bad.base_url}", api_key: {SECRET}}}
          good: {{type: openai, base_url: "{good.base_url}"}}
        defaults:
          retry: {{attempts: 1}}
          cooldown: {{failures: 2, initial: 300ms}}
        models:
          flaky: {{provider: bad, model: flaky-upstream}}
          steady: {{provider: good, model: steady-upstream}}
        aliases:
          chat: {{targets: [flaky], fallbacks: [steady]}}
    """)
    async with gw.session.get(gw.url + "/admin/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for _ in range(2):
            async with await gw.chat("chat") as answer:
                assert answer.headers["x-gatewayd-deployment"] == "steady"
        events = [await read_event(stream) for _ in range(3)]
        assert [kind for kind, _ in events] == ["fallback", "cooldown_start", "fallback"]
        for kind, data in events:
            assert data["kind"] == kind
            datetime.fromisoformat(data["at"])
        fallback = events[0][1]
        assert (fallback["alias"], fallback["from"], fallback["error"], fallback["status"]) == (
            "chat", "flaky", "server", 500)
        cooldown = events[1][1]
        assert (cooldown["deployment"], cooldown["deployments"], cooldown["failure"]) == (
            "flaky", ["flaky"], "server")
        assert cooldown["last_error"].startswith("server 500")
        until = datetime.fromisoformat(cooldown["until"])
        assert 0 < (until - datetime.fromisoformat(cooldown["at"])).total_seconds() <= 0.5

        bad.default = Ok("recovered")
        await asyncio.sleep(0.4)  # past the cooldown: the next request probes flaky
        async with await gw.chat("chat") as answer:
            assert answer.headers["x-gatewayd-deployment"] == "flaky"
        kind, ended = await read_event(stream)
        assert (kind, ended["deployment"]) == ("cooldown_end", "flaky")

        gw.runtime.begin_stopping()  # shutdown ends the stream cleanly
        assert await read_event(stream) is None
        raw = orjson.dumps([events, ended]).decode()
    assert SECRET not in raw


async def test_reload_events_reach_the_stream_as_published(gateway):
    gw = await gateway("""
        version: 1
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
    """)
    async with gw.session.get(gw.url + "/admin/events") as stream:
        gw.runtime.events.publish("reload", result="rejected", version="abc", trigger="signal",
                                  error="gateway.yaml:3:5: unknown key")
        kind, data = await read_event(stream)
        assert kind == "reload"
        assert {k: data[k] for k in ("result", "version", "trigger", "error")} == {
            "result": "rejected", "version": "abc", "trigger": "signal", "error": "gateway.yaml:3:5: unknown key"}
