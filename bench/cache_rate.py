"""Requests per second of cache hits against relayed requests, through one gatewayd.

    python bench/cache_rate.py [--rounds 3] [--duration 5] [--conns 64] [--gatewayd PATH]

Starts the fake nginx upstream (bench/upstream.nginx.conf) and `gatewayd run -c
bench/gateway.bench.yaml`, then runs wrk (bench/chat.lua) in alternating rounds against
the alias `bench` (relayed to the upstream every time) and `bench-cached` (`cache: exact`:
after its first request, every one is a hit), gatewayd pinned to CPU 0 and nginx and wrk
to CPU 1. Prints each round and the medians' ratio. Needs nginx, wrk and taskset; ports
18080, 18100 and 18101 free. Everything it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def wait_ready(deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", 18080, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("gatewayd did not become ready")


def wrk(model: str, conns: int, duration: int) -> float:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t", "1", "-c", str(conns), "-d", f"{duration}s",
                          "-s", str(BENCH / "chat.lua"), "http://127.0.0.1:18080"],
                         env={**os.environ, "BENCH_MODEL": model}, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))
    result = json.loads(line.removeprefix("BENCH_JSON "))
    if result["non2xx"] or result["sock_errors"]:
        raise SystemExit(f"{model}: {result['non2xx']} non-2xx answers, {result['sock_errors']} socket errors")
    return result["rps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--conns", type=int, default=64)
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="gatewayd-cache-bench-"))
    (run / "tmp").mkdir()
    processes = []
    try:
        processes.append(subprocess.Popen(
            ["taskset", "-c", "1", "nginx", "-p", str(run), "-e", str(run / "nginx-error.log"),
             "-c", str(BENCH / "upstream.nginx.conf"), "-g", "daemon off;"], start_new_session=True))
        processes.append(subprocess.Popen(
            ["taskset", "-c", "0", args.gatewayd, "run", "-c", str(BENCH / "gateway.bench.yaml")],
            stdout=subprocess.DEVNULL, stderr=open(run / "gatewayd.log", "wb"), start_new_session=True))
        wait_ready(time.monotonic() + 30)
        for model in ("bench", "bench-cached"):  # warm-up; the first bench-cached request stores the answer
            wrk(model, args.conns, 2)
        rates: dict[str, list[float]] = {"bench": [], "bench-cached": []}
        for number in range(1, args.rounds + 1):
            for model in rates:
                rates[model].append(wrk(model, args.conns, args.duration))
            print(f"round {number}: relayed {rates['bench'][-1]:,.0f} req/s, "
                  f"cache hits {rates['bench-cached'][-1]:,.0f} req/s", flush=True)
        relayed, hits = statistics.median(rates["bench"]), statistics.median(rates["bench-cached"])
        print(f"median at {args.conns} connections: relayed {relayed:,.0f} req/s, cache hits {hits:,.0f} req/s: "
              f"{hits / relayed:.2f}x")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
