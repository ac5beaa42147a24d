"""`gatewayd requests [ID]` (daemon/requests_client.py): one command answers "why did request X
go there" from the daemon that serves FILE, found and authenticated as `gatewayd reload` does.
The real daemon and the real command run as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, gatewayd_command

OPS_KEY, APP_KEY = "ops-key-c41d2e", "app-key-77b0a9"


def two_upstreams(port: int, failing: str, healthy: str) -> str:
    return f"""version: 1
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 3s
  auth: {{keys: [{{name: app, key: "{APP_KEY}"}}, {{name: ops, key: "${{OPS_KEY}}", role: admin}}]}}
defaults:
  retry: {{attempts: 1}}
providers:
  first: {{type: openai, base_url: "{failing}"}}
  second: {{type: openai, base_url: "{healthy}"}}
models:
  flaky: {{provider: first, model: model-a}}
  steady: {{provider: second, model: model-b}}
aliases:
  chat: {{targets: [flaky], fallbacks: [steady]}}
"""


async def gatewayd_requests(path: Path, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await gatewayd_command("requests", path, *args, env={"OPS_KEY": "", **env})


async def test_one_command_tells_where_a_request_went_and_why(tmp_path):
    async with Upstream("A") as a, Upstream("B") as b:
        a.fail_status = 503
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(two_upstreams(port, a.url, b.url))
        async with Daemon(path, port, tmp_path, env={"OPS_KEY": OPS_KEY}) as gw:
            async with aiohttp.ClientSession() as session:
                async with session.post(gw.url + "/v1/chat/completions",
                                        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                                        headers={"Authorization": f"Bearer {APP_KEY}",
                                                 "x-request-id": "order-4711"}) as response:
                    assert response.status == 200 and response.headers["x-request-id"] == "order-4711"
            run = {"RUNTIME_DIRECTORY": gw.env["RUNTIME_DIRECTORY"], "OPS_KEY": OPS_KEY}

            code, out, err = await gatewayd_requests(path, "order-4711", env=run)
            assert code == 0, err
            lines = out.splitlines()
            assert lines[0].startswith("order-4711 ") and "model chat" in lines[0] and "key app" in lines[0]
            assert "200" in lines[1] and "from steady" in lines[1]
            flaky, steady = (line for line in lines if line.startswith(("  flaky:", "  steady:")))
            assert "503" in flaky and "then next candidate" in flaky
            assert "200" in steady and "then" not in steady
            assert APP_KEY not in out and OPS_KEY not in out and "hi" not in out.split()

            code, out, err = await gatewayd_requests(path, "--json", "order-4711", env=run)
            assert code == 0, err
            entry = json.loads(out)
            assert [attempt["deployment"] for attempt in entry["attempts"]] == ["flaky", "steady"]

            code, out, err = await gatewayd_requests(path, "--limit", "5", env=run)
            assert code == 0 and out.startswith("order-4711 ") and "steady" in out, err

            code, out, err = await gatewayd_requests(path, "no-such-request", env=run)
            assert code == 1 and out == "" and "404" in err

            code, out, err = await gatewayd_requests(path, "order-4711", env={"RUNTIME_DIRECTORY":
                                                                              gw.env["RUNTIME_DIRECTORY"]})
            assert code == 1 and "order-4711" not in out  # no admin key to present: told, nothing shown


async def test_no_daemon_is_told_plainly(tmp_path):
    _, path = config_dir(tmp_path)
    path.write_text(two_upstreams(free_port(), "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"))
    code, out, err = await gatewayd_requests(path, env={"RUNTIME_DIRECTORY": str(tmp_path), "OPS_KEY": OPS_KEY})
    assert code == 1 and out == "" and "cannot reach gatewayd" in err
