"""`gatewayd reload`: ask the daemon that serves FILE to reload, wait for the result, exit 1 if rejected.

systemd's `ExecReload=` runs this, so it must work exactly when the edit is broken.

Where: the address in the runtime file (daemon/runfile.py) when its daemon is alive and
serves FILE, then `server.listen` from FILE. The daemon found at an address is asked which
file it serves (`GET /admin/status`), and only the daemon serving FILE is reloaded: a
daemon serving another file is named and left alone (exit 1). The runtime file holds the
address the daemon listens on, so an edit of `server.listen` (which needs a restart)
does not lose it.

Which key: the first admin key (`role: admin`) FILE gives as `key:`, its ${VAR}s expanded
exactly as the daemon expands them; else `$GATEWAYD_ADMIN_KEY`, else the `admin-key`
credential systemd hands the unit (`$CREDENTIALS_DIRECTORY/admin-key`): the ways to present
a key the file holds only as `key_sha256`. FILE is read with `yaml.safe_load`; when the edit
does not parse, its `server:` block alone, and when that does not parse either, a line
scan, best effort. Validating the edit is the daemon's job; its answer (`POST
/admin/reload`) carries every FILE:LINE:COL problem.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp
import yaml

from gatewayd.daemon import runfile
from gatewayd.daemon.config.diff import describe as describe_diff
from gatewayd.daemon.config.load import find_config
from gatewayd.daemon.config.yamldoc import interpolate
from gatewayd.daemon.core.problems import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"
TIMEOUT = 30.0
ADMIN_KEY_VARIABLE = "GATEWAYD_ADMIN_KEY"
ADMIN_KEY_CREDENTIAL = "admin-key"
UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)
# reading an edit that does not parse
_TOP_LEVEL_LINE = re.compile(r"^[^\s#]", re.MULTILINE)
_SERVER_LINE = re.compile(r"^server\s*:", re.MULTILINE)
_VALUE = r"""\s*:\s*(?:"([^"]*)"|'([^']*)'|((?:\$\$?\{[^}\s]*\}|[^\s"',{}#])+))"""  # quoted, or plain with ${..}
_LISTEN_FIELD = re.compile(r"(?<![\w-])listen" + _VALUE)
_KEY_FIELD = re.compile(r"(?<![\w-])key" + _VALUE)
_ENTRY_START = re.compile(r"^\s*-\s|(?<!\$)\{", re.MULTILINE)  # a block list item or a flow mapping
_ADMIN_ROLE = re.compile(r"""(?<![\w-])role\s*:\s*["']?admin\b""")


@dataclass(frozen=True, slots=True)
class Target:
    """What the config file says about reaching the daemon that serves it."""

    listen: str  # server.listen
    key: str | None  # the admin key to present; None: none configured, or none that can be presented
    missing_key: str | None = None  # why none can be presented although the file configures keys


def read_target(text: str, env: Mapping[str, str]) -> Target:
    """Where the daemon of this config text listens and the admin key to present, as far as it can be read."""
    server = server_section(text)
    if server is None:
        listen, entries = scan_server_block(server_block(text))
    else:
        listen, entries = server.get("listen"), key_entries(server)
    listen = interpolate(listen, env)[0].strip() if isinstance(listen, str) else None
    key, missing = admin_key(entries, env)
    return Target(listen or DEFAULT_LISTEN, key, missing)


def server_section(text: str) -> dict | None:
    """The `server:` mapping, from the whole text, else from the `server:` block alone (an edit
    broken elsewhere); {} when there is none; None when neither parses."""
    for candidate in (text, server_block(text)):
        try:
            data = yaml.safe_load(candidate)
        except yaml.YAMLError:
            continue
        server = data.get("server") if isinstance(data, dict) else None
        return server if isinstance(server, dict) else {}
    return None


