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
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import BENCH, start_upstream, wrk  # bench/ is the script's folder: sys.path[0]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--conns", type=int, default=64)
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="gatewayd-cache-bench-"))
    processes = []
    try:
        processes.append(start_upstream(run, "1"))
        processes.append(subprocess.Popen(
            ["taskset", "-c", "0", args.gatewayd, "run", "-c", str(BENCH / "gateway.bench.yaml")],
            stdout=subprocess.DEVNULL, stderr=open(run / "gatewayd.log", "wb"), start_new_session=True))
        wait_ready(time.monotonic() + 30)
        for model in ("bench", "bench-cached"):  # warm-up; the first bench-cached request stores the answer
            wrk(model, args.conns, 2, "1")
        rates: dict[str, list[float]] = {"bench": [], "bench-cached": []}
        for number in range(1, args.rounds + 1):
            for model in rates:
                rates[model].append(wrk(model, args.conns, args.duration, "1")["rps"])
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
