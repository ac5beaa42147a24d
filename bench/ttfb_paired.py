#!/usr/bin/env python3
"""A stream's time to first byte, gatewayd builds side by side (standard library + aiohttp).

    python bench/ttfb_paired.py [-n 12000] [--block 100] [--warm 20] NAME=CHECKOUT [NAME=CHECKOUT ...]

Each CHECKOUT is a gatewayd source tree (this repository's root, e.g. a `git worktree`
of another commit). Starts, all at once: a fake upstream answering the fixed SSE body of
bench/upstream.nginx.conf in one write, a minimal aiohttp proxy (the floor: reads the body,
swaps the model, relays the answer chunk by chunk), and one gatewayd per CHECKOUT
(bench/gateway.bench.yaml on its own port), servers on CPU 0, upstream and client on CPU 1.
Then, until each row has N streams: for each row in a shuffled order, `--warm` discarded
and `--block` measured sequential streamed requests (bench/stream_client.py's). A block
starts only while the machine is otherwise idle, and is thrown away if another test or
benchmark ran meanwhile. Rows see the same machine state, so the differences between them
are steadier than those of runs one after the other (bench/run.sh): compare the
"added" figures and the per-block medians of the differences, not absolute times.

Needs 2 CPUs, `taskset`, `pgrep` and free ports 28001, 28080 onwards (one a build) and 28092.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from stream_client import one  # noqa: E402

UPSTREAM = r'''
import asyncio, sys
from aiohttp import web
events = open(sys.argv[1], "rb").read()
async def stream(request):
    await request.read()
    return web.Response(body=events, content_type="text/event-stream")
async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[2])).start()
    await asyncio.Event().wait()
import uvloop; uvloop.install()
asyncio.run(main())
'''

FLOOR = BENCH / "floor.py"  # the aiohttp floor, shared with bench/chunk_cost.py

UPSTREAM_PORT, FLOOR_PORT, GATEWAY_PORT = 28001, 28092, 28080
OTHERS = "pytest|bench/run.sh|ttfb/run|ttfb_paired.py|instructions.py|callgrind|stream_client.py"


def sse_body() -> bytes:
    text = (BENCH / "upstream.nginx.conf").read_text()
    return text.split("return 200 '")[2].split("';", 1)[0].encode()


def cpu_busy(seconds: float) -> float:
    def sample() -> tuple[int, int]:
        values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(values), values[3] + values[4]
    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(1, total2 - total)


def ancestors() -> set[int]:
    """This process and those above it (a `timeout` or shell that started it names this script too)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return pids


def others_running() -> bool:
    found = subprocess.run(["pgrep", "-f", OTHERS], capture_output=True, text=True).stdout.split()
    return bool({int(pid) for pid in found} - ancestors())


def wait_up(url: str) -> None:
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=0.2).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"not up: {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="NAME=CHECKOUT")
    parser.add_argument("-n", type=int, default=12000, help="measured streams per row")
    parser.add_argument("--block", type=int, default=100, help="consecutive measured streams per row and turn")
    parser.add_argument("--warm", type=int, default=20, help="discarded streams before each block")
    args = parser.parse_args()
    builds = [build.split("=", 1) for build in args.builds]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started (the `finally` below)
    work = Path(tempfile.mkdtemp(prefix="gatewayd-ttfb-"))
    (work / "events").write_bytes(sse_body())
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], cpu: int, env: dict | None = None) -> None:
        procs.append(subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=work))

    rows = [("direct", UPSTREAM_PORT, "bench-stream"), ("floor", FLOOR_PORT, "bench-model-stream")]
    try:
        start([sys.executable, "-c", UPSTREAM, str(work / "events"), str(UPSTREAM_PORT)], 1)
        start([sys.executable, str(FLOOR), str(FLOOR_PORT), str(UPSTREAM_PORT)], 0)
        config = (BENCH / "gateway.bench.yaml").read_text().replace(
            "127.0.0.1:18101", f"127.0.0.1:{UPSTREAM_PORT}").replace("127.0.0.1:18100", "127.0.0.1:28000")
        for i, (name, checkout) in enumerate(builds):
            root = Path(checkout).resolve()
            package = work / name / "gatewayd"  # the repository root is the package: lay it out as one
            package.mkdir(parents=True)
            for part in ("daemon", "adapters", "schema"):
                (package / part).symlink_to(root / part)
            port = GATEWAY_PORT + i
            path = work / f"{name}.yaml"
            path.write_text(config.replace("127.0.0.1:18080", f"127.0.0.1:{port}"))
            start([sys.executable, "-c", "import sys; from gatewayd.daemon.cli import main; sys.exit(main())",
                   "run", "-c", str(path)], 0, {**os.environ, "PYTHONPATH": str(work / name)})
            rows.append((name, port, "bench-stream"))
            wait_up(f"http://127.0.0.1:{port}/healthz")
        wait_up(f"http://127.0.0.1:{FLOOR_PORT}/healthz")
        os.sched_setaffinity(0, {1})
        headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
        conns = {name: (http.client.HTTPConnection("127.0.0.1", port, timeout=30), json.dumps(
                     {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16,
                      "stream": True})) for name, port, model in rows}
        ttfb: dict[str, list[list[float]]] = {name: [] for name in conns}
        total: dict[str, list[float]] = {name: [] for name in conns}
        order, done, dropped = list(conns), 0, 0
        while done < args.n:
            while others_running() or cpu_busy(0.3) > 0.08:
                time.sleep(1)
            random.shuffle(order)
            got: dict[str, list[float]] = {}
            for name in order:
                conn, body = conns[name]
                got[name] = []
                for j in range(args.warm + args.block):
                    result = one(conn, "/v1/chat/completions", body, headers)
                    if "error" in result:
                        raise SystemExit(f"{name}: {result['error']}")
                    if j >= args.warm:
                        got[name].append(result["ttfb"])
                        total[name].append(result["total"])
            if others_running():
                dropped += 1
                continue
            for name in order:
                ttfb[name].append(got[name])
            done += args.block
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    blocks = {name: [med(block) for block in runs] for name, runs in ttfb.items()}
    flat = {name: [t for block in runs for t in block] for name, runs in ttfb.items()}
    print(f"{done} streams a row in blocks of {args.block}; {dropped} blocks dropped (the machine was busy)")
    print(f"{'row':10s} {'TTFB p50':>9s} {'p90':>7s} {'added':>8s} {'total p50':>10s}   (ms; added: median over "
          "blocks of the row's block median minus direct's)")
    for name in conns:
        p90 = statistics.quantiles(flat[name], n=10)[-1]
        added = med([a - b for a, b in zip(blocks[name], blocks["direct"], strict=True)])
        print(f"{name:10s} {med(flat[name]):9.3f} {p90:7.3f} {added:+8.3f} {med(total[name]):10.3f}")
    names = [name for name in conns if name != "direct"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = med([x - y for x, y in zip(blocks[a], blocks[b], strict=True)])
            print(f"  {a} - {b}: {diff * 1000:+.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
