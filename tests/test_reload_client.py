"""`gatewayd reload` (daemon/reload_client.py): it reloads the daemon that serves FILE and no
other, finds it through the runtime file after an edit of `server.listen`, and presents an
admin key however the file writes its keys.

The end-to-end tests run the real daemon (tests/daemon_proc.py) and the real command as
subprocesses; each daemon's runtime file lives in the test's own RUNTIME_DIRECTORY.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from gatewayd.daemon.config.load import load
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.reload_client import ADMIN_KEY_VARIABLE, Target, addresses, read_target
from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, gatewayd_reload, routed_config, write_in_place

OPS_KEY, APP_KEY = "ops-key-5e1d7c", "app-key-90af3b"
FLOW_AUTH = ('  auth: {keys: [{name: app, key: "${APP_KEY}"}, '
             '{name: ops, key: "${OPS_KEY}", role: admin}]}\n')


def with_auth(config: str, auth: str = FLOW_AUTH) -> str:
    return config.replace("  shutdown_grace: 3s\n", "  shutdown_grace: 3s\n" + auth)


def first_problem(path: Path, env: dict[str, str]) -> str:
    try:
        load(str(path), env)
    except ConfigError as error:
        return str(error.problems[0])
    raise AssertionError(f"{path} is valid")


# --- which daemon --------------------------------------------------------------------------


async def test_a_daemon_serving_another_file_is_named_and_not_reloaded(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, served = config_dir(tmp_path)
        served.write_text(routed_config(port, a.url))
        other = tmp_path / "elsewhere" / "gateway.yaml"
        other.parent.mkdir()
        other.write_text(routed_config(port, a.url))  # the same listen address
        async with Daemon(served, port, tmp_path) as gw:
            run = {"RUNTIME_DIRECTORY": gw.env["RUNTIME_DIRECTORY"]}
            code, out, err = await gatewayd_reload(other, run)
            assert code == 1 and out == ""
            assert str(served) in err and str(other) in err
            assert (await gw.status())["last_reload"] is None  # nothing was reloaded

            code, out, err = await gatewayd_reload(served, run)
            assert code == 0 and "reload accepted" in out, err
            assert (await gw.status())["last_reload"]["trigger"] == "cli"


async def test_after_a_listen_edit_the_runtime_file_still_leads_to_the_daemon(tmp_path):
    async with Upstream("A") as a, Upstream("B") as b:
        port, moved = free_port(), free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw:
            run = {"RUNTIME_DIRECTORY": gw.env["RUNTIME_DIRECTORY"]}
            write_in_place(path, routed_config(moved, b.url))  # nothing listens at `moved`
            code, out, err = await gatewayd_reload(path, run)
            assert code == 0, err
            assert "reload accepted" in out
            assert any(trigger == "cli" for _, trigger in await gw.reloads())  # the folder watch may come first
            assert (await gw.chat())[1] == "from B"

            # without the runtime file only the new address is known, and nothing answers there
            code, _, err = await gatewayd_reload(path, {"RUNTIME_DIRECTORY": str(tmp_path / "empty")})
            assert code == 1 and f"127.0.0.1:{moved}" in err


async def test_of_two_daemons_each_file_reloads_its_own(tmp_path):
    async with Upstream("A") as a:
        port_1, port_2 = free_port(), free_port()
        first, second = tmp_path / "one" / "gateway.yaml", tmp_path / "two" / "gateway.yaml"
        for path, port in ((first, port_1), (second, port_2)):
            path.parent.mkdir()
            path.write_text(routed_config(port, a.url))
        async with Daemon(first, port_1, tmp_path) as gw_1, Daemon(second, port_2, tmp_path) as gw_2:
            run = {"RUNTIME_DIRECTORY": gw_1.env["RUNTIME_DIRECTORY"]}  # shared: the second daemon's now
            assert json.loads((tmp_path / "run" / "gatewayd.json").read_text())["pid"] == gw_2.proc.pid
            # the second file now names the first daemon's address: the runtime file still leads to its own
            write_in_place(second, routed_config(port_1, a.url))
            code, out, err = await gatewayd_reload(second, run)
            assert code == 0, err
            assert (await gw_2.status())["last_reload"]["trigger"] == "cli"
            assert (await gw_1.status())["last_reload"] is None

            code, out, err = await gatewayd_reload(first, run)
            assert code == 0, err
            assert (await gw_1.status())["last_reload"]["trigger"] == "cli"


# --- which key -----------------------------------------------------------------------------


async def test_flow_style_keys_present_the_admin_key_even_in_a_broken_edit(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        good = with_auth(routed_config(port, a.url))
        path.write_text(good)
        keys = {"APP_KEY": APP_KEY, "OPS_KEY": OPS_KEY}
        async with Daemon(path, port, tmp_path, env=keys, headers={"x-api-key": OPS_KEY}) as gw:
            run = {"RUNTIME_DIRECTORY": gw.env["RUNTIME_DIRECTORY"], **keys}
            code, out, err = await gatewayd_reload(path, run)
            assert code == 0 and "reload accepted" in out, err

            broken_elsewhere = good.replace("targets: [m]", "targets: [m")
            broken_server = good.replace("shutdown_grace: 3s", "shutdown_grace: [3s")
            for broken in (broken_elsewhere, broken_server):
                write_in_place(path, broken)
                code, out, err = await gatewayd_reload(path, run)
                assert code == 1
                assert f"error: {first_problem(path, keys)}" in err  # the daemon's FILE:LINE:COL
                assert "answered" not in err and "401" not in err and "403" not in err

                write_in_place(path, good)
                code, out, err = await gatewayd_reload(path, run)
                assert code == 0, err


async def test_an_admin_key_held_as_key_sha256_comes_from_the_environment_or_a_credential(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        digest = hashlib.sha256(OPS_KEY.encode()).hexdigest()
        path.write_text(with_auth(routed_config(port, a.url),
                                  f"  auth:\n    keys:\n      - name: ops\n        key_sha256: {digest}\n"
                                  "        role: admin\n"))
        async with Daemon(path, port, tmp_path, headers={"x-api-key": OPS_KEY}) as gw:
            run = {"RUNTIME_DIRECTORY": gw.env["RUNTIME_DIRECTORY"]}
            code, out, err = await gatewayd_reload(path, run)
            assert code == 1 and ADMIN_KEY_VARIABLE in err and "key_sha256" in err
            assert (await gw.status())["last_reload"] is None

            code, out, err = await gatewayd_reload(path, {**run, ADMIN_KEY_VARIABLE: OPS_KEY})
            assert code == 0 and "reload accepted" in out, err

            code, out, err = await gatewayd_reload(path, {**run, ADMIN_KEY_VARIABLE: "not-the-key"})
            assert code == 1 and "401" in err

            credentials = tmp_path / "credentials"  # as systemd's LoadCredential=admin-key:… hands it over
            credentials.mkdir()
            (credentials / "admin-key").write_text(OPS_KEY + "\n")
            code, out, err = await gatewayd_reload(path, {**run, "CREDENTIALS_DIRECTORY": str(credentials)})
            assert code == 0 and "reload accepted" in out, err


def test_the_key_is_read_as_the_daemon_reads_it():
    env = {"OPS": "from-env"}
    flow = "server: {auth: {keys: [{name: a, key: app-1}, {name: o, key: '%s', role: admin}]}}"
    assert read_target(flow % "${OPS}", env) == Target("127.0.0.1:8080", "from-env")
    assert read_target(flow % "${UNSET:-fallback}", env).key == "fallback"
    assert read_target(flow % "$${OPS}", env).key == "${OPS}"  # the escape, as the daemon reads it
    assert read_target("server:\n  listen: ${HOST:-127.0.0.1}:9001\n", env).listen == "127.0.0.1:9001"
    assert read_target("server:\n  listen: ${HOST:-127.0.0.1}:9001\n  max_body: [\n", env).listen == "127.0.0.1:9001"


def test_a_broken_server_block_is_scanned_in_block_and_flow_style():
    env = {"OPS": "from-env"}
    block = ("server:\n  listen: 127.0.0.1:9002\n  max_body: [\n  auth:\n    keys:\n"
             "      - name: a\n        key: app-1\n      - name: o\n        role: admin\n        key: ${OPS}\n")
    assert read_target(block, env) == Target("127.0.0.1:9002", "from-env")
    flow = ('server:\n  listen: "127.0.0.1:9003"\n  max_body: [\n'
            '  auth: {keys: [{name: a, key: app-1}, {name: o, key: "${OPS}", role: admin}]}\n')
    assert read_target(flow, env) == Target("127.0.0.1:9003", "from-env")


def test_no_admin_key_to_present_is_a_clear_error():
    app_only = read_target("server: {auth: {keys: [{name: a, key: app-1}]}}", {})
    assert app_only.key is None and "role: admin" in app_only.missing_key
    assert ADMIN_KEY_VARIABLE in app_only.missing_key
    unset = read_target("server: {auth: {keys: [{name: o, key: '${OPS}', role: admin}]}}", {})
    assert unset.key is None and "'OPS'" in unset.missing_key
    empty = read_target("server: {auth: {keys: [{name: o, key: '${OPS:-}', role: admin}]}}", {})
    assert empty.key is None and "empty" in empty.missing_key
    assert read_target("server: {listen: 8080}", {}).listen == "127.0.0.1:8080"  # not a string: the default
    assert read_target("server: {auth: {keys: [{name: a, key: app-1}]}}",
                       {ADMIN_KEY_VARIABLE: "given"}) == Target("127.0.0.1:8080", "given")


def test_the_runtime_file_is_a_candidate_only_for_a_live_daemon_serving_that_file(tmp_path):
    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    config = str(tmp_path / "gateway.yaml")

    def record(pid: int, served: str) -> None:
        (tmp_path / "gatewayd.json").write_text(json.dumps(
            {"pid": pid, "listen": "127.0.0.1:7001", "config": served, "version": "0"}))

    assert addresses(config, "127.0.0.1:7002", env) == ["127.0.0.1:7002"]  # no file
    record(os.getpid(), config)
    assert addresses(config, "127.0.0.1:7002", env) == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert addresses(config, "127.0.0.1:7001", env) == ["127.0.0.1:7001"]
    record(os.getpid(), str(tmp_path / "other.yaml"))
    assert addresses(config, "127.0.0.1:7002", env) == ["127.0.0.1:7002"]
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    record(process.pid, config)  # a daemon that has exited
    assert addresses(config, "127.0.0.1:7002", env) == ["127.0.0.1:7002"]


async def test_unreachable_everywhere_says_so(tmp_path):
    path = tmp_path / "gateway.yaml"
    port = free_port()
    path.write_text(f"version: 1\nserver: {{listen: 127.0.0.1:{port}}}\n")
    code, out, err = await gatewayd_reload(path, {"RUNTIME_DIRECTORY": str(tmp_path)})
    assert code == 1 and out == ""
    assert f"cannot reach gatewayd at 127.0.0.1:{port}" in err
