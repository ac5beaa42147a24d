"""The req/s benches' two tools: the fake nginx upstream and a wrk run of bench/chat.lua.

    start_upstream(folder, cpus)   nginx on bench/upstream.nginx.conf (ports 18100/18101), its
                                   files in `folder`, in a session of its own (stop it by PID)
    wrk(model, conns, seconds, cpus)   one run against 127.0.0.1:18080: its BENCH_JSON line,
                                   or exit when any answer was not a 2xx or a socket failed

`cpus` pins with `taskset -c` (None: unpinned).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def pinned(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def start_upstream(folder: Path, cpus: str | None = None) -> subprocess.Popen:
    (folder / "tmp").mkdir(exist_ok=True)  # the config's client_body_temp_path
    return subprocess.Popen([*pinned(cpus), "nginx", "-p", f"{folder}/", "-e", str(folder / "nginx-error.log"),
                             "-c", str(BENCH / "upstream.nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wrk(model: str, conns: int, seconds: int, cpus: str | None = None, threads: int = 1) -> dict:
    out = subprocess.run([*pinned(cpus), "wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
                          "-s", str(BENCH / "chat.lua"), "http://127.0.0.1:18080"],
                         env={**os.environ, "BENCH_MODEL": model}, capture_output=True, text=True, check=True,
                         timeout=seconds + 60)
    line = next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))
    result = json.loads(line.removeprefix("BENCH_JSON "))
    if result["non2xx"] or result["sock_errors"]:
        raise SystemExit(f"{model}: {result['non2xx']} non-2xx answers, {result['sock_errors']} socket errors")
    return result
