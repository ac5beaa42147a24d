"""Holding many streams: more streams to one provider than the old pool default are all open
at once, the daemon raises its open-files limit at start (and says so when it cannot), and the
relay that carries a stream's reads as their bytes sends exactly what the line-by-line reading
did, however the upstream's body is cut. The daemon runs for real in front of a fake OpenAI
upstream on 127.0.0.1; the official `openai` SDK is the client.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys

import httpx2
import openai
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.adapters.sse import relay_data_events
from gatewayd.daemon.core.failures import FailureClass
from tests.daemon_proc import Daemon, config_dir, free_port, routed_config
from tests.test_sse import LINES, cut, read_in_pieces, reference

STREAMS = 200  # past the old default pool of 100 connections a provider, which queued the rest
HOLD_LIMIT = 60.0  # how long the upstream holds its streams waiting for all of them to be open


class HeldStreams:
    """A fake OpenAI upstream that sends each stream's first chunk at once, then holds it open
    until `expected` streams are open together (or HOLD_LIMIT passed), then finishes them all:
    it counts the streams open at once, so it sees whether the gateway opened every one."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.open = 0
        self.peak = 0
        self.all_open = asyncio.Event()
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> HeldStreams:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.runner.cleanup()

    @staticmethod
    def chunk(index: int, delta: dict, finish: str | None = None) -> bytes:
        payload = {"id": f"chatcmpl-held{index}", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0aa8d3e20b",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        index = int(body["messages"][0]["content"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open += 1
        self.peak = max(self.peak, self.open)
        if self.open >= self.expected:
            self.all_open.set()
        try:
            await response.write(self.chunk(index, {"role": "assistant", "content": ""}))
            try:
                await asyncio.wait_for(self.all_open.wait(), HOLD_LIMIT)
            except TimeoutError:
                pass  # the peak tells the test; the stream still ends cleanly
            await response.write(self.chunk(index, {"content": f"stream {index}"}))
            usage = {"id": f"chatcmpl-held{index}", "object": "chat.completion.chunk", "created": 1_700_000_000,
                     "model": "gpt-4o-mini-2024-07-18", "choices": [],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
            await response.write(self.chunk(index, {}, "stop") + b"data: " + json.dumps(usage).encode()
                                 + b"\n\ndata: [DONE]\n\n")
            await response.write_eof()
        finally:
            self.open -= 1
        return response


async def one_stream(client: openai.AsyncOpenAI, index: int) -> tuple[str, str | None, int | None]:
    """(the text, the finish reason, the completion tokens) of stream `index`."""
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": str(index)}], stream=True,
        stream_options={"include_usage": True})
    text, finish, tokens = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(text), finish, tokens


async def test_more_streams_than_the_old_pool_default_are_all_open_at_once(tmp_path):
    folder, path = config_dir(tmp_path)
    port = free_port()
    async with HeldStreams(STREAMS) as upstream:
        path.write_text(routed_config(port, upstream.url))  # max_connections left at its default
        async with Daemon(path, port, tmp_path) as gw:
            http = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=STREAMS + 10),
                                                  timeout=HOLD_LIMIT + 30)
            async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0,
                                          http_client=http) as client:
                results = await asyncio.wait_for(
                    asyncio.gather(*(one_stream(client, index) for index in range(STREAMS))), HOLD_LIMIT + 60)
    assert upstream.peak == STREAMS, f"only {upstream.peak} of {STREAMS} streams were open at once"
    assert results == [(f"stream {index}", "stop", 2) for index in range(STREAMS)]


def limits_of(pid: int) -> tuple[int, int]:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)


async def test_the_daemon_raises_its_open_files_limit_to_the_hard_one(tmp_path):
    folder, path = config_dir(tmp_path)
    port = free_port()
    path.write_text(routed_config(port, "http://127.0.0.1:9/v1"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # what the daemon inherits
    try:
        daemon = Daemon(path, port, tmp_path)
        await daemon.__aenter__()  # on failure it stops the daemon itself
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert limits_of(daemon.proc.pid) == (wanted, hard)
    finally:
        await daemon.__aexit__(None, None, None)


LOW_LIMIT = r"""
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
from gatewayd.daemon.server import raise_open_files_limit
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append({"event": getattr(record, "event", None), "limit": getattr(record, "limit", None),
                     "level": record.levelname, "message": record.getMessage()})
logging.getLogger("gatewayd").addHandler(Keep())
print(json.dumps({"soft": raise_open_files_limit(), "logged": seen}))
"""


def test_a_hard_limit_too_low_for_many_streams_is_logged_with_its_figure():
    done = subprocess.run([sys.executable, "-c", LOW_LIMIT], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["soft"] == 512
    (line,) = result["logged"]
    assert (line["event"], line["limit"], line["level"]) == ("open_files_low", 512, "WARNING")
    assert "512" in line["message"]


# --- the relay of an OpenAI stream: its reads as their bytes, or line by line ------------------

EVENTS = st.sampled_from([b'data: {"n":1}\n\n', b'data: {"n":22}\n\n', b"data: [DONE]\n\n",
                          b'data: {"x":"' + b"y" * 40 + b'"}\n\n'])
PARTS = st.one_of(EVENTS, EVENTS, LINES.map(lambda line: line + b"\n"))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PARTS, max_size=12), cuts=st.lists(st.integers(1, 60), max_size=8),
       limit=st.sampled_from([24, 48, 1 << 16]))
def test_the_relay_sends_what_the_line_by_line_reading_does_however_the_body_is_cut(parts, cuts, limit):
    """Whatever the reads: the `data:` of every event up to and including [DONE], each checked,
    written as `data: ...` (the bytes as they came when the upstream wrote them so); a line or
    an event past `limit` fails as the line-by-line reading fails, after the events before it."""
    body = b"".join(parts)
    expected: list = []
    for item in reference(body, limit):
        if item is FailureClass.PROTOCOL:
            expected.append(item)
            break
        expected.append(b"data: " + item[1] + b"\n\n")
        if item[1] == b"[DONE]":
            break
    checked = []

    def check(data: bytes) -> bool:
        checked.append(data)
        return data == b"[DONE]"

    out = asyncio.run(read_in_pieces(cut(body, cuts),
                                     lambda content: relay_data_events(content, limit, lambda data: data, check)))
    relayed = b"".join(item for item in out if isinstance(item, bytes))
    failed = [item for item in out if not isinstance(item, bytes)]
    assert relayed == b"".join(item for item in expected if isinstance(item, bytes))
    assert failed == [item for item in expected if not isinstance(item, bytes)]
    assert [b"data: " + data + b"\n\n" for data in checked] == [item for item in expected if isinstance(item, bytes)]
