"""`server.workers: 2` through the real daemon: a supervisor process and two workers sharing the
listen port (SO_REUSEPORT), in front of fake OpenAI upstreams on 127.0.0.1.

The kernel hands each new connection to one worker by the connection's hash, so the tests that
need both workers open many fresh connections (bounded) until both answered. Which worker
answered shows in /admin/status (`worker.pid`) and in the per-process prefix of made
`x-request-id`s. The supervisor is stopped by PID (tests/daemon_proc.py); its workers are
waited for by PID afterwards, and killed by PID should one outlive it. Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.observe.metrics import Metrics
from gatewayd.daemon.workers_metrics import merge
from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, gatewayd_reload, wait_until
from tests.test_lifecycle import NotifySocket, refused

START_TIMEOUT = 30.0


def workers_config(port: int, upstream_url: str, key_file: Path, *, grace: str = "10s") -> str:
    """Two workers; provider `up`'s key comes from `key_file`, which lies outside the watched
    folder: only an explicit reload sees it change."""
    return f"""version: 1
server:
  listen: 127.0.0.1:{port}
  workers: 2
  shutdown_grace: {grace}
defaults:
  retry: {{attempts: 1}}
providers:
  up:
    type: openai
    base_url: "{upstream_url}"
    api_key_file: {key_file}
models:
  m: {{provider: up, model: model-x}}
aliases:
  chat: {{targets: [m]}}
"""


def prepared(tmp_path: Path, upstream: Upstream, port: int | None = None, **options) -> tuple[Path, Path, int]:
    """(config path, key file, port) of a two-worker config in front of `upstream`."""
    _, path = config_dir(tmp_path)
    key = tmp_path / "keys" / "up"
    key.parent.mkdir()
    key.write_text("sk-one\n")
    port = port or free_port()
    path.write_text(workers_config(port, upstream.url, key, **options))
    return path, key, port


def fresh_connections() -> aiohttp.ClientSession:
    """A session that opens a new connection for every request, so the kernel picks a worker each time."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=30))


def sdk_client(gw: Daemon) -> openai.AsyncOpenAI:
    """The official SDK, one connection per request (`Connection: close`), no retries of its own."""
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30,
                              default_headers={"Connection": "close"})


def id_prefix(request_id: str) -> str:
    """The per-process part of a made request id (`req_3f9a61c2d84e_1041` -> `req_3f9a61c2d84e`)."""
    assert re.fullmatch(r"req_[0-9a-f]{12}_\d+", request_id), request_id
    return request_id.rsplit("_", 1)[0]


async def answering_pids(gw: Daemon, wanted: int, tries: int = 200) -> set[int]:
    """The pids of the workers that answered /admin/status over fresh connections, until `wanted`
    distinct ones answered (at most `tries` requests)."""
    pids: set[int] = set()
    async with fresh_connections() as session:
        for _ in range(tries):
            async with session.get(gw.url + "/admin/status") as response:
                pids.add((await response.json())["worker"]["pid"])
            if len(pids) >= wanted:
                break
    return pids


async def workers_of(gw: Daemon) -> list[dict]:
    return (await gw.status())["workers"]


