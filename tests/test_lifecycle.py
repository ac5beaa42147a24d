"""The real daemon process: sd_notify, ordered and bounded shutdown, a bad first config.

Each test runs `python -m gatewayd.daemon.cli run -c FILE` on a free port,
with $NOTIFY_SOCKET pointing at a datagram socket the test reads, and fake
upstreams served from the test's own event loop (so every wait here is async).
Every daemon is stopped by PID in the fixture's teardown: SIGTERM, then
SIGKILL after 10 s. Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.fakes import Ok, Status, Stream

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Daemon:
    process: subprocess.Popen
    port: int
    config: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def exit_code(self, timeout: float = STOP_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not exit within {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)
        return code

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    async def wait_healthy(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.log()}")
            try:
                async with session.get(self.url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"/healthz did not answer within {START_TIMEOUT}s:\n{self.log()}")


class NotifySocket:
    """A stand-in for systemd: the AF_UNIX datagram socket $NOTIFY_SOCKET names."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="gwn")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.watchdog: list[float] = []  # monotonic arrival times of WATCHDOG=1

    async def next(self, timeout: float = 10.0) -> str:
        """The next datagram other than WATCHDOG=1 (those are recorded in `watchdog`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), max(deadline - loop.time(), 0.01))
            text = data.decode()
            if text != "WATCHDOG=1":
                return text
            self.watchdog.append(time.monotonic())

    def pending(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def notify():
    receiver = NotifySocket()
    yield receiver
    receiver.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


@pytest.fixture
async def spawn(tmp_path, session):
    """Factory: `daemon = await spawn(config_body, env={...})` starts the real daemon and waits
    for /healthz (`wait=False`: return at once, e.g. for a config that must be refused)."""
    started: list[Daemon] = []

    async def start(body: str, env: dict | None = None, wait: bool = True) -> Daemon:
        port = free_port()
        config = tmp_path / f"gateway-{len(started)}.yaml"
        config.write_text(f"version: 1\nserver:\n  listen: 127.0.0.1:{port}\n" + textwrap.dedent(body))
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        environ["RUNTIME_DIRECTORY"] = str(tmp_path / "run")  # its runtime file, never the system's
        environ.update(env or {})
        with stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "gatewayd.daemon.cli", "run", "-c", str(config)],
                cwd=tmp_path, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        daemon = Daemon(process, port, config, stderr)
        started.append(daemon)
        if wait:
            await daemon.wait_healthy(session)
        return daemon

    yield start
    for daemon in started:
        process = daemon.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
        process.wait(timeout=STOP_TIMEOUT)


MOCK = """
providers:
  demo: {type: mock}
models:
  echo: {provider: demo, model: echo}
aliases:
  chat: {targets: [echo]}
"""


def upstream_config(base_url: str, grace: str) -> str:
    return f"""
  shutdown_grace: {grace}
providers:
  up: {{type: openai, base_url: "{base_url}"}}
models:
  m: {{provider: up, model: upstream-model}}
