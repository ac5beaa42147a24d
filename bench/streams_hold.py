"""Hold C streams open through one gatewayd, each paced at a given rate, and report what it cost.

    python bench/streams_hold.py [--streams 2000] [--rate 2] [--seconds 20] [--ramp 2000]

Starts a paced fake OpenAI upstream (its own process: each stream sends one
`chat.completion.chunk` every 1/rate s, then a finish chunk, a usage chunk and `data: [DONE]`)
and `gatewayd run` with a config of one `openai` provider at it (`max_connections` left at its
default), then opens --streams streams through the gateway from this process, ramped at --ramp
new streams a second, each read to its end. Prints one JSON line:

    ok / failed            streams that ended with every chunk and [DONE] / the others (why)
    stalls                 gaps between two chunks of a stream over 1 s (at 2 chunks/s: 0.5 s late)
    gap_p99_ms, gap_max_ms the gaps between chunks, against the nominal 1/rate
    peak_open              the most streams open at once, as the upstream counted them
    rss_idle_mb, rss_peak_mb, bytes_per_stream
                           gatewayd's resident memory before the first stream and with all open;
                           (peak - idle) / peak_open
    cpu_s, us_per_chunk    gatewayd's CPU time over the run, and per relayed chunk (stream set-up
                           included)
    *_load, load_avg       CPU time / wall time of gatewayd, the upstream and this client (1.0: one
                           core busy), and the host's 1-minute load average: a client or upstream
                           near 1.0, or a load above the cores, makes the stalls theirs, not gatewayd's

Raises its own open-files soft limit to the hard one; needs about 2 x streams + 100 descriptors
for gatewayd and as many here. Everything listens on 127.0.0.1 (ports from --port up to
--port + 1). Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from instructions import stop, wait_healthy  # bench/ is the script's folder: sys.path[0]

UPSTREAM = r'''
import asyncio, json, sys, time
from aiohttp import web
import uvloop
port, interval, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
stats = {"open": 0, "peak": 0}
HEAD = (b'data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0aa8d3e20b","choices":[{"index":0,'
        b'"delta":{"content":"')
TAIL = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
END = (b'data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","created":1700000000,'
       b'"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"logprobs":null,'
       b'"finish_reason":"stop"}]}\n\ndata: {"id":"chatcmpl-paced","object":"chat.completion.chunk",'
       b'"created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":9,'
       b'"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n' % (count, count + 9))
async def chat(request):
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    stats["open"] += 1
    stats["peak"] = max(stats["peak"], stats["open"])
    start = time.monotonic()
    try:
        for index in range(count):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(HEAD + b"tok%d " % index + TAIL)
        await asyncio.sleep(max(0.0, start + count * interval - time.monotonic()))
        await response.write(END)
        await response.write_eof()
    finally:
        stats["open"] -= 1
    return response
async def status(request):
    return web.json_response(stats)
async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/__status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=65535).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.install()
asyncio.run(main())
'''

CONFIG = """version: 1
server:
  listen: 127.0.0.1:{port}
  log_format: text
defaults:
  retry: {{attempts: 1}}
providers:
  paced:
    type: openai
    base_url: http://127.0.0.1:{upstream}/v1
    api_key: sk-paced
models:
  paced:
    provider: paced
    model: gpt-4o-mini
aliases:
  chat:
    targets: [paced]
