"""A reload whose inputs (file bytes, referenced environment values, secret files) did not
change does no parsing or compiling at all; any change among them is noticed."""

from __future__ import annotations

import asyncio

from gatewayd.daemon import reload as reload_module
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier

CONFIG = """
    version: 1
    providers:
      demo: {type: mock, reply: "${GREETING:-hi}"}
      keyed: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key_file: key.txt}
    models:
      m: {provider: demo, model: canned}
      k: {provider: keyed, model: x}
"""


async def test_unchanged_inputs_skip_the_load_and_each_input_is_watched(gateway, monkeypatch, tmp_path):
    monkeypatch.delenv("GREETING", raising=False)
    (tmp_path / "key.txt").write_text("sk-first\n")
    gw = await gateway(CONFIG)
    loads = []
    real_load = reload_module.load

    def counting_load(path, env=None):
        loads.append(path)
        return real_load(path, env)

    monkeypatch.setattr(reload_module, "load", counting_load)
    reloader = Reloader(gw.runtime, Notifier.from_environ({}))
    await reloader.start(asyncio.get_running_loop())
    try:
        await check_reloads(reloader, gw, loads, monkeypatch, tmp_path)
    finally:
        await reloader.stop()


async def check_reloads(reloader, gw, loads, monkeypatch, tmp_path) -> None:
    first = await reloader.reload("api")
    assert (first["ok"], first["changed"], len(loads)) == (True, False, 1)
    again = await reloader.reload("api")
    assert (again["ok"], again["changed"], len(loads)) == (True, False, 1)  # nothing read but digests

    monkeypatch.setenv("GREETING", "hello")
    env_changed = await reloader.reload("api")
    assert (env_changed["changed"], len(loads)) == (True, 2)

    (tmp_path / "key.txt").write_text("sk-rotated\n")
    secret_changed = await reloader.reload("signal")
    assert (secret_changed["changed"], len(loads)) == (True, 3)

    gw.config_path.write_text(gw.config_path.read_text().replace("canned", "other"))
    file_changed = await reloader.reload("file")
    assert (file_changed["changed"], len(loads)) == (True, 4)
    assert gw.runtime.holder.current.graph.deployments["m"].model == "other"
