"""What a reload changed: the diff of two configs (names and paths, never a value), returned by
POST /admin/reload, shown in /admin/status, sent on /admin/events, logged, printed by
`gatewayd reload`, and offline by `gatewayd check --diff`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp

from gatewayd.daemon.config.diff import describe, diff_documents, is_empty, of_reload
from gatewayd.daemon.reload_client import report
from tests.daemon_proc import Daemon, Upstream, config_dir, free_port, rename_save, routed_config

CANARY = "sk-canary-diff-0123456789"


def test_added_removed_and_changed_items_with_their_paths():
    old = {"version": 1, "defaults": {"timeouts": {"total": "300s"}},
           "providers": {"up": {"type": "openai", "api_key": "sk-old"}, "gone": {"type": "mock"}},
           "models": {"m": {"provider": "up", "model": "x", "retry": {"attempts": 2}}},
           "aliases": {"chat": {"targets": ["m", "n"]}}}
    new = {"version": 1, "defaults": {"timeouts": {"total": "60s"}},
           "providers": {"up": {"type": "openai", "api_key": CANARY}, "fresh": {"type": "mock"}},
           "models": {"m": {"provider": "up", "model": "x", "retry": {"attempts": 3}, "limits": {"rpm": 5}}},
           "aliases": {"chat": {"targets": ["n", "m"]}}}
    diff = diff_documents(old, new)
    assert diff["providers"] == {"added": ["fresh"], "removed": ["gone"], "changed": {"up": ["api_key"]}}
    assert diff["models"] == {"added": [], "removed": [], "changed": {"m": ["limits", "retry.attempts"]}}
    assert diff["aliases"]["changed"] == {"chat": ["targets"]}  # another order is another plan
    assert diff["other"] == ["defaults.timeouts.total"]
    text = json.dumps(diff) + "\n".join(describe(diff))
    assert CANARY not in text and "sk-old" not in text and "60s" not in text  # names and paths only
    assert describe(diff)[0] == "providers: + fresh; - gone; ~ up (api_key)"


def test_the_same_config_is_no_change_and_a_secret_file_is_named_when_nothing_else_changed():
    document = {"version": 1, "models": {"m": {"provider": "up", "model": "x"}}}
    assert is_empty(diff_documents(document, json.loads(json.dumps(document))))
    diff = of_reload(document, document)
    assert diff["secret_files"] and describe(diff) == [
        "secret files: a file's content changed (api_key_file and the like)"]


async def test_a_reload_returns_shows_and_sends_what_it_changed(tmp_path, capsys):
    async with Upstream("A") as a:
        port = free_port()
        _, path = config_dir(tmp_path)
        path.write_text(routed_config(port, a.url))
        async with Daemon(path, port, tmp_path) as gw, gw.session.get(gw.url + "/admin/events") as events:
            rename_save(path, routed_config(port, a.url, model="m2", upstream_model="model-y"))
            result = await gw.reload()
            assert result["ok"] and result["changed"]
            assert result["diff"]["models"] == {"added": ["m2"], "removed": ["m"], "changed": {}}
            assert result["diff"]["aliases"]["changed"] == {"chat": ["targets"]}
            event = await asyncio.wait_for(next_reload_event(events), 5)
            assert event["diff"] == result["diff"]
            assert (await gw.status())["last_reload"]["diff"] == result["diff"]
            assert "models: + m2; - m" in gw.log()

            unchanged = await gw.reload()  # nothing changed: no diff of its own ...
            assert unchanged["ok"] and not unchanged["changed"] and unchanged["diff"] is None
            # ... while /admin/status still says what the serving config changed
            assert (await gw.status())["last_reload"]["diff"] == result["diff"]

            # `gatewayd reload` prints the answer's diff under its verdict
            assert report(gw.url, 200, result) == 0
            printed = capsys.readouterr().out.splitlines()
            assert printed[1:] == ["  models: + m2; - m", "  aliases: ~ chat (targets)"]


async def next_reload_event(stream: aiohttp.ClientResponse) -> dict:
    kind = None
    async for line in stream.content:
        line = line.decode().strip()
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:") and kind == "reload":
            return json.loads(line[5:])
    raise AssertionError("the event stream ended before a reload event")


def test_check_diff_reviews_a_change_before_it_is_applied(tmp_path):
    current, proposed = tmp_path / "gateway.yaml", tmp_path / "next.yaml"
    current.write_text(routed_config(free_port(), "http://127.0.0.1:9/v1"))
    proposed.write_text(routed_config(free_port(), "http://127.0.0.1:9/v1", upstream_model="model-y"))
    shown = subprocess.run([sys.executable, "-m", "gatewayd.daemon.cli", "check", "-c", str(current),
                            "--diff", str(proposed)], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "models: ~ m (model)" in shown.stdout and "other: server.listen" in shown.stdout
    proposed.write_text("version: 1\nmodels: [broken]\n")
    refused = subprocess.run([sys.executable, "-m", "gatewayd.daemon.cli", "check", "-c", str(current),
                              "--diff", str(proposed)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "next.yaml:2:" in refused.stderr