"""


def cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of process `pid`."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


async def one_stream(session: aiohttp.ClientSession, url: str, chunks: int, gaps: list[float],
                     failures: dict[str, int]) -> bool:
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                failures[f"HTTP {response.status}"] = failures.get(f"HTTP {response.status}", 0) + 1
                return False
            seen, last, raw = 0, None, b""
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                now = time.monotonic()
                if last is not None and seen < chunks:
                    gaps.append(now - last)
                last = now
                raw = line
                seen += 1
            if raw.strip() != b"data: [DONE]" or seen != chunks + 3:
                failures["cut short"] = failures.get("cut short", 0) + 1
                return False
            return True
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        return False


async def hold(args: argparse.Namespace, gateway_pid: int, upstream_pid: int) -> dict:
    interval = 1 / args.rate
    chunks = max(1, round(args.seconds * args.rate))
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    gaps: list[float] = []
    failures: dict[str, int] = {}
    cpu_before, rss_idle = cpu_rss(gateway_pid)
    others_before = cpu_rss(upstream_pid)[0], time.process_time(), time.monotonic()
    rss_peak = rss_idle
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.seconds + args.streams / args.ramp + 120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for index in range(args.streams):
            tasks.append(asyncio.create_task(one_stream(session, url, chunks, gaps, failures)))
            if index % 100 == 99:
                await asyncio.sleep(100 / args.ramp)
                rss_peak = max(rss_peak, cpu_rss(gateway_pid)[1])
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=1)
            rss_peak = max(rss_peak, cpu_rss(gateway_pid)[1])
        ok = sum(task.result() for task in tasks)
    cpu_after, _ = cpu_rss(gateway_pid)
    wall = time.monotonic() - others_before[2]
    upstream_load = (cpu_rss(upstream_pid)[0] - others_before[0]) / wall
    client_load = (time.process_time() - others_before[1]) / wall
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{args.port + 1}/__status") as response:
            peak_open = (await response.json())["peak"]
    gaps.sort()
    relayed = ok * (chunks + 3)
    return {
        "streams": args.streams, "rate": args.rate, "chunks_per_stream": chunks, "ok": ok,
        "failed": args.streams - ok, "why": failures, "stalls": sum(gap > 1.0 for gap in gaps),
        "gap_nominal_ms": interval * 1000,
        "gap_p99_ms": round(gaps[int(len(gaps) * 0.99)] * 1000, 1) if gaps else None,
        "gap_max_ms": round(gaps[-1] * 1000, 1) if gaps else None, "peak_open": peak_open,
        "rss_idle_mb": round(rss_idle / 2**20, 1), "rss_peak_mb": round(rss_peak / 2**20, 1),
        "bytes_per_stream": round((rss_peak - rss_idle) / max(1, peak_open)),
        "cpu_s": round(cpu_after - cpu_before, 2),
        "us_per_chunk": round((cpu_after - cpu_before) / relayed * 1e6, 1) if relayed else None,
        "gatewayd_load": round((cpu_after - cpu_before) / wall, 2), "upstream_load": round(upstream_load, 2),
        "client_load": round(client_load, 2), "load_avg": os.getloadavg()[0], "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=2.0, help="chunks a second, each stream (default 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each stream's length (default 20)")
    parser.add_argument("--ramp", type=float, default=2000.0, help="new streams a second (default 2000)")
    parser.add_argument("--port", type=int, default=18200, help="gatewayd's; the upstream's is the next")
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    folder = tempfile.mkdtemp(prefix="gatewayd-hold-")
    config = Path(folder) / "gateway.yaml"
    config.write_text(CONFIG.format(port=args.port, upstream=args.port + 1))
    chunks = max(1, round(args.seconds * args.rate))
    upstream = gateway = None
    try:
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(args.port + 1), str(1 / args.rate),
                                     str(chunks)], stdout=subprocess.PIPE)
        if upstream.stdout.readline().strip() != b"ready":
            raise SystemExit("the paced upstream did not start")
        log = open(Path(folder) / "gatewayd.log", "wb")
        gateway = subprocess.Popen([args.gatewayd, "run", "-c", str(config)], stdout=log, stderr=log, cwd=folder)
        wait_healthy(gateway, args.port, 30, f"{folder}/gatewayd.log")
        time.sleep(1)  # settled: the idle RSS is read before the first stream
        print(json.dumps(asyncio.run(hold(args, gateway.pid, upstream.pid))), flush=True)
    finally:
        stop(gateway)
        stop(upstream)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