def server_block(text: str) -> str:
    """The lines of the top-level `server:` key, up to the next top-level line."""
    start = _SERVER_LINE.search(text)
    if start is None:
        return ""
    end = _TOP_LEVEL_LINE.search(text, start.end())
    return text[start.start():end.start() if end else len(text)]


def key_entries(server: Mapping[str, Any]) -> list[dict]:
    auth = server.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    return [entry for entry in keys if isinstance(entry, dict)] if isinstance(keys, list) else []


def scan_server_block(block: str) -> tuple[str | None, list[dict]]:
    """(listen, key entries) of a `server:` block that does not parse, line by line: each key
    entry starts a list item or a flow mapping, in block style and flow style alike."""
    listen = scanned_value(_LISTEN_FIELD, block)
    auth_at = block.find("auth:")
    entries = []
    for chunk in _ENTRY_START.split(block[auth_at:]) if auth_at >= 0 else ():
        key = scanned_value(_KEY_FIELD, chunk)
        if key is not None:
            entries.append({"key": key, "role": "admin" if _ADMIN_ROLE.search(chunk) else "app"})
    return listen, entries


def scanned_value(field: re.Pattern, text: str) -> str | None:
    match = field.search(text)
    return next(group for group in match.groups() if group is not None) if match else None


def admin_key(entries: list[dict], env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the admin key to present, why there is none) from the file's key entries, else $GATEWAYD_ADMIN_KEY."""
    admins = [entry for entry in entries if entry.get("role") == "admin"]
    problems: list[str] = []
    for entry in admins:
        if isinstance(entry.get("key"), str):
            key, found = interpolate(entry["key"], env)
            if key and not found:
                return key, None
            problems += found or ["it is empty"]
    if env.get(ADMIN_KEY_VARIABLE):
        return env[ADMIN_KEY_VARIABLE], None
    credential = admin_key_credential(env)
    if credential:
        return credential, None
    if not entries:
        return None, None  # no auth: no key needed
    if problems:
        why = f"its admin key cannot be read: {problems[0]}"
    elif admins:
        why = "its admin keys are given as key_sha256 only, and a digest cannot be presented"
    else:
        why = "it has no admin key (an entry with role: admin) for gatewayd reload to present"
    return None, (f"{why}; set {ADMIN_KEY_VARIABLE} to an admin key, or give it as the "
                  f"'{ADMIN_KEY_CREDENTIAL}' credential ($CREDENTIALS_DIRECTORY/{ADMIN_KEY_CREDENTIAL})")


def admin_key_credential(env: Mapping[str, str]) -> str | None:
    """The plain admin key systemd hands the unit as the `admin-key` credential (LoadCredential=),
    read as the daemon reads an api_key_file: one trailing newline stripped."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        with open(os.path.join(directory, ADMIN_KEY_CREDENTIAL), encoding="utf-8") as file:
            return file.read().rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError):
        return None


def endpoint(listen: str) -> tuple[str, aiohttp.BaseConnector | None]:
    """The base URL and connector for a listen address; wildcard hosts are reached on loopback."""
    if listen.startswith("unix:"):
        return "http://gatewayd", aiohttp.UnixConnector(path=listen[5:])
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}", None


def addresses(config_file: str, listen: str, env: Mapping[str, str]) -> list[str]:
    """Where to look for the daemon serving `config_file`: the runtime file's address when its
    daemon is alive and serves that file, then `server.listen` from the file."""
    found = []
    info = runfile.read(env)
    if info is not None and info.alive() and same_file(info.config, config_file):
        found.append(info.listen)
    if listen not in found:
        found.append(listen)
    return found


def same_file(served: str | None, config_file: str) -> bool:
    if served is None:
        return False
    if served == config_file:
        return True
    try:  # the same file under another name: a symlinked folder, a hard link
        return os.path.samefile(served, config_file)
    except OSError:
        return False


def served_file(answer: dict | str) -> str | None:
    """The config path a daemon's /admin/status names."""
    config = answer.get("config") if isinstance(answer, dict) else None
    path = config.get("path") if isinstance(config, dict) else None
    return path if isinstance(path, str) else None


