"""`gatewayd reload`: ask the running daemon to reload, wait for the result, exit 1 if rejected.

systemd's `ExecReload=` runs this, so it must work exactly when the edit is
broken: the config is read here only for where the daemon listens
(`server.listen`) and the app key to present (`server.auth.keys[0].key`), best
effort: `yaml.safe_load` first, a line scan when the YAML does not parse, and
the defaults after that. Validating the edit is the daemon's job; its answer
(`POST /admin/reload`, SPEC §4) carries every FILE:LINE:COL problem.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

import aiohttp
import yaml

from gatewayd.daemon.config import find_config
from gatewayd.daemon.problems import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"
TIMEOUT = 30.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LISTEN_LINE = re.compile(r"^\s+listen:\s*[\"']?([^\s\"'#]+)", re.MULTILINE)
_KEY_LINE = re.compile(r"^\s*(?:-\s+)?key:\s*[\"']?([^\s\"'#]+)", re.MULTILINE)


def interpolate(text: str) -> str:
    """${VAR} and ${VAR:-default} from this process's environment (unset: empty)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def daemon_address(text: str) -> tuple[str, str | None]:
    """(server.listen, the first app key or None) from the config text, as far as it can be read."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        server = data.get("server") if isinstance(data.get("server"), dict) else {}
        listen = server.get("listen")
        auth = server.get("auth") if isinstance(server.get("auth"), dict) else {}
        keys = auth.get("keys") if isinstance(auth.get("keys"), list) else []
        key = keys[0].get("key") if keys and isinstance(keys[0], dict) else None
    else:  # the edit does not parse: scan lines for the two values we need
        match = _LISTEN_LINE.search(text)
        listen = match.group(1) if match else None
        auth_at = text.find("auth:")
        match = _KEY_LINE.search(text, auth_at) if auth_at >= 0 else None
        key = match.group(1) if match else None
    listen = interpolate(listen) if isinstance(listen, str) and listen.strip() else DEFAULT_LISTEN
    key = interpolate(key) if isinstance(key, str) else None
    return listen, key or None


def endpoint(listen: str) -> tuple[str, aiohttp.BaseConnector | None]:
    """The reload URL and connector for a listen address; wildcard hosts are reached on loopback."""
    if listen.startswith("unix:"):
        return "http://gatewayd/admin/reload", aiohttp.UnixConnector(path=listen[5:])
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/admin/reload", None


async def post_reload(listen: str, key: str | None) -> tuple[int, dict | str]:
    url, connector = endpoint(listen)
    headers = {"X-Gatewayd-Trigger": "cli"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.post(url, headers=headers) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, (await response.text())[:500]


def reload_running(config_path: str | None) -> int:
    try:
        path = find_config(config_path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        with open(path, "rb") as f:
            text = f.read(1024 * 1024).decode("utf-8", "replace")
    except OSError as exc:
        text = ""  # a deleted config is the daemon's to reject; ask it at the default address
        print(f"warning: cannot read {path} ({exc.strerror or exc}); trying {DEFAULT_LISTEN}", file=sys.stderr)
    listen, key = daemon_address(text)
    try:
        status, answer = asyncio.run(post_reload(listen, key))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = "no answer within 30 s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        print(f"gatewayd reload: cannot reach gatewayd at {listen} ({reason}); is it running?", file=sys.stderr)
        return 1
    if status != 200 or not isinstance(answer, dict) or "ok" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else answer
        message = error.get("message") if isinstance(error, dict) else error
        print(f"gatewayd reload: the daemon at {listen} answered {status}: {message}", file=sys.stderr)
        return 1
    for warning in answer.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    if answer["ok"]:
        print(f"reload accepted: version {answer['version']} ({'changed' if answer['changed'] else 'unchanged'})")
        return 0
    errors = answer.get("errors") or []
    for problem in errors:
        print(f"error: {problem['file']}:{problem['line']}:{problem['column']}: {problem['message']}",
              file=sys.stderr)
    if not errors and answer.get("error"):
        print(f"error: {answer['error']}", file=sys.stderr)
    print(f"reload rejected: gatewayd keeps serving version {answer.get('version')}", file=sys.stderr)
    return 1
