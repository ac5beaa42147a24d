"""The runtime file (daemon/runfile.py): written by the running daemon, read by `gatewayd reload`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from gatewayd.daemon import runfile
from gatewayd.daemon.runfile import RunInfo
from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, routed_config, wait_until


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    return process.pid


def test_publish_writes_the_first_runtime_directory_and_withdraw_removes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"RUNTIME_DIRECTORY": f"{tmp_path / 'run'}:{tmp_path / 'second'}"}  # systemd joins several with ':'
    path = runfile.publish("127.0.0.1:8123", "gateway.yaml", env)
    assert path == tmp_path / "run" / "gatewayd.json"
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "listen": "127.0.0.1:8123",
                                            "config": str(tmp_path / "gateway.yaml"),
                                            "version": metadata.version("gatewayd")}
    assert os.listdir(path.parent) == ["gatewayd.json"]  # the temporary file was renamed, not left
    assert runfile.read(env) == RunInfo(os.getpid(), "127.0.0.1:8123", str(tmp_path / "gateway.yaml"))
    runfile.withdraw(path)
    assert not path.exists()
    assert runfile.read(env) is None


def test_without_runtime_directory_it_is_the_system_folder():
    assert runfile.location({}) == Path("/run/gatewayd/gatewayd.json")


def test_withdraw_leaves_a_file_another_daemon_wrote_since(tmp_path):
    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    path = runfile.publish("127.0.0.1:8123", "/etc/gatewayd/gateway.yaml", env)
    path.write_text(json.dumps({"pid": os.getpid() + 1, "listen": "127.0.0.1:9", "config": "/x", "version": "0"}))
    runfile.withdraw(path)
    assert path.exists()


def test_no_place_for_the_file_is_no_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    assert runfile.publish("127.0.0.1:8123", "gateway.yaml", {"RUNTIME_DIRECTORY": str(tmp_path / "a-file")}) is None
    runfile.withdraw(None)


def test_a_file_that_is_not_a_daemons_reads_as_none(tmp_path):
    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    for content in ("not json", "[]", '{"pid": "x", "listen": "a", "config": "b"}', '{"listen": "a"}'):
        (tmp_path / "gatewayd.json").write_text(content)
        assert runfile.read(env) is None, content


def test_alive_tells_a_running_process_from_an_exited_one():
    assert RunInfo(os.getpid(), "127.0.0.1:1", "/x").alive()
    assert not RunInfo(dead_pid(), "127.0.0.1:1", "/x").alive()


async def test_the_daemon_writes_it_once_listening_and_removes_it_on_exit(tmp_path):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        daemon = Daemon(path, port, tmp_path)
        written = tmp_path / "run" / "gatewayd.json"
        async with daemon:
            info = json.loads(written.read_text())
            assert info == {"pid": daemon.proc.pid, "listen": f"127.0.0.1:{port}", "config": str(path),
                            "version": metadata.version("gatewayd")}

        async def removed():
            return not written.exists()
        await wait_until(removed, 5, what="the runtime file to be removed")
        assert daemon.proc.returncode == 0