async def call(session: aiohttp.ClientSession, method: str, url: str, key: str | None) -> tuple[int, dict | str]:
    headers = {"X-Gatewayd-Trigger": "cli"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with session.request(method, url, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, (await response.text())[:500]


def reason(exc: BaseException) -> str:
    return f"no answer within {TIMEOUT:g} s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__


async def reload_serving(config_file: str, candidates: list[str], key: str | None) -> int:
    """Reload the daemon that serves `config_file`, the first found at `candidates`; the exit status."""
    elsewhere: list[str] = []
    unreachable: list[str] = []
    for listen in candidates:
        base, connector = endpoint(listen)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            try:
                status, answer = await call(session, "GET", base + "/admin/status", key)
            except UNREACHABLE as exc:
                unreachable.append(f"{listen} ({reason(exc)})")
                continue
            served = served_file(answer)
            if status == 200 and not same_file(served, config_file):
                elsewhere.append(f"the gatewayd at {listen} serves {served}")
                continue
            if status == 200:
                try:
                    status, answer = await call(session, "POST", base + "/admin/reload", key)
                except UNREACHABLE as exc:  # never asked again elsewhere: it may be reloading
                    print(f"gatewayd reload: the daemon at {listen} did not answer the reload ({reason(exc)})",
                          file=sys.stderr)
                    return 1
        return report(listen, status, answer)
    if elsewhere:
        print(f"gatewayd reload: {'; '.join(elsewhere)}, not {config_file}: nothing was reloaded",
              file=sys.stderr)
    else:
        print(f"gatewayd reload: cannot reach gatewayd at {', '.join(unreachable)}; is it running?",
              file=sys.stderr)
    return 1


def report(listen: str, status: int, answer: dict | str) -> int:
    """Print the daemon's answer to the reload; the exit status."""
    if status != 200 or not isinstance(answer, dict) or "ok" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else answer
        message = error.get("message") if isinstance(error, dict) else error
        print(f"gatewayd reload: the daemon at {listen} answered {status}: {message}", file=sys.stderr)
        return 1
    for warning in answer.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    if answer["ok"]:
        print(f"reload accepted: version {answer['version']} ({'changed' if answer['changed'] else 'unchanged'})")
        if answer.get("diff"):
            for line in describe_diff(answer["diff"]):
                print(f"  {line}")
        return 0
    errors = answer.get("errors") or []
    for problem in errors:
        print(f"error: {problem['file']}:{problem['line']}:{problem['column']}: {problem['message']}",
              file=sys.stderr)
    if not errors and answer.get("error"):
        print(f"error: {answer['error']}", file=sys.stderr)
    print(f"reload rejected: gatewayd keeps serving version {answer.get('version')}", file=sys.stderr)
    return 1


def read_config_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024).decode("utf-8", "replace")
    except OSError as exc:
        # a deleted config is the daemon's to reject: look for it in the runtime file and at the default address
        print(f"warning: cannot read {path} ({exc.strerror or exc}); looking for its daemon anyway", file=sys.stderr)
        return ""


def find_daemon(command: str, config_path: str | None, env: Mapping[str, str]) -> tuple[str, Target] | None:
    """The config file (absolute) a command asks about and how to reach its daemon; None, with
    the reason printed, when there is no file or no admin key to present."""
    try:
        path = find_config(config_path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None
    target = read_target(read_config_text(path), env)
    if target.missing_key is not None:
        print(f"gatewayd {command}: {path}: {target.missing_key}", file=sys.stderr)
        return None
    return os.path.abspath(path), target


def reload_running(config_path: str | None, env: Mapping[str, str] = os.environ) -> int:
    found = find_daemon("reload", config_path, env)
    if found is None:
        return 1
    config_file, target = found
    return asyncio.run(reload_serving(config_file, addresses(config_file, target.listen, env), target.key))