def metric_sum(text: str, family_name: str) -> float:
    """The sum of every sample of one family's main series (`_total` for a counter)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            total += sum(s.value for s in family.samples if s.name in (family_name, family_name + "_total"))
    return total


async def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once no process `pid` exists (polled, bounded); kills it by PID if it outlives `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False


async def test_two_workers_serve_one_ready_and_metrics_count_them_all(tmp_path):
    notify = NotifySocket()
    try:
        async with Upstream("A") as upstream:
            path, _, port = prepared(tmp_path, upstream)
            async with Daemon(path, port, tmp_path, env={"NOTIFY_SOCKET": notify.path,
                                                        "WATCHDOG_USEC": "1000000"}) as gw:
                ready = await notify.next(START_TIMEOUT)
                assert ready.startswith("READY=1\nSTATUS=serving config "), ready
                assert ready.endswith("with 2 workers")

                workers = await workers_of(gw)
                pids = {worker["pid"] for worker in workers}
                assert [worker["index"] for worker in workers] == [0, 1]
                assert len(pids) == 2 and gw.proc.pid not in pids  # the supervisor serves nothing itself
                version = (await gw.status())["config"]["version"]
                assert {(w["state"], w["version"]) for w in workers} == {("serving", version)}
                assert await answering_pids(gw, 2) == pids

                sent, prefixes = 0, set()
                async with sdk_client(gw) as client:
                    while len(prefixes) < 2 and sent < 200:
                        raw = await client.chat.completions.with_raw_response.create(
                            model="chat", messages=[{"role": "user", "content": "hi"}])
                        sent += 1
                        assert raw.parse().choices[0].message.content == "from A"
                        prefixes.add(id_prefix(raw.headers["x-request-id"]))
                assert len(prefixes) == 2, "every request reached the same worker"

                async with gw.session.get(gw.url + "/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
                assert metric_sum(text, "gatewayd_requests") == sent == upstream.calls
                inflight = [f for f in text_string_to_metric_families(text) if f.name == "gatewayd_inflight_requests"]
                assert sorted(s.labels["worker"] for s in inflight[0].samples) == ["0", "1"]

                await asyncio.sleep(0.6)  # a watchdog ping comes every 500 ms: the supervisor's loop runs them
                later = notify.pending()
                assert "WATCHDOG=1" in later or notify.watchdog
                assert not [d for d in later if d.startswith("READY=1")], later  # READY=1 came once
        assert all([await gone(pid) for pid in pids])
    finally:
        notify.close()


async def test_a_reload_reaches_every_worker_and_a_rejected_one_none(tmp_path):
    notify = NotifySocket()
    try:
        async with Upstream("A") as upstream:
            path, key, port = prepared(tmp_path, upstream)
            async with Daemon(path, port, tmp_path, env={"NOTIFY_SOCKET": notify.path}) as gw:
                assert (await notify.next(START_TIMEOUT)).startswith("READY=1")
                first = (await gw.status())["config"]["version"]

                key.write_text("sk-two\n")  # outside the watched folder: only this reload sees it
                result = await gw.reload()
                assert result["ok"] and result["changed"] and result["trigger"] == "api", result
                assert result["version"] != first
                assert result["diff"] is not None
                reloading = await notify.next()
                assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading
                assert (await notify.next()).startswith("READY=1\nSTATUS=reload accepted")
                assert {(w["state"], w["version"]) for w in await workers_of(gw)} == {("serving", result["version"])}

                async with sdk_client(gw) as client:
                    for _ in range(12):
                        raw = await client.chat.completions.with_raw_response.create(
                            model="chat", messages=[{"role": "user", "content": "hi"}])
                        assert raw.headers["x-gatewayd-config"] == result["version"]
                assert set(upstream.keys) == {"Bearer sk-two"}

                key.unlink()  # a missing secret file: every worker would refuse it
                code, out, err = await gatewayd_reload(path)
                assert code == 1, (out, err)
                line = path.read_text().splitlines().index(f"    api_key_file: {key}") + 1
                assert f"{path}:{line}:" in err  # FILE:LINE:COL of api_key_file
                assert (await notify.next()).startswith("RELOADING=1")
                assert (await notify.next()).startswith(f"READY=1\nSTATUS=reload rejected: {path}:{line}:")
                assert {(w["state"], w["version"]) for w in await workers_of(gw)} == {("serving", result["version"])}
                status = await gw.status()
                assert status["last_reload"]["ok"] is False and status["last_reload"]["trigger"] == "cli"
                assert status["config"]["version"] == result["version"]

                counts = await gw.reloads()  # counted once, by the supervisor, whatever the worker count
                assert counts == {("accepted", "api"): 1.0, ("rejected", "cli"): 1.0}
    finally:
        notify.close()


async def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(tmp_path):
    async with Upstream("A") as upstream:
        path, _, port = prepared(tmp_path, upstream)
        async with Daemon(path, port, tmp_path) as gw:
            await wait_until(lambda: all_serving(gw), START_TIMEOUT, what="both workers to serve")
            before = {w["index"]: w["pid"] for w in await workers_of(gw)}

            failures, succeeded = 0, 0
            async with sdk_client(gw) as client:
                async def one() -> None:
                    nonlocal failures, succeeded
                    try:
                        await client.chat.completions.create(model="chat",
                                                             messages=[{"role": "user", "content": "hi"}])
                        succeeded += 1
                    except openai.APIConnectionError:  # the one request on the worker as it died
                        failures += 1

                for _ in range(5):
                    await one()
                os.kill(before[0], signal.SIGKILL)
                for _ in range(30):  # a client sending one request at a time: at most one was on it
                    await one()
                assert failures <= 1 and succeeded >= 34

                async def replaced():
                    workers = await workers_of(gw)
                    return workers if workers[0]["pid"] not in (before[0], None) and \
                        workers[0]["state"] == "serving" else None
                workers = await wait_until(replaced, 20, interval=0.2, what="worker 0 to be replaced")
                assert workers[1]["pid"] == before[1]  # the other one was left alone
                assert await gone(before[0])
                assert f"worker 0 (pid {before[0]}) was killed by SIGKILL" in gw.log()

                succeeded = 0
                for _ in range(10):
                    await one()
                assert succeeded == 10 and failures <= 1
            async with gw.session.get(gw.url + "/metrics") as response:
                assert metric_sum(await response.text(), "gatewayd_worker_restarts") == 1


async def all_serving(gw: Daemon) -> bool:
    workers = await workers_of(gw)
    return len(workers) == 2 and all(w["state"] == "serving" for w in workers)


async def test_sigterm_drains_every_worker(tmp_path):
    notify = NotifySocket()
    try:
        async with Upstream("slow", pieces=10, gap=0.2) as upstream:
            path, _, port = prepared(tmp_path, upstream)
            async with Daemon(path, port, tmp_path, env={"NOTIFY_SOCKET": notify.path}) as gw:
                assert (await notify.next(START_TIMEOUT)).startswith("READY=1")
                pids = [w["pid"] for w in await workers_of(gw)]
                body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
                async with fresh_connections() as session:
                    streams, prefixes = [], set()
                    while len(prefixes) < 2 and len(streams) < 16:  # until each worker holds a stream
                        response = await session.post(gw.url + "/v1/chat/completions", json=body)
                        assert response.status == 200
                        assert (await asyncio.wait_for(response.content.readline(), 5)).startswith(b"data: ")
                        streams.append(response)
                        prefixes.add(id_prefix(response.headers["x-request-id"]))
                    assert len(prefixes) == 2

                    gw.signal(signal.SIGTERM)
                    assert await notify.next() == "STOPPING=1"
                    assert await refused(port), "new connections were still accepted after SIGTERM"
                    for response in streams:
                        payloads = []
                        async with asyncio.timeout(15):
                            async for line in response.content:
                                if line.startswith(b"data: "):
                                    payloads.append(line[6:].rstrip(b"\r\n"))
                        response.release()
                        assert payloads[-1] == b"[DONE]"
                        pieces = [orjson.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]]
                        assert "".join(pieces).endswith("from slow 9;")
                deadline = time.monotonic() + 15
                while gw.proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert gw.proc.returncode == 0
                assert all([await gone(pid) for pid in pids])
                assert gw.log().count("stopping: no longer accepting") == 2  # each worker drained
    finally:
        notify.close()


async def test_a_worker_that_cannot_listen_fails_the_start_before_ready(tmp_path):
    notify = NotifySocket()
    try:
        with socket.socket() as taken:  # a plain socket without SO_REUSEPORT holds the port
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            async with Upstream("A") as upstream:
                path, _, _ = prepared(tmp_path, upstream, port)
                env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
                env.update(NOTIFY_SOCKET=notify.path, RUNTIME_DIRECTORY=str(tmp_path / "run"))
                run = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gatewayd.daemon.cli", "run", "-c", str(path), cwd=path.parent, env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                try:
                    _, err = await asyncio.wait_for(run.communicate(), START_TIMEOUT)
                finally:
                    if run.returncode is None:
                        run.kill()
                        await run.wait()
        log = err.decode()
        assert run.returncode == 1, log
        assert "not started: not every worker came to serve" in log
        assert re.search(r"worker \d \(pid \d+\) exited with status 1 before serving", log)
        assert not [d for d in notify.pending() if d.startswith("READY=1")]
    finally:
        notify.close()


def test_workers_compile_auto_and_refuse_a_unix_socket(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\nserver:\n  listen: 127.0.0.1:8080\n  workers: auto\n")
    assert load(str(path), {}).graph.server.workers == 0  # one per CPU, counted at start
    path.write_text("version: 1\nserver:\n  listen: unix:/run/gatewayd/gateway.sock\n  workers: 2\n")
    with pytest.raises(ConfigError) as refused_config:
        load(str(path), {})
    problem = refused_config.value.problems[0]
    assert (problem.line, "host:port" in problem.message) == (4, True)


def test_metrics_of_two_workers_merge_into_one_exposition():
    first, second = Metrics(), Metrics()
    for metrics, version in ((first, "v1"), (second, "v1")):
        metrics.set_config(version)
        metrics.failure("m", "server")
    second.failure("m", "timeout")
    text = merge([("0", first.render().decode()), ("1", second.render().decode())]).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    failures = {(s.labels["class"], s.value) for s in families["gatewayd_upstream_failures"].samples}
    assert failures == {("server", 2.0), ("timeout", 1.0)}  # summed, no worker label
    configs = {(s.labels["worker"], s.labels["version"]) for s in families["gatewayd_config_info"].samples}
    assert configs == {("0", "v1"), ("1", "v1")}  # a gauge per worker
    created = families["gatewayd_upstream_failures_created"].samples
    assert "worker" not in created[0].labels and len(created) == 2
