"""Requests per second with `server.workers` N against 1: how far workers scale on this host.

    python bench/workers.py [--workers 1,2] [--rounds 3] [--duration 10] [--conns 64]

Starts the fake nginx upstream (bench/upstream.nginx.conf, ports 18100/18101) once, then in
each round, for each N: gatewayd on bench/gateway.bench.yaml with `server.workers: N` (port
18080), a 2 s warm-up, and `wrk -t2 -c CONNS -d DURATION -s bench/chat.lua` (alias `bench`,
relayed to nginx every time). Rounds interleave the counts, so a machine that gets busier
weighs on all of them; the figure is the median per N and its ratio to the median for 1.

Nothing is pinned: the workers need every core, and nginx and wrk share them (on a small host
they take cores a worker would use, so the ratio is a floor for what dedicated cores give).
Needs nginx and wrk; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from instructions import stop, wait_healthy  # bench/ is the script's folder: sys.path[0]
from load import BENCH, start_upstream, wrk

ROOT = BENCH.parent
PORT = 18080


def config_with_workers(workers: int, folder: Path) -> Path:
    document = yaml.safe_load((BENCH / "gateway.bench.yaml").read_text())
    document["server"]["workers"] = workers
    path = folder / f"gateway-{workers}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def measure(gatewayd: str, config: Path, folder: Path, args: argparse.Namespace) -> dict:
    log = folder / f"{config.stem}.log"
    gateway = subprocess.Popen([gatewayd, "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(log, "ab"), cwd=ROOT)
    try:
        wait_healthy(gateway, PORT, 60, str(log))
        wrk("bench", args.conns, 2, threads=2)
        return wrk("bench", args.conns, args.duration, threads=2)
    finally:
        stop(gateway, 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument("--conns", type=int, default=64)
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python)
    args = parser.parse_args()
    counts = [int(count) for count in args.workers.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="gatewayd-workers-"))
    nginx = start_upstream(folder)
    rates: dict[int, list[float]] = {count: [] for count in counts}
    try:
        configs = {count: config_with_workers(count, folder) for count in counts}
        for round_ in range(1, args.rounds + 1):
            for count in counts:
                result = measure(args.gatewayd, configs[count], folder, args)
                rates[count].append(result["rps"])
                print(f"round {round_}, workers {count}: {result['rps']:,.0f} req/s, "
                      f"p50 {result['p50_us'] / 1000:.1f} ms, p99 {result['p99_us'] / 1000:.1f} ms", flush=True)
    finally:
        stop(nginx)
    base = statistics.median(rates[counts[0]])
    for count in counts:
        median = statistics.median(rates[count])
        print(f"workers {count}: median {median:,.0f} req/s, {median / base:.2f}x workers {counts[0]} "
              f"({median / base / (count / counts[0]):.2f} of linear)")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
