"""`Runtime.install` is the one way a graph is published, at start and on every reload:
one swap of the holder, then health kept by identity, the metrics' config version, and
the pools of providers that left closed once the old snapshot's last request ended."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from gatewayd.daemon.config.load import load
from gatewayd.daemon.http.runtime import Runtime
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from tests.fakes import Ok, Status, deployment_status, eventually, fakes, gateway_config

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("daemon", "adapters") for p in (ROOT / folder).rglob("*.py"))


def config_version_shown(runtime: Runtime) -> list[str]:
    text = runtime.metrics.render().decode()
    return [line for line in text.splitlines() if line.startswith("gatewayd_config_info{")]


def publishers() -> set[str]:
    """The functions that write some `X.current` or make a pool adopt a snapshot."""
    found = set()
    for path in SOURCES:
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                writes_current = (isinstance(node, ast.Attribute) and node.attr == "current"
                                  and isinstance(node.ctx, ast.Store))
                adopts = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                          and node.func.attr == "adopt")
                if writes_current or adopts:
                    found.add(f"{path.relative_to(ROOT).as_posix()}:{function.name}")
    return found


def test_nothing_but_install_writes_the_holder_or_swaps_the_pool():
    assert publishers() == {"daemon/http/runtime.py:install"}


async def test_the_first_graph_and_every_changed_reload_go_through_install(gateway, monkeypatch):
    installed = []
    real_install = Runtime.install

    def recording_install(self, graph):
        installed.append(graph.version)
        return real_install(self, graph)

    monkeypatch.setattr(Runtime, "install", recording_install)
    gw = await gateway("""
        version: 1
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
    """)
    first = gw.runtime.holder.current.graph.version
    assert installed == [first]
    assert config_version_shown(gw.runtime) == [f'gatewayd_config_info{{version="{first}"}} 1.0']

    reloader = Reloader(gw.runtime, Notifier(None))
    gw.config_path.write_text(gw.config_path.read_text().replace("echo: {", "echo2: {"))
    changed = await reloader.reload("api")
    assert changed["changed"] and installed == [first, changed["version"]]
    assert config_version_shown(gw.runtime) == [f'gatewayd_config_info{{version="{changed["version"]}"}} 1.0']

    assert not (await reloader.reload("api"))["changed"]  # unchanged: nothing installed
    gw.config_path.write_text("version: 1\nmodels: [\n")
    assert not (await reloader.reload("api"))["ok"]  # rejected: nothing installed
    assert installed == [first, changed["version"]]


async def test_install_keeps_health_by_identity_and_closes_pools_that_left_once_drained(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    cooldown = {"cooldown": {"failures": 1, "initial": "60s"}}
    both = gateway_config(ups, defaults=cooldown)
    only_a = gateway_config({"a": ups["a"]}, defaults=cooldown)
    only_b = gateway_config({"b": ups["b"]}, defaults=cooldown)
    gw = await gateway(both)

    def graph_of(text: str):
        gw.config_path.write_text(text)
        return load(str(gw.config_path), {}).graph

    ups["a"].queue(Status(500))
    async with await gw.post("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}]}):
        pass
    assert (await deployment_status(gw, "a"))["state"] == "cooldown"
    ups["b"].queue(Ok("slow", delay=0.5))
    in_flight = asyncio.create_task(gw.post("/v1/chat/completions",
                                            {"model": "b", "messages": [{"role": "user", "content": "x"}]}))
    assert await eventually(lambda: ups["b"].calls == 1)
    old = gw.runtime.holder.current
    b_session = old.adapters["b"].session()  # the pool the request in flight uses

    new = gw.runtime.install(graph_of(only_a))  # b left the config
    assert gw.runtime.holder.current is new and old.retired
    assert new.adapters["a"] is old.adapters["a"]  # an unchanged provider keeps its pool
    assert config_version_shown(gw.runtime) == [f'gatewayd_config_info{{version="{new.graph.version}"}} 1.0']
    assert (await deployment_status(gw, "a"))["state"] == "cooldown"  # same identity: health kept
    assert not b_session.closed  # its last request has not ended yet
    async with await asyncio.wait_for(in_flight, 5) as response:
        assert response.status == 200 and response.headers["x-gatewayd-config"] == old.graph.version
    assert await eventually(lambda: b_session.closed)

    gw.runtime.install(graph_of(only_b))  # a left: its health is dropped...
    gw.runtime.install(graph_of(both))  # ...so when it comes back, it starts afresh
    assert (await deployment_status(gw, "a"))["state"] == "ok"
