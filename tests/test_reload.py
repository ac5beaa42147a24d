"""Hot reload through the real daemon process: every trigger, coalescing,
rejections that keep the old graph serving, state that survives, streams in flight.

Each test runs `gatewayd run` as a subprocess in front of fake OpenAI upstreams
on 127.0.0.1 whose answers name them ("from A", "from B"). A file edit is
followed by a bounded poll; the one fixed sleep checks that nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.reload_client import Target, endpoint, read_target, reload_running
from tests.daemon_proc import (
    Daemon,
    Upstream,
    config_dir,
    free_port,
    gatewayd_reload,
    read_stream,
    rename_save,
    routed_config,
    wait_until,
    write_in_place,
)


def version_of(path: Path, env) -> str:
    return load(str(path), env).graph.version


def first_problem(path: Path, env) -> str:
    try:
        load(str(path), env)
    except ConfigError as error:
        return str(error.problems[0])
    raise AssertionError(f"{path} is valid")


async def served_by(gw: Daemon, expected: str, timeout: float = 5.0) -> tuple[int, str, str]:
    async def probe():
        answer = await gw.chat()
        return answer if answer[1] == expected else None
    return await wait_until(probe, timeout, what=f"answers {expected!r}")


async def test_edits_in_place_and_rename_saves_apply_and_identical_rewrites_do_not(tmp_path):
    async with Upstream("A") as a, Upstream("B") as b:
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw:
            assert (await gw.chat())[1] == "from A"
            version_a = (await gw.status())["config"]["version"]

            started = time.monotonic()
            write_in_place(path, routed_config(port, b.url))
            _, _, version_b = await served_by(gw, "from B")
            print(f"write in place served after {time.monotonic() - started:.2f} s")
            last = (await gw.status())["last_reload"]
            assert last["ok"] and last["changed"] and last["trigger"] == "file" and last["error"] is None
            assert version_b == last["version"] == version_of(path, gw.env) != version_a

            started = time.monotonic()
            rename_save(path, routed_config(port, a.url))
            _, _, version = await served_by(gw, "from A")
            print(f"rename-save served after {time.monotonic() - started:.2f} s")
            assert version == version_a  # the same resolved config is the same version

            status = await gw.status()
            rename_save(path, routed_config(port, a.url))
            last = await gw.wait_reload(status["last_reload"]["at"])
            assert last["ok"] and not last["changed"] and last["version"] == version_a
            again = await gw.status()
            assert again["config"] == status["config"]  # nothing was swapped: same loaded_at
            assert (await gw.reloads())[("unchanged", "file")] >= 1

            # rewritten every 100 ms for 3 s: the settle wait is bounded, so reloads still happen
            async def file_reloads() -> float:
                return sum(n for (result, trigger), n in (await gw.reloads()).items() if trigger == "file")
            before = await file_reloads()
            deadline = time.monotonic() + 3
            writes = 0
            while time.monotonic() < deadline:
                writes += 1
                rename_save(path, routed_config(port, (a, b)[writes % 2].url))
                await asyncio.sleep(0.1)
            during = await file_reloads() - before
            print(f"rewritten {writes} times in 3 s: {during:.0f} reloads meanwhile")
            assert during >= 2


async def test_configmap_data_symlink_swap_applies(tmp_path):
    """Kubernetes: gateway.yaml -> ..data/gateway.yaml, ..data -> ..TIMESTAMP; an update
    writes a new ..TIMESTAMP folder and renames a fresh symlink over ..data."""
    async with Upstream("A") as a, Upstream("B") as b:
        port = free_port()
        folder, path = config_dir(tmp_path)

        def publish(name: str, text: str) -> None:
            (folder / name).mkdir()
            (folder / name / "gateway.yaml").write_text(text)
            os.symlink(name, folder / "..data_tmp")
            os.replace(folder / "..data_tmp", folder / "..data")

        publish("..2026_01", routed_config(port, a.url))
        os.symlink("..data/gateway.yaml", path)
        async with Daemon(path, port, tmp_path) as gw:
            assert (await gw.chat())[1] == "from A"
            publish("..2026_02", routed_config(port, b.url))
            shutil.rmtree(folder / "..2026_01")
            await served_by(gw, "from B")
            publish("..2026_03", routed_config(port, a.url))  # a second swap is seen too
            shutil.rmtree(folder / "..2026_02")
            await served_by(gw, "from A")
            last = (await gw.status())["last_reload"]
            assert last["ok"] and last["trigger"] == "file"


async def test_a_symlinked_config_is_watched_where_it_points(tmp_path):
    async with Upstream("A") as a, Upstream("B") as b:
        port = free_port()
        _, path = config_dir(tmp_path)
        one, two = tmp_path / "one" / "gateway.yaml", tmp_path / "two" / "gateway.yaml"
        for target in (one, two):
            target.parent.mkdir()
            target.write_text(routed_config(port, a.url))
        os.symlink(one, path)
        async with Daemon(path, port, tmp_path) as gw:
            write_in_place(one, routed_config(port, b.url))  # an edit only the target's folder sees
            await served_by(gw, "from B")
            os.symlink(two, path.with_name("link.tmp"))  # `ln -sfn`: re-point the link
            os.replace(path.with_name("link.tmp"), path)
            await served_by(gw, "from A")
            write_in_place(two, routed_config(port, b.url))  # the watch followed the link
            await served_by(gw, "from B")


async def test_sighup_api_and_cli_apply_a_rotated_key_file_and_cli_reports_rejection(tmp_path):
    """The key file lives outside the watched folder, so only the trigger under test sees it."""
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        key = tmp_path / "keys" / "up"
        key.parent.mkdir()
        key.write_text("sk-one\n")
        path.write_text(routed_config(port, a.url, extra_provider=f"    api_key_file: {key}\n"))
        async with Daemon(path, port, tmp_path) as gw:
            assert (await gw.chat())[1] == "from A" and a.keys[-1] == "Bearer sk-one"
            version_1 = (await gw.status())["config"]["version"]

            key.write_text("sk-two\n")  # rotated: nothing notices until asked
            await asyncio.sleep(0.4)
            assert (await gw.status())["config"]["version"] == version_1
            gw.signal(signal.SIGHUP)
            last = await gw.wait_reload(None)
            assert last["ok"] and last["changed"] and last["trigger"] == "signal"
            assert last["version"] == version_of(path, gw.env) != version_1
            assert (await gw.chat())[1] == "from A" and a.keys[-1] == "Bearer sk-two"

            key.write_text("sk-three\n")
            result = await gw.reload()
            assert result["ok"] and result["changed"] and result["trigger"] == "api"
            assert result["version"] == version_of(path, gw.env) and result["errors"] == []
            assert set(result) >= {"ok", "changed", "version", "error", "errors", "warnings", "at", "duration_ms"}
            assert (await gw.chat())[1] == "from A" and a.keys[-1] == "Bearer sk-three"

            key.write_text("sk-four\n")
            code, out, err = await gatewayd_reload(path)
            assert code == 0, err
            assert f"reload accepted: version {version_of(path, gw.env)} (changed)" in out
            assert (await gw.status())["last_reload"]["trigger"] == "cli"
            assert (await gw.chat())[1] == "from A" and a.keys[-1] == "Bearer sk-four"

            serving = (await gw.status())["config"]["version"]
            write_in_place(path, path.read_text().replace("targets: [m]", "targets: [m"))
            code, out, err = await gatewayd_reload(path)
            assert code == 1
            assert first_problem(path, gw.env) in err and f"{path}:" in err
            status, text, version = await gw.chat()
            assert (status, text, version) == (200, "from A", serving)
            counts = await gw.reloads()
            assert counts[("rejected", "cli")] == 1
            assert counts[("accepted", "signal")] == counts[("accepted", "api")] == counts[("accepted", "cli")] == 1


async def test_a_hundred_sighups_in_a_second_coalesce(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw:
            before = sum((await gw.reloads()).values())
            started = time.monotonic()
            for _ in range(10):
                for _ in range(10):
                    gw.signal(signal.SIGHUP)
                await asyncio.sleep(0.09)
            assert time.monotonic() - started < 1.5

            async def settled():
                first = sum((await gw.reloads()).values())
                await asyncio.sleep(0.5)
                return first if first == sum((await gw.reloads()).values()) else None
            after = await wait_until(settled, 10, what="reloads to stop")
            print(f"100 SIGHUPs -> {after - before:.0f} reloads")
            assert 1 <= after - before <= 20
            assert gw.proc.poll() is None and (await gw.chat())[1] == "from A"


@pytest.fixture
def notify(tmp_path):
    """systemd's end of sd_notify: a datagram socket the daemon's NOTIFY_SOCKET names."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.setblocking(False)
        yield sock


