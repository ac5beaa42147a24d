"""GET /admin/status and /admin/explain on the real app, with fake upstreams,
and who may reach the admin endpoints and /metrics."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest

from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from tests.fakes import Status

SECRET = "sk-admin-secret-4242"


def config(bad: str, good: str) -> str:
    return f"""
        version: 1
        providers:
          bad: {{type: openai, base_url: "{bad}", api_key: {SECRET}}}
          good: {{type: openai, base_url: "{good}"}}
          gone: {{type: openai, api_key: "${{GATEWAYD_TEST_UNSET_KEY:-}}"}}
        defaults:
          retry: {{attempts: 1}}
          cooldown: {{failures: 1, initial: 60s}}
        models:
          flaky: {{provider: bad, model: flaky-upstream}}
          brief:
            provider: bad
            model: brief-upstream
            cooldown: {{failures: 1, initial: 50ms}}
          steady: {{provider: good, model: steady-upstream}}
          unkeyed: {{provider: gone, model: off-upstream}}
          night:
            provider: good
            model: night-upstream
            windows: {{only: ["mon-sun"], except: ["mon-sun"]}}
        aliases:
          chat:
            targets: [flaky, night]
            fallbacks: [steady, unkeyed]
    """


@pytest.fixture
async def admin(gateway, fake_openai):
    bad, good = await fake_openai("bad"), await fake_openai("good")
    bad.default = Status(500, message=f"exploded, key was {SECRET}")
    gw = await gateway(config(bad.base_url, good.base_url))
    return gw


async def get(gw, path: str, headers=None):
    async with gw.session.get(gw.url + path, headers=headers) as response:
        return response.status, await response.text(), (await response.json() if response.status < 500 else None)


def iso(text: str) -> datetime:
    instant = datetime.fromisoformat(text)
    assert instant.tzinfo is not None, text
    return instant


async def test_status_shape_and_every_state(admin):
    gw = admin
    assert (await gw.chat("flaky")).status == 503  # one failure: cooldown (failures: 1)
    assert (await gw.chat("brief")).status == 503  # a 50 ms cooldown, over by the time we look
    answer = await gw.chat("chat")  # flaky is cooling, night is outside its window: steady answers
    assert answer.status == 200 and answer.headers["x-gatewayd-deployment"] == "steady"
    await asyncio.sleep(0.1)

    status, text, body = await get(gw, "/admin/status")
    assert status == 200
    assert SECRET not in text
    assert set(body) == {"config", "last_reload", "deployments", "keys", "cache", "state"}
    assert body["state"] == {"backend": "local", "status": "local", "limits_divided_by": 1}  # one process
    assert body["keys"] == {}  # no key has limits or a budget
    assert body["cache"] is None  # no response cache configured
    assert set(body["config"]) == {"path", "version", "loaded_at"}
    assert body["config"]["path"] == str(gw.config_path)
    assert body["config"]["version"] == gw.runtime.holder.current.graph.version
    iso(body["config"]["loaded_at"])
    assert body["last_reload"] is None  # nothing reloaded yet
    deployments = body["deployments"]
    assert set(deployments) == {"flaky", "brief", "steady", "unkeyed", "night"}
    for entry in deployments.values():
        assert set(entry) == {"state", "cooldown_until", "failures", "last_error"}

    flaky = deployments["flaky"]
    assert flaky["state"] == "cooldown"
    assert 50 < (iso(flaky["cooldown_until"]) - datetime.now(iso(flaky["cooldown_until"]).tzinfo)).total_seconds() <= 60
    assert flaky["last_error"].startswith("server 500")
    assert flaky["failures"] == 0  # the count restarts once a cooldown begins
    assert deployments["brief"] == {"state": "half_open", "cooldown_until": None, "failures": 0,
                                    "last_error": deployments["brief"]["last_error"]}
    assert deployments["brief"]["last_error"].startswith("server 500")
    assert deployments["steady"] == {"state": "ok", "cooldown_until": None, "failures": 0, "last_error": None}
    assert deployments["unkeyed"]["state"] == "disabled"
    assert deployments["night"]["state"] == "outside_window"


async def test_status_last_reload_after_accepted_and_rejected_reloads(admin):
    gw = admin
    gw.runtime.reloader = reloader = Reloader(gw.runtime, Notifier(None))
    version = gw.runtime.holder.current.graph.version
    gw.config_path.write_text(gw.config_path.read_text().replace("initial: 60s", "initial: 61s"))
    await reloader.reload("api")
    _, _, body = await get(gw, "/admin/status")
    last = body["last_reload"]
    assert {"ok", "at", "trigger", "error"} <= set(last)
    assert (last["ok"], last["trigger"], last["error"]) == (True, "api", None)
    iso(last["at"])
    assert body["config"]["version"] != version

    gw.config_path.write_text("version: 1\nmodels: [\n")
    await reloader.reload("signal")
    _, _, body = await get(gw, "/admin/status")
    last = body["last_reload"]
    assert (last["ok"], last["trigger"]) == (False, "signal")
    assert last["error"].startswith(f"{gw.config_path}:")  # FILE:LINE:COL: message
    file, line, column, _ = last["error"].split(":", 3)
    assert line.isdigit() and column.isdigit()
    assert body["config"]["version"] != version  # the accepted one keeps serving


async def test_explain_says_why_each_candidate_is_in_or_out(admin):
    gw = admin
    assert (await gw.chat("flaky")).status == 503
    status, text, plan = await get(gw, "/admin/explain?model=chat&at=2026-03-02T10:00:00Z")
    assert status == 200
    assert SECRET not in text
    assert plan["model"] == "chat" and plan["kind"] == "alias"
    assert plan["config"] == gw.runtime.holder.current.graph.version
    iso(plan["at"])
    why = {c["model"]: (c["in"], c["why"]) for tier in plan["tiers"] for c in tier["candidates"]}
    assert list(why) == ["flaky", "night", "steady", "unkeyed"]
    assert why["flaky"][0] is False and why["flaky"][1].startswith("cooling down until ")
    assert "after server 500" in why["flaky"][1]
    assert why["night"][0] is False and "except window 'mon-sun'" in why["night"][1]
    assert why["steady"] == (True, None)
    assert why["unkeyed"][0] is False and "disabled" in why["unkeyed"][1]
    assert [tier["from"] for tier in plan["tiers"]] == ["chat", "steady", "unkeyed"]


async def test_explain_errors(admin):
    gw = admin
    status, _, body = await get(gw, "/admin/explain?model=nope&at=2026-03-02T10:00:00Z")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = await get(gw, "/admin/explain?model=chat&at=yesterday")
    assert status == 400 and body["error"]["code"] == "invalid_at" and body["error"]["param"] == "at"
    status, _, body = await get(gw, "/admin/explain")
    assert status == 400 and body["error"]["code"] == "missing_model"
    status, _, body = await get(gw, "/admin/explain?model=flaky")  # a model, at no given time: now
    assert status == 200 and body["kind"] == "model"


@pytest.mark.parametrize("path", ["/admin/status", "/admin/explain?model=chat", "/admin/events", "/metrics"])
async def test_admin_endpoints_need_a_key_and_refuse_other_origins(gateway, path):
    gw = await gateway("""
        version: 1
        server:
          auth:
            keys: [{name: ops, key: ops-key-123, role: admin}]
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
        aliases:
          chat: {targets: [echo]}
    """)
    status, _, body = await get(gw, path)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, _, body = await get(gw, path, {"Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, body = await get(gw, path, {"Authorization": "Bearer ops-key-123",
                                           "Origin": "https://evil.example"})
    assert status == 403 and body["error"]["code"] == "cross_origin"
    if path != "/admin/events":  # an event stream stays open: test_events reads it
        async with gw.session.get(gw.url + path, headers={"x-api-key": "ops-key-123"}) as response:
            assert response.status == 200


# --- admin scope --------------------------------------------------------------------

APP_KEY, ADMIN_KEY = "app-key-chat-only-1", "admin-key-ops-1"
SCOPED = f"""
    version: 1
    server:
      auth:
        keys:
          - {{name: billing, key: {APP_KEY}, allow: [chat]}}
          - {{name: ops, key: {ADMIN_KEY}, role: admin}}
    providers:
      demo: {{type: mock}}
    models:
      echo: {{provider: demo, model: echo}}
    aliases:
      chat: {{targets: [echo]}}