"""


def chat_body(stream: bool = False) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def refused(port: int, timeout: float = 3.0) -> bool:
    """True once a new connection to `port` is refused (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        writer.close()
        await asyncio.sleep(0.02)
    return False


async def read_sse(response: aiohttp.ClientResponse) -> list[bytes]:
    """Every `data:` payload of a stream, up to its end (bounded)."""
    payloads = []
    async with asyncio.timeout(15):
        async for line in response.content:
            if line.startswith(b"data: "):
                payloads.append(line[6:].rstrip(b"\r\n"))
    return payloads


async def test_notify_ready_reload_watchdog_and_stopping_in_order(spawn, notify, session):
    daemon = await spawn(MOCK, {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}, wait=False)
    ready = await notify.next(START_TIMEOUT)
    assert ready.startswith("READY=1\nSTATUS=serving config "), ready
    async with session.get(daemon.url + "/healthz") as response:  # ready means listening: no retry needed
        assert response.status == 200

    notify.pending()  # pings that came meanwhile
    notify.watchdog.clear()
    with pytest.raises(TimeoutError):  # WATCHDOG_USEC=400000: only pings, one every 200 ms
        await notify.next(timeout=1.0)
    assert 3 <= len(notify.watchdog) <= 7, notify.watchdog
    daemon.signal(signal.SIGHUP)
    reloading = await notify.next()
    fields = dict(field.split("=", 1) for field in reloading.split("\n"))
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"} and fields["RELOADING"] == "1"
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert abs(now_usec - int(fields["MONOTONIC_USEC"])) < 5_000_000
    after = await notify.next()
    assert after.startswith("READY=1\nSTATUS=reload accepted"), after


    daemon.signal(signal.SIGTERM)
    assert await notify.next() == "STOPPING=1"
    assert await daemon.exit_code() == 0


async def test_sigterm_drains_in_flight_requests_and_refuses_new_connections(
        spawn, notify, session, fake_openai):
    upstream = await fake_openai("slow")
    upstream.queue(Stream(pieces=("a", "b", "c", "d", "e", "f"), gap=0.2), Ok("slow answer", delay=1.5))
    daemon = await spawn(upstream_config(upstream.base_url, "10s"), {"NOTIFY_SOCKET": notify.path})
    assert (await notify.next()).startswith("READY=1")

    stream = await session.post(daemon.url + "/v1/chat/completions", json=chat_body(stream=True))
    assert stream.status == 200
    first = await asyncio.wait_for(stream.content.readline(), 5)
    assert first.startswith(b"data: ")
    slow = asyncio.create_task(session.post(daemon.url + "/v1/chat/completions", json=chat_body()))
    async with asyncio.timeout(5):
        while upstream.calls < 2:
            await asyncio.sleep(0.02)

    daemon.signal(signal.SIGTERM)
    assert await notify.next() == "STOPPING=1"
    assert await refused(daemon.port), "new connections were still accepted after SIGTERM"
    assert not slow.done(), "the slow request should still be running while connections are refused"

    async with await slow as answer:
        assert answer.status == 200
        assert (await answer.json())["choices"][0]["message"]["content"] == "slow answer"
    payloads = [first[6:].rstrip(b"\r\n")] + await read_sse(stream)
    stream.release()
    assert payloads[-1] == b"[DONE]"
    pieces = [orjson.loads(p)["choices"][0]["delta"].get("content") for p in payloads[:-1]]
    assert "".join(piece or "" for piece in pieces) == "abcdef"
    assert await daemon.exit_code() == 0


async def test_streams_still_open_at_the_end_of_the_grace_get_an_error_event(
        spawn, notify, session, fake_openai):
    upstream = await fake_openai("endless")
    upstream.queue(Stream(pieces=("x",) * 100, gap=0.1), Ok("too slow", delay=20))
    daemon = await spawn(upstream_config(upstream.base_url, "500ms"), {"NOTIFY_SOCKET": notify.path})
    assert (await notify.next()).startswith("READY=1")

    stream = await session.post(daemon.url + "/v1/chat/completions", json=chat_body(stream=True))
    assert (await asyncio.wait_for(stream.content.readline(), 5)).startswith(b"data: ")
    waiting = asyncio.create_task(session.post(daemon.url + "/v1/chat/completions", json=chat_body()))
    async with asyncio.timeout(5):
        while upstream.calls < 2:
            await asyncio.sleep(0.02)

    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    payloads = await read_sse(stream)
    stream.release()
    assert b"[DONE]" not in payloads
    error = orjson.loads(payloads[-1])["error"]
    assert error["code"] == "shutting_down"
    assert all(b'"error"' not in p for p in payloads[:-1])
    async with await waiting as answer:  # nothing sent yet: a whole 503 answer
        assert answer.status == 503
        assert (await answer.json())["error"]["code"] == "shutting_down"
    assert await daemon.exit_code() == 0
    assert time.monotonic() - signalled < 5, "the grace of 500ms bounds the shutdown"


async def test_a_second_signal_exits_at_once(spawn, notify, session, fake_openai):
    upstream = await fake_openai("endless")
    upstream.queue(Stream(pieces=("x",) * 200, gap=0.1))
    daemon = await spawn(upstream_config(upstream.base_url, "60s"), {"NOTIFY_SOCKET": notify.path})
    assert (await notify.next()).startswith("READY=1")
    stream = await session.post(daemon.url + "/v1/chat/completions", json=chat_body(stream=True))
    assert (await asyncio.wait_for(stream.content.readline(), 5)).startswith(b"data: ")

    daemon.signal(signal.SIGTERM)
    assert await notify.next() == "STOPPING=1"
    await asyncio.sleep(0.2)
    assert daemon.process.poll() is None  # draining: the stream has 60 s to finish
    forced = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert await daemon.exit_code(timeout=3) == 130
    assert time.monotonic() - forced < 2
    stream.close()


async def test_an_invalid_first_config_exits_1_with_located_errors_and_no_ready(spawn, notify):
    daemon = await spawn("""
providers:
  demo: {type: mock}
models:
  echo: {provider: demoo, model: echo}
""", {"NOTIFY_SOCKET": notify.path}, wait=False)
    assert await daemon.exit_code(timeout=START_TIMEOUT) == 1
    log = daemon.log()
    # FILE:LINE:COL of `demoo` (the listen lines come first, then a blank line)
    assert f"error: {daemon.config}:8:20: model 'echo' names provider 'demoo'" in log
    assert "did you mean 'demo'?" in log
    assert "serving on" not in log
    assert notify.pending() == []


def json_log_config(broken_url: str, spare_url: str, alias_extra: str = "") -> str:
    """log_format json; `chat` tries `first` (broken upstream: cooldown after one failure) then
    `second`; provider `gone` has an empty key, which is a warning at start."""
    return f"""  log_format: json
  shutdown_grace: 3s
defaults:
  retry: {{attempts: 1}}
  cooldown: {{failures: 1, initial: 300ms}}
providers:
  a: {{type: openai, base_url: "{broken_url}"}}
  b: {{type: openai, base_url: "{spare_url}"}}
  gone: {{type: openai, base_url: "http://127.0.0.1:9/v1", api_key: ""}}
models:
  first: {{provider: a, model: up-a}}
  second: {{provider: b, model: up-b}}
  cold: {{provider: gone, model: x}}
aliases:
  chat: {{targets: [first], fallbacks: [second]}}
{alias_extra}"""


async def test_with_log_format_json_every_line_the_daemon_writes_is_one_json_object(spawn, session, fake_openai):
    broken, spare = await fake_openai("broken"), await fake_openai("spare")
    broken.default = Status(500, "broken upstream")
    daemon = await spawn(json_log_config(broken.base_url, spare.base_url))
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    async with session.post(daemon.url + "/v1/chat/completions", json=chat) as response:  # fallback, cooldown
        assert response.status == 200
    async def cooled_down() -> bool:
        async with session.get(daemon.url + "/admin/status") as response:
            return (await response.json())["deployments"]["first"]["state"] != "cooldown"
    await wait_for_state(cooled_down)
    broken.default = Ok("back")
    async with session.post(daemon.url + "/v1/chat/completions", json=chat) as response:  # the probe: cooldown_end
        assert (await response.json())["choices"][0]["message"]["content"] == "back"

    header = f"version: 1\nserver:\n  listen: 127.0.0.1:{daemon.port}\n"
    daemon.config.write_text(header + json_log_config(broken.base_url, spare.base_url,
                                                      "  other: {targets: [second]}\n"))
    async with session.post(daemon.url + "/admin/reload") as response:
        assert (await response.json())["ok"]
    await wait_for_state(lambda: logged(daemon, "reload", result="accepted"))
    daemon.config.write_text(header + "providers: {a: {type: openai}}\nmodels: {m: {provider: nope, model: x}}\n")
    async with session.post(daemon.url + "/admin/reload") as response:
        assert not (await response.json())["ok"]
    await wait_for_state(lambda: logged(daemon, "reload", result="rejected"))
    daemon.signal(signal.SIGTERM)
    assert await daemon.exit_code() == 0

    text = daemon.log()
    assert text.endswith("\n")
    lines = [orjson.loads(line) for line in text[:-1].split("\n")]  # each line parses alone
    for line in lines:
        assert isinstance(line, dict), line
        assert {"ts", "level", "event", "msg"} <= set(line), line
        assert all(isinstance(line[name], str) and line[name] for name in ("ts", "level", "event")), line
        assert datetime.fromisoformat(line["ts"]).utcoffset() == timedelta(0), line
    stamps = [datetime.fromisoformat(line["ts"]) for line in lines]
    assert stamps == sorted(stamps), "access lines and log lines are written in the order they happened"
    events = [line["event"] for line in lines]
    for event in ("config_warning", "start", "access", "fallback", "cooldown_start", "cooldown_end", "reload",
                  "config_error", "stop_signal", "drain", "stopped"):
        assert event in events, (event, events)
    assert events[-1] == "stopped"
    start = lines[events.index("start")]
    assert start["listen"] == f"127.0.0.1:{daemon.port}" and start["msg"].startswith("gatewayd serving on ")
    fallback = lines[events.index("fallback")]
    assert (fallback["alias"], fallback["from"]) == ("chat", "first")
    assert lines[events.index("cooldown_start")]["deployments"] == ["first"]
    problem = lines[events.index("config_error")]
    assert (problem["file"], problem["level"]) == (str(daemon.config), "error")
    assert isinstance(problem["line"], int) and isinstance(problem["column"], int)


async def wait_for_state(probe, timeout: float = 10.0) -> None:
    """Poll `probe` (sync or async) until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s")
        await asyncio.sleep(0.05)


def logged(daemon: Daemon, event: str, **fields) -> bool:
    """Whether the daemon's JSON log holds a line of `event` with these fields."""
    for line in daemon.log().split("\n"):
        if line.startswith("{"):
            record = orjson.loads(line)
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return True
    return False


async def test_the_daemon_answers_a_request_it_cannot_parse_in_openai_shape(spawn):
    daemon = await spawn(MOCK)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", daemon.port), 5)
    try:
        writer.write(b"NOT-HTTP\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()  # the daemon closes the connection after its answer
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400" and b"content-type: application/json" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "invalid_http"