async def test_rejected_reloads_keep_the_old_graph_serving(tmp_path, notify):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        good = routed_config(port, a.url)
        path.write_text(good)
        cycle = good.replace("    targets: [m]\n", "    targets: [m]\n    fallbacks: [other]\n") + (
            "  other:\n    targets: [m]\n    fallbacks: [chat]\n")
        missing = tmp_path / "keys" / "missing"
        cases = {
            "bad YAML": lambda: write_in_place(path, good.replace("targets: [m]", "targets: [m")),
            "schema error": lambda: rename_save(path, good.replace("{attempts: 1}", "{attempts: many}")),
            "fallback cycle": lambda: rename_save(path, cycle),
            "deleted file": lambda: path.unlink(),
            "half-written file": lambda: write_in_place(path, good[:good.index("models:") + 3]),
            "missing secret file": lambda: rename_save(
                path, routed_config(port, a.url, extra_provider=f"    api_key_file: {missing}\n")),
        }
        def datagrams() -> list[str]:
            got = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(notify.recv(4096).decode())
            return got

        async with Daemon(path, port, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}) as gw:
            serving = (await gw.status())["config"]["version"]
            assert any(d.startswith("READY=1") for d in datagrams())
            for rejected, (name, breaks) in enumerate(cases.items(), start=1):
                breaks()
                expected = first_problem(path, gw.env)

                async def rejected_with_it(expected=expected):
                    last = (await gw.status())["last_reload"]
                    return last if last and not last["ok"] and last["error"] == expected else None
                last = await wait_until(rejected_with_it, 5, what=f"{name} to be rejected")
                assert last["version"] == serving and not last["changed"], name
                assert last["error"].startswith(f"{path}:") and last["error"].split(":")[1].isdigit(), name
                assert (await gw.chat()) == (200, "from A", serving), name
                status = await gw.status()
                assert status["config"]["version"] == serving and status["deployments"]["m"]["state"] == "ok"
                assert sum(n for (result, _), n in (await gw.reloads()).items() if result == "rejected") >= rejected
                assert f"error: {expected}" in gw.log(), name
                sent = datagrams()
                assert any(re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", d) for d in sent), sent
                assert any(d.startswith(f"READY=1\nSTATUS=reload rejected: {expected}") for d in sent), sent

                rename_save(path, good)  # repaired: the same config as the one serving

                async def repaired():
                    last = (await gw.status())["last_reload"]
                    return last if last["ok"] else None
                last = await wait_until(repaired, 5, what=f"the repair after {name}")
                assert not last["changed"] and last["version"] == serving, name
                assert datagrams()[-1] == f"READY=1\nSTATUS=reload accepted: config {serving} unchanged"


async def test_a_reload_that_turns_log_format_to_json_switches_every_line_after_it(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        text = routed_config(port, a.url)
        path.write_text(text)
        async with Daemon(path, port, tmp_path) as gw:
            assert (await gw.chat())[0] == 200
            rename_save(path, text.replace("  shutdown_grace: 3s\n", "  shutdown_grace: 3s\n  log_format: json\n"))
            assert (await gw.reload())["version"] == version_of(path, os.environ)
            assert (await gw.chat())[0] == 200
        lines = gw.log().rstrip("\n").split("\n")
    # a host with a low open-files limit says so before anything else
    lines = [line for line in lines if not line.startswith("open files are limited")]
    assert lines[0].startswith("gatewayd serving on 127.0.0.1:")  # text, as it always was
    assert lines[1].startswith("POST /v1/chat/completions 200 ")
    switched = next(i for i, line in enumerate(lines) if line.startswith("{"))
    assert all(not line.startswith("{") for line in lines[:switched])
    records = [json.loads(line) for line in lines[switched:]]  # every line from the reload on
    assert records[0]["event"] == "reload" and records[0]["result"] == "accepted"
    assert all({"ts", "level", "event", "msg"} <= set(record) for record in records)
    events = [record["event"] for record in records]
    assert "access" in events and events[-3:] == ["stop_signal", "drain", "stopped"]


async def test_listen_change_is_reported_and_the_rest_applied(tmp_path):
    async with Upstream("A") as a, Upstream("B") as b:
        port, other = free_port(), free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw, gw.session.get(gw.url + "/admin/events") as events:
            assert events.status == 200
            rename_save(path, routed_config(other, b.url))
            result = await gw.reload()
            warning = f"server.listen changed from 127.0.0.1:{port} to 127.0.0.1:{other}: restart gatewayd to apply it"
            assert result["ok"] and result["changed"] and result["warnings"] == [warning]
            event = await asyncio.wait_for(next_event(events, "reload"), 5)
            assert {k: event[k] for k in ("result", "version", "trigger", "error", "warnings")} == {
                "result": "accepted", "version": result["version"], "trigger": "api", "error": None,
                "warnings": [warning]}
            assert (await gw.chat())[1] == "from B"  # still on the old port, with the new routes
            assert (await gw.status())["last_reload"]["warnings"] == [warning]
            assert warning in gw.log()


async def next_event(stream, kind: str) -> dict:
    """The data of the next server-sent event of `kind` on /admin/events."""
    current = None
    async for line in stream.content:
        line = line.decode().strip()
        if line.startswith("event:"):
            current = line[6:].strip()
        elif line.startswith("data:") and current == kind:
            return json.loads(line[5:])
    raise AssertionError(f"the event stream ended before a {kind} event")


async def test_cooldown_survives_a_rename_and_resets_for_a_new_identity(tmp_path):
    async with Upstream("A") as a:
        a.fail_status = 500
        port = free_port()
        _, path = config_dir(tmp_path)
        policy = "  cooldown: {failures: 1, initial: 60s}\n"
        path.write_text(routed_config(port, a.url, policy=policy))
        async with Daemon(path, port, tmp_path) as gw:
            assert (await gw.chat())[0] in (502, 503)
            before = (await gw.status())["deployments"]["m"]
            assert before["state"] == "cooldown" and before["cooldown_until"]

            rename_save(path, routed_config(port, a.url, policy=policy, model="renamed"))
            assert (await gw.reload())["changed"]
            after = (await gw.status())["deployments"]
            assert list(after) == ["renamed"]
            assert after["renamed"]["state"] == "cooldown"
            assert after["renamed"]["cooldown_until"] == before["cooldown_until"]
            assert after["renamed"]["last_error"] == before["last_error"]
            calls = a.calls
            assert (await gw.chat())[0] == 503 and a.calls == calls  # still resting: not asked

            rename_save(path, routed_config(port, a.url, policy=policy, model="renamed", upstream_model="model-y"))
            assert (await gw.reload())["changed"]
            fresh = (await gw.status())["deployments"]["renamed"]
            assert fresh["state"] == "ok" and fresh["cooldown_until"] is None and fresh["last_error"] is None


async def test_a_stream_in_flight_finishes_on_its_old_upstream(tmp_path):
    async with Upstream("A", pieces=10, gap=0.1) as a, Upstream("B") as b:
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw:
            version_a = (await gw.status())["config"]["version"]
            body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with gw.session.post(gw.url + "/v1/chat/completions", json=body) as old_stream:
                assert old_stream.status == 200
                assert old_stream.headers["x-gatewayd-config"] == version_a
                first = await asyncio.wait_for(old_stream.content.readline(), 5)
                assert b"from A 0;" in first

                rename_save(path, routed_config(port, b.url))
                result = await gw.reload()
                assert result["changed"]
                assert await gw.chat() == (200, "from B", result["version"])
                async with gw.session.post(gw.url + "/v1/chat/completions", json=body) as new_stream:
                    assert new_stream.headers["x-gatewayd-config"] == result["version"]
                    assert await read_stream(new_stream) == ("from B 0;from B 1;from B 2;", True)

                rest, done = await asyncio.wait_for(read_stream(old_stream), 10)
                assert done, "the old stream ended without [DONE]"
                assert "from A 0;" + rest == "".join(f"from A {i};" for i in range(10))
            assert b.calls == 2 and a.calls == 1


async def test_cli_presents_the_admin_key_and_the_api_needs_one(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        auth = '  auth:\n    keys:\n      - {name: ops, key: "${OPS_KEY:-unset}", role: admin}\n'
        path.write_text(routed_config(port, a.url).replace("  shutdown_grace: 3s\n", "  shutdown_grace: 3s\n" + auth))
        async with Daemon(path, port, tmp_path, env={"OPS_KEY": "k-ops"},
                          headers={"Authorization": "Bearer k-ops"}) as gw:
            async with gw.session.post(gw.url + "/admin/reload", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            assert (await gw.reload())["ok"]
            code, out, err = await gatewayd_reload(path, {"OPS_KEY": "k-ops"})
            assert code == 0 and "reload accepted" in out, err
            code, out, err = await gatewayd_reload(path, {"OPS_KEY": "not-it"})
            assert code == 1 and "401" in err


def test_cli_says_when_no_daemon_answers(tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"version: 1\nserver: {{listen: 127.0.0.1:{free_port()}}}\n")
    assert reload_running(str(path)) == 1
    assert "cannot reach gatewayd at 127.0.0.1:" in capsys.readouterr().err


def test_cli_finds_the_daemon_even_in_a_broken_edit():
    env = {"OPS_KEY": "k1"}
    assert read_target("server:\n  listen: 127.0.0.1:9999\n", env) == Target("127.0.0.1:9999", None)
    broken = ('server:\n  listen: "[::1]:7000"\n  auth:\n    keys:\n      - name: x\n        key: ${OPS_KEY}\n'
              '        role: admin\nmodels: [\n')
    assert read_target(broken, env) == Target("[::1]:7000", "k1")
    assert read_target("server: {auth: {keys: [{name: x, key: '${NO_SUCH_VAR:-dflt}', role: admin}]}}",
                       env) == Target("127.0.0.1:8080", "dflt")
    assert read_target("", env) == Target("127.0.0.1:8080", None)
    assert read_target("server: [\n", env) == Target("127.0.0.1:8080", None)


async def test_cli_endpoints():
    assert endpoint("0.0.0.0:8080")[0] == "http://127.0.0.1:8080"
    assert endpoint("[::]:81")[0] == "http://[::1]:81"
    assert endpoint("[::1]:81")[0] == "http://[::1]:81"
    url, connector = endpoint("unix:/run/gatewayd.sock")
    assert url == "http://gatewayd" and connector.path == "/run/gatewayd.sock"
    await connector.close()