"""
ADMIN_PATHS = [("GET", "/admin/status"), ("GET", "/admin/explain?model=chat"), ("GET", "/admin/events"),
               ("POST", "/admin/reload"), ("GET", "/metrics")]


class AnsweringReloader:
    """Stands in for the reload task, so POST /admin/reload answers at once: here only who may ask counts."""

    async def request(self, trigger: str) -> dict:
        return {"ok": True, "changed": False, "version": "v", "error": None, "errors": [], "trigger": trigger}

    def last_result(self) -> None:
        return None


async def scoped(gateway, config: str = SCOPED):
    gw = await gateway(config)
    gw.runtime.reloader = AnsweringReloader()
    return gw


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
async def test_an_app_key_gets_403_permission_denied_on_admin_paths_and_an_admin_key_passes(gateway, method, path):
    gw = await scoped(gateway)
    async with gw.session.request(method, gw.url + path, headers={"x-api-key": APP_KEY}) as response:
        body = await response.json()
        assert response.status == 403
        assert body["error"]["code"] == "permission_denied" and body["error"]["type"] == "permission_error"
        assert APP_KEY not in json.dumps(body)
    async with gw.session.request(method, gw.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response:
        assert response.status == 200  # an event stream's headers arrive at once; leaving closes it
    async with gw.session.request(method, gw.url + path) as response:
        assert response.status == 401 and (await response.json())["error"]["code"] == "missing_api_key"


async def test_the_app_key_still_serves_its_own_api(gateway):
    gw = await scoped(gateway)
    assert (await gw.chat("chat", headers={"x-api-key": APP_KEY})).status == 200
    assert (await gw.chat("chat", headers={"x-api-key": ADMIN_KEY})).status == 200  # an admin key is an app key too


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_probes_never_need_a_key(gateway, path):
    gw = await scoped(gateway)
    async with gw.session.get(gw.url + path) as response:
        assert response.status == 200


async def test_public_metrics_need_no_key_and_the_admin_paths_still_do(gateway):
    gw = await scoped(gateway, SCOPED.replace("    server:\n", "    server:\n      metrics: public\n"))
    assert gw.runtime.holder.current.graph.server.metrics == "public"
    async with gw.session.get(gw.url + "/metrics") as response:
        assert response.status == 200 and "gatewayd_requests" in await response.text()
    async with gw.session.get(gw.url + "/admin/status", headers={"x-api-key": APP_KEY}) as response:
        assert response.status == 403


async def test_status_names_the_config_by_its_absolute_path(admin, monkeypatch):
    gw = admin
    monkeypatch.chdir(gw.config_path.parent)
    gw.runtime.config_path = gw.config_path.name  # as `gatewayd run -c gateway.yaml` gives it
    _, _, body = await get(gw, "/admin/status")
    assert body["config"]["path"] == str(gw.config_path)
