"""Reload under load: 20 concurrent clients (some streaming) for 10 s against the real
daemon while the config is rewritten every 300 ms, alternating two valid versions
that route `chat` to two different upstreams. No request may fail, and every
answer must come wholly from the graph version its x-gatewayd-config names.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

from gatewayd.daemon.config.load import load
from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, read_stream, rename_save, routed_config

CLIENTS = 20
STREAMING = 6  # of the clients
SECONDS = 10.0
REWRITE_EVERY = 0.3


async def test_reload_under_load(tmp_path):
    async with Upstream("A", pieces=4, gap=0.02) as a, Upstream("B", pieces=4, gap=0.02) as b:
        port = free_port()
        _, path = config_dir(tmp_path)
        texts = [routed_config(port, a.url), routed_config(port, b.url)]
        versions = {}
        for name, text in zip("AB", texts, strict=True):
            path.write_text(text)
            versions[load(str(path)).graph.version] = name
        async with Daemon(path, port, tmp_path) as gw:
            stop = time.monotonic() + SECONDS
            served: Counter = Counter()
            seen: Counter = Counter()
            failures: list[str] = []

            async def client(index: int) -> None:
                stream = index < STREAMING
                body = {"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
                while time.monotonic() < stop:
                    try:
                        async with gw.session.post(gw.url + "/v1/chat/completions", json=body) as response:
                            version = response.headers.get("x-gatewayd-config", "")
                            if response.status != 200:
                                failures.append(f"{response.status}: {await response.text()}")
                                continue
                            if stream:
                                text, done = await read_stream(response)
                                name = versions.get(version, "?")
                                ok = done and text == "".join(f"from {name} {i};" for i in range(4))
                            else:
                                text = (await response.json())["choices"][0]["message"]["content"]
                                name = versions.get(version, "?")
                                ok = text == f"from {name}"
                            if not ok:
                                failures.append(f"version {version} ({name}) answered {text!r}")
                                continue
                            served[name] += 1
                            seen[version] += 1
                    except Exception as exc:  # noqa: BLE001 - every failure is counted, then asserted
                        failures.append(repr(exc))

            async def rewrite() -> int:
                writes = 0
                while time.monotonic() < stop:
                    await asyncio.sleep(REWRITE_EVERY)
                    writes += 1
                    rename_save(path, texts[writes % 2])
                return writes

            started = time.monotonic()
            writes, *_ = await asyncio.gather(rewrite(), *(client(i) for i in range(CLIENTS)))
            elapsed = time.monotonic() - started
            counts = await gw.reloads()
            durations = [float(ms) for ms in re.findall(r"^reload \(\w+\).*\(([0-9.]+) ms\)$", gw.log(), re.MULTILINE)]

        total = sum(served.values()) + len(failures)
        print(f"\nreload under load: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s), "
              f"{len(failures)} failed; served by A {served['A']}, by B {served['B']}; "
              f"{writes} rewrites, versions seen {len(seen)} {dict(seen)}; reloads {dict(counts)}; "
              f"slowest reload {max(durations, default=0):.1f} ms, "
              f"median {sorted(durations)[len(durations) // 2] if durations else 0:.1f} ms")
        assert failures == [], failures[:5]
        assert served["A"] > 0 and served["B"] > 0
        assert len(seen) >= 2
        assert counts.get(("accepted", "file"), 0) >= 3
