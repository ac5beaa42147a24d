"""Instructions per relayed stream chunk: gatewayd against the aiohttp floor (callgrind, exact).

    python bench/chunk_cost.py [--streams 30] [--chunks 50] [--warmup 5] [--targets gatewayd,floor]

Each target runs under `valgrind --tool=callgrind --separate-threads=yes` in front of a
lock-step fake OpenAI upstream that lives in this process with the client: the upstream
sends a stream's next `chat.completion.chunk` only once the client has received the one
before, so every chunk crosses the target on its own (one upstream read, one client write),
as a paced stream's chunks do, whatever valgrind's speed. A stream ends with a finish chunk,
a usage chunk and `data: [DONE]` in one write, as OpenAI's do.

For each target: --warmup streams, counters zeroed (`callgrind_control -z`), --streams
streams of N = --chunks chunks, a dump, --streams streams of 2N chunks, a dump. The main
thread's instructions give

    per chunk  = (I(2N) - I(N)) / (streams x N)     the marginal cost of one more chunk
    per stream = I(N) / streams - N x per chunk     request, routing, headers, end, bookkeeping

Targets: `gatewayd` (`gatewayd run -c bench/gateway.bench.yaml`, alias `bench-stream`, its
provider at 127.0.0.1:18101) and `floor`: the aiohttp floor proxy of the peer harness
(bench/streams/floor.py there; the same lines are bench/floor.py), with uvloop, as gatewayd runs.
Both relay the same bytes. gatewayd's periodic timers (the 10 ms deadline sweep while a
stream waits, the 0.1 s access-log flush) fire by the clock, about 50x more often per chunk
than at full speed, so its figures lean a little high; compare runs of this script with
each other. Each per-chunk figure is also given without what the event loop's timers and the
garbage collector's collections did (as bench/instructions.py gives it), for both targets.
Needs valgrind; ports 18080, 18090, 18101 free.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from instructions import clock_driven_total, main_thread_total, stop  # bench/ is the script's folder: sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "gateway.bench.yaml"
UPSTREAM_PORT = 18101
KEY = "sk-test"

FLOOR = Path(__file__).resolve().parent / "floor.py"

TARGETS = {
    # name: (port, model, command after valgrind's options)
    "gatewayd": (18080, "bench-stream", None),
    "floor": (18090, "bench-model-stream", None),
}

HEAD = (b'data: {"id":"chatcmpl-lockstep","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0aa8d3e20b","choices":[{"index":0,'
        b'"delta":{"content":"')
TAIL = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
FINISH = (b'data: {"id":"chatcmpl-lockstep","object":"chat.completion.chunk","created":1700000000,'
          b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0aa8d3e20b","choices":[{"index":0,'
          b'"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n')
DONE = b"data: [DONE]\n\n"


def usage_chunk(n: int) -> bytes:
    return (b'data: {"id":"chatcmpl-lockstep","object":"chat.completion.chunk","created":1700000000,'
            b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0aa8d3e20b","choices":[],'
            b'"usage":{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 9))


class LockStep:
    """The fake upstream and the client's side channel: `received` tells the upstream that the
    client has the chunk before, so it may send the next."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[None] = asyncio.Queue()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or 1)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for index in range(n):
            if index:
                await asyncio.wait_for(self.received.get(), 60)
            await response.write(HEAD + b"tok%d " % index + TAIL)
        await asyncio.wait_for(self.received.get(), 60)
        await response.write(FINISH + usage_chunk(n) + DONE)
        await response.write_eof()
        return response

    async def stream(self, session: aiohttp.ClientSession, url: str, model: str, n: int) -> None:
        body = {"model": model, "stream": True, "max_tokens": n,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hello"}]}
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
            if response.status != 200:
                raise SystemExit(f"{url} answered {response.status}: {(await response.read())[:300]!r}")
            seen = 0
            raw = b""
            while True:
                piece = await asyncio.wait_for(response.content.readany(), 60)
                if not piece:
                    break
                raw += piece
                events = raw.count(b"\n\n")
                for _ in range(min(events, n) - seen):
                    self.received.put_nowait(None)
                seen = min(events, n)
            if seen != n or not raw.endswith(DONE):
                raise SystemExit(f"a stream of {n} chunks ended after {seen}: {raw[-200:]!r}")


def command(target: str, args: argparse.Namespace) -> list[str]:
    if target == "gatewayd":
        return [args.gatewayd, "run", "-c", str(CONFIG)]
    return [sys.executable, str(FLOOR), str(TARGETS["floor"][0]), str(UPSTREAM_PORT)]


async def measure(target: str, args: argparse.Namespace, lockstep: LockStep,
                  out_dir: str) -> tuple[float, float, float]:
    port, model, _ = TARGETS[target]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={out_dir}/callgrind.out.%p", *command(target, args)],
        stdout=subprocess.DEVNULL, stderr=open(f"{out_dir}/{target}.log", "wb"), cwd=ROOT)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"{target} did not start; see {out_dir}/{target}.log")
                await asyncio.sleep(0.5)
            for _ in range(args.warmup):
                await lockstep.stream(session, url, model, args.chunks)
            totals, clocked = [], []
            subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True)
            for n in (args.chunks, 2 * args.chunks):
                for _ in range(args.streams):
                    await lockstep.stream(session, url, model, n)
                subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
                totals.append(main_thread_total(out_dir, process.pid))
                clocked.append(clock_driven_total(out_dir, process.pid))
                subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True)
    finally:
        stop(process, 60)
    per_chunk = (totals[1] - totals[0]) / (args.streams * args.chunks)
    per_stream = totals[0] / args.streams - args.chunks * per_chunk
    quiet = ((totals[1] - clocked[1]) - (totals[0] - clocked[0])) / (args.streams * args.chunks)
    return per_chunk, per_stream, quiet


async def run(args: argparse.Namespace) -> None:
    lockstep = LockStep()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", lockstep.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT).start()
    out_dir = args.keep or tempfile.mkdtemp(prefix="gatewayd-chunk-cost-")
    try:
        results = {}
        for target in args.targets.split(","):
            results[target] = await measure(target, args, lockstep, out_dir)
            per_chunk, per_stream, quiet = results[target]
            print(f"{target}: {per_chunk:,.0f} instructions per chunk ({quiet:,.0f} without timers and "
                  f"collections), {per_stream:,.0f} per stream ({args.streams} streams of {args.chunks} "
                  f"and of {2 * args.chunks} chunks)", flush=True)
        if "gatewayd" in results and "floor" in results:
            (chunk_g, stream_g, quiet_g), (chunk_f, stream_f, quiet_f) = results["gatewayd"], results["floor"]
            print(f"gatewayd / floor: {chunk_g / chunk_f:.2f}x per chunk ({quiet_g / quiet_f:.2f}x without timers "
                  f"and collections), {stream_g / stream_f:.2f}x per stream")
    finally:
        await runner.cleanup()
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=30, help="streams per length (default 30)")
    parser.add_argument("--chunks", type=int, default=50, help="N: the short streams' chunks (default 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--targets", default="gatewayd,floor", help="gatewayd, floor or both (default)")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python,
                        help="the gatewayd to measure (default: the one on PATH, else beside this python)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
