"""Two settings of one gatewayd, compared in one process: instructions per request (callgrind).

    python bench/ab.py --a YAML --b YAML [--pairs 6] [--requests 1000] [--kind chat] [--port-offset N]
    python bench/ab.py --request-id [--with YAML] [--pairs 6] ...

bench/instructions.py compares builds, one process each. Processes of one build differ by up to
8,000 instructions a request on this bench (the hash seed and the address layout move, among
other things, how often CPython's type-attribute cache misses), so a cost of 1 % takes many
processes to see. Here both settings run in one process, in passes that
alternate A B B A A B ... after one pass of warm-up, so a drift over the run falls on both alike.

With `--a` and `--b`, each is set over bench/gateway.bench.yaml's sections (as instructions.py's
`--with`) and the daemon switches between them by reloading (SIGHUP): for what a config turns on
and off, e.g. the request ring (`--a '{server: {recent_requests: 1000}}' --b '{server:
{recent_requests: 0}}'`). Each pass begins with `--warmup` requests, and after a switch with as
many as the ring holds, so that a full ring evicts at every measured request.

With `--request-id`, A is gatewayd as it is and B is gatewayd without its `x-request-id`: no id
made, none on the answer or in the access line. This script runs the daemon itself (`serve`) and
swaps those parts in and out on SIGUSR2; the request class and its slot stay in both, a few dozen
instructions.

Each figure is also given without what the event loop's timers and the garbage collector's
collections did (as instructions.py gives it). Needs valgrind; ports 18080, 18100, 18101 free
(each shifted by --port-offset).
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

import instructions  # bench/ is the script's folder: sys.path[0]
import yaml

SWITCH_FILE = "GATEWAYD_AB_SETTING"  # the environment variable naming the file `serve` reads on SIGUSR2


def serve(argv: list[str]) -> int:
    """`gatewayd run ...`, with SIGUSR2 setting the request id on or off as the file named by
    $GATEWAYD_AB_SETTING says (`a`: on, `b`: off), for connections accepted from then on."""
    import gc

    from gatewayd.daemon.cli import main
    from gatewayd.daemon.http import connection
    from gatewayd.daemon.http.requestid import IdentifiedRequest

    with_id = connection.GatewayServer._make_request
    hook = IdentifiedRequest.__dict__["_prepare_hook"]

    def without_id(self, message, payload, protocol, writer, task, _cls=IdentifiedRequest):
        request = IdentifiedRequest(message, payload, protocol, writer, task, self._loop)
        request.request_id = None  # the access line leaves the field out, the ring is off
        return request

    def switch(signum, frame) -> None:
        setting = Path(os.environ[SWITCH_FILE]).read_text().strip()
        (server,) = [o for o in gc.get_objects() if type(o) is connection.GatewayServer]
        server.request_factory = (with_id if setting == "a" else without_id).__get__(server)
        if setting == "a":
            IdentifiedRequest._prepare_hook = hook
        elif "_prepare_hook" in IdentifiedRequest.__dict__:
            del IdentifiedRequest._prepare_hook  # aiohttp's own, which does nothing

    signal.signal(signal.SIGUSR2, switch)
    sys.argv = ["gatewayd", *argv]
    return main()


def measure(args: argparse.Namespace) -> int:
    offset, kind = args.port_offset, args.kind
    out_dir = tempfile.mkdtemp(prefix="gatewayd-ab-")
    config = Path(out_dir) / "gateway.yaml"
    setting_file = Path(out_dir) / "setting"

    def sections(setting: str) -> dict:
        """What `setting` sets over the bench config: --with's sections, then its own, key by key."""
        merged = {section: dict(values) for section, values in (args.common or {}).items()}
        for section, values in ((args.a if setting == "a" else args.b) or {}).items():
            merged[section] = {**merged.get(section, {}), **values}
        return merged

    def ring_of(setting: str) -> int:
        """The request ring's size under `setting` (the bench config leaves the default, 1,000)."""
        return int((sections(setting).get("server") or {}).get("recent_requests", 1000))

    def write(setting: str) -> None:
        text = instructions.bench_config(offset, [kind], sections(setting))
        config.with_suffix(".tmp").write_text(text)
        os.replace(config.with_suffix(".tmp"), config)  # the reload reads a whole file

    write("a")
    answer, events = instructions.fixed_bodies()
    upstream = subprocess.Popen([sys.executable, "-c", instructions.UPSTREAM, answer, events, str(offset)],
                                stdout=subprocess.PIPE)
    gateway = None
    port = 18080 + offset
    path, body = instructions.KINDS[kind]
    key = instructions.KEYS.get(kind, instructions.KEY)
    figures: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}

    def config_version(conn: http.client.HTTPConnection) -> str:
        """The version of the config that answers (`x-gatewayd-config`), asked by one request."""
        return instructions.request(conn, path, body, key).getheader("x-gatewayd-config")

    try:
        if upstream.stdout.readline().strip() != b"ready":
            raise SystemExit("the fake upstream did not start")
        command = ([sys.executable, __file__, "serve", "run", "-c", str(config)] if args.request_id
                   else [args.gatewayd, "run", "-c", str(config)])
        gateway = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out_dir}/callgrind.out.%p", *command],
            stdout=subprocess.DEVNULL, stderr=open(f"{out_dir}/gatewayd.log", "wb"), cwd=instructions.ROOT,
            env={**os.environ, SWITCH_FILE: str(setting_file)})
        instructions.wait_healthy(gateway, port, 180, f"{out_dir}/gatewayd.log")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(args.requests):  # what the first requests do once (imports, first flushes)
            instructions.request(conn, path, body, key)
        setting = "a"
        order = (["a", "b", "b", "a"] * args.pairs)[:2 * args.pairs]
        for wanted in order:
            warmup = args.warmup
            if wanted != setting:
                if args.request_id:
                    setting_file.write_text(wanted)
                    gateway.send_signal(signal.SIGUSR2)
                    time.sleep(0.5)
                    conn.close()  # the switch holds for connections accepted after it
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                else:
                    before = config_version(conn)
                    write(wanted)
                    gateway.send_signal(signal.SIGHUP)
                    deadline = time.monotonic() + 120
                    while config_version(conn) == before:
                        if time.monotonic() > deadline or gateway.poll() is not None:
                            raise SystemExit(f"the reload was not applied; see {out_dir}/gatewayd.log")
                        time.sleep(0.2)
                    warmup = max(warmup, ring_of(wanted))
                setting = wanted
            for _ in range(warmup):
                instructions.request(conn, path, body, key)
            subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
            for _ in range(args.requests):
                instructions.request(conn, path, body, key)
            subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True)
            total = instructions.main_thread_total(out_dir, gateway.pid)
            clocked = instructions.clock_driven_total(out_dir, gateway.pid)
            figures[setting].append((total / args.requests, (total - clocked) / args.requests))
            print(f"{setting}: {total / args.requests:,.0f} instructions per request "
                  f"({(total - clocked) / args.requests:,.0f} without timers and collections)", flush=True)
    finally:
        for process in (gateway, upstream):
            instructions.stop(process)
        if args.keep:
            print(f"callgrind's dumps: {out_dir}", flush=True)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
    for index, label in ((0, "all"), (1, "without timers and collections")):
        added = [a[index] - b[index] for a, b in zip(figures["a"], figures["b"], strict=True)]
        base = statistics.mean(b[index] for b in figures["b"])
        spread = statistics.stdev(added) / len(added) ** 0.5 if len(added) > 1 else 0.0
        print(f"A against B, {label}: {', '.join(f'{d:+,.0f}' for d in added)}; mean {statistics.mean(added):+,.0f} "
              f"({100 * statistics.mean(added) / base:+.2f} %), median {statistics.median(added):+,.0f}, "
              f"standard error {spread:,.0f}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=yaml.safe_load, default=None, metavar="YAML", help="setting A's sections")
    parser.add_argument("--b", type=yaml.safe_load, default=None, metavar="YAML", help="setting B's sections")
    parser.add_argument("--with", dest="common", type=yaml.safe_load, default=None, metavar="YAML",
                        help="sections set under both, e.g. '{server: {recent_requests: 0}}'")
    parser.add_argument("--request-id", action="store_true", help="A: with x-request-id, B: without it")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per pass")
    parser.add_argument("--warmup", type=int, default=200, help="requests before each pass")
    parser.add_argument("--kind", default="chat", choices=sorted(instructions.KINDS))
    parser.add_argument("--port-offset", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep callgrind's dumps (one per pass), to compare")
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=beside_python, help="the gatewayd to measure (--a/--b)")
    args = parser.parse_args()
    if args.request_id == (args.a is not None or args.b is not None):
        parser.error("give either --request-id or --a and --b")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
