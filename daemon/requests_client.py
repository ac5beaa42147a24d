"""`gatewayd requests [ID]`: what a recent request did, asked of the daemon that serves FILE.

The daemon and the admin key are found as `gatewayd reload` finds them (daemon/reload_client.py):
the runtime file's address, then `server.listen`; the first admin key FILE gives, else
$GATEWAYD_ADMIN_KEY or the `admin-key` credential. With an ID, that request's entry of
`GET /admin/requests/ID`, one line per attempt; without, the latest `--limit` requests, one
line each. `--json` prints the daemon's answer as it came.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Mapping
from urllib.parse import quote

import aiohttp

from gatewayd.daemon.reload_client import TIMEOUT, UNREACHABLE, addresses, call, endpoint, find_daemon, reason


def attempt_line(attempt: dict) -> str:
    outcome = " ".join(str(part) for part in (attempt.get("status"), attempt.get("failure")) if part is not None)
    line = (f"  {attempt['deployment']}: {outcome or 'no answer'} at +{attempt['start_ms']:g} ms"
            + (f", {attempt['duration_ms']:g} ms" if attempt.get("duration_ms") is not None else ""))
    if attempt.get("retry_after") is not None:
        line += f", Retry-After {attempt['retry_after']:g}s"
    return line + (f"; then {attempt['then']}" if attempt.get("then") else "")


def describe(entry: dict) -> list[str]:
    """One request's entry, as an operator reads it: what it asked, where it went and why."""
    lines = [f"{entry['id']} {entry.get('at', '')} {entry.get('method', '')} {entry.get('path', '')} "
             f"model {entry.get('model')} (config {entry.get('config')}, key {entry.get('key')}, "
             f"format {entry.get('format')})",
             f"  -> {entry.get('status')} {entry.get('outcome')}"
             + (f" from {entry['deployment']}" if entry.get("deployment") else "")
             + (f" in {entry['latency_ms']:g} ms" if entry.get("latency_ms") is not None else "")]
    lines += [attempt_line(attempt) for attempt in entry.get("attempts") or ()]
    for name, why in (entry.get("skipped") or {}).items():
        lines.append(f"  {name}: skipped: {why}")
    extra = {name: entry.get(name) for name in ("cache", "limits", "tokens", "cost") if entry.get(name) is not None}
    if extra:
        lines.append("  " + ", ".join(f"{name} {json.dumps(value, separators=(',', ':'))}"
                                      for name, value in extra.items()))
    return lines


def summary(entry: dict) -> str:
    return (f"{entry['id']} {entry.get('at', '')} {entry.get('model')} {entry.get('status')} {entry.get('outcome')} "
            f"{entry.get('deployment') or '-'} attempts {len(entry.get('attempts') or ())}")


async def ask(candidates: list[str], path: str, key: str | None) -> tuple[str, int, dict | str] | None:
    """The first daemon at `candidates` to answer `GET path`: (its address, status, answer)."""
    unreachable = []
    for listen in candidates:
        base, connector = endpoint(listen)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            try:
                status, answer = await call(session, "GET", base + path, key)
            except UNREACHABLE as exc:
                unreachable.append(f"{listen} ({reason(exc)})")
                continue
        return listen, status, answer
    print(f"gatewayd requests: cannot reach gatewayd at {', '.join(unreachable)}; is it running?", file=sys.stderr)
    return None


def show_requests(config_path: str | None, request_id: str | None, limit: int, as_json: bool,
                  env: Mapping[str, str] = os.environ) -> int:
    found = find_daemon("requests", config_path, env)
    if found is None:
        return 1
    config_file, target = found
    asked = f"/admin/requests/{quote(request_id, safe='')}" if request_id else f"/admin/requests?limit={limit}"
    answered = asyncio.run(ask(addresses(config_file, target.listen, env), asked, target.key))
    if answered is None:
        return 1
    listen, status, answer = answered
    if status != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else answer
        message = error.get("message") if isinstance(error, dict) else error
        print(f"gatewayd requests: the daemon at {listen} answered {status}: {message}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(answer, indent=2))
    elif request_id:
        print("\n".join(describe(answer)))
    else:
        for entry in answer.get("requests") or ():
            print(summary(entry))
    return 0
