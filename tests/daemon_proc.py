"""The real gatewayd as a subprocess, and fake OpenAI upstreams, for end-to-end tests.

`Daemon` runs `python -m gatewayd.daemon.cli run -c FILE` on a free loopback
port, waits (bounded) for /healthz, talks to it with an aiohttp session, and
stops it by PID: SIGTERM, then SIGKILL. Its stderr (the log) goes to a file
that failures print. `Upstream` is a small OpenAI-compatible server on
127.0.0.1 whose answers name it ("from A"), so a test sees which one served.
Every wait here is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until(probe, timeout: float = 5.0, interval: float = 0.05, what: str = "condition"):
    """Await `probe()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def chunk(name: str, content: str, finish: str | None = None) -> bytes:
    payload = {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": f"model-{name}", "choices": [{"index": 0, "delta": {"content": content},
                                                      "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class Upstream:
    """A fake OpenAI server: answers "from NAME", streams `pieces` events `gap` seconds apart,
    or answers `fail_status` with an OpenAI error body."""

    def __init__(self, name: str, *, pieces: int = 3, gap: float = 0.0) -> None:
        self.name = name
        self.pieces = pieces
        self.gap = gap
        self.fail_status: int | None = None
        self.calls = 0
        self.keys: list[str] = []  # Authorization headers received
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._runner.cleanup()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        self.keys.append(request.headers.get("Authorization", ""))
        if self.fail_status is not None:
            return web.json_response({"error": {"message": f"{self.name} is broken", "type": "server_error",
                                                "param": None, "code": None}}, status=self.fail_status)
        if not body.get("stream"):
            message = {"role": "assistant", "content": f"from {self.name}"}
            return web.json_response({
                "id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 1_700_000_000,
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": message}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(self.pieces):
            await response.write(chunk(self.name, f"from {self.name} {index};"))
            if self.gap:
                await asyncio.sleep(self.gap)
        await response.write(chunk(self.name, "", "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def config_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of its own for the config (the daemon watches it), and the config's path in it."""
    folder = tmp_path / "conf"
    folder.mkdir()
    return folder, folder / "gateway.yaml"


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:  # truncate, then write: a watcher may see the file half-way
        f.write(text)


def rename_save(path: Path, text: str) -> None:
    """What editors do: write a temporary file, rename it over the config."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def routed_config(port: int, upstream_url: str, *, model: str = "m", upstream_model: str = "model-x",
                  extra_provider: str = "", policy: str = "") -> str:
    """One provider, one model, alias `chat` -> that model."""
    return f"""version: 1
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 3s
defaults:
  retry: {{attempts: 1}}
{policy}providers:
  up:
    type: openai
    base_url: "{upstream_url}"
{extra_provider}models:
  {model}:
    provider: up
    model: {upstream_model}
aliases:
  chat:
    targets: [{model}]
"""


def reload_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """{(result, trigger): count} from the gatewayd_reloads_total samples."""
    counts = {}
    for match in re.finditer(r'^gatewayd_reloads_total\{([^}]*)\} ([0-9.e+]+)$', metrics_text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        counts[(labels["result"], labels["trigger"])] = float(match.group(2))
    return counts


class Daemon:
    """`async with Daemon(config_path) as gw:` — the real daemon, stopped by PID on exit."""

    def __init__(self, config: Path, port: int, log_dir: Path, *, env: dict | None = None,
                 headers: dict | None = None) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        self.env["RUNTIME_DIRECTORY"] = str(log_dir / "run")  # its runtime file, never the system's
        self.env.update(env or {})
        self.log_path = log_dir / f"gatewayd-{port}.log"  # outside the watched folder
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.headers = headers  # sent with every request (an app key)

    async def __aenter__(self) -> Daemon:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=self.headers)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gatewayd.daemon.cli", "run", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.config.parent, env=self.env)
        try:
            await wait_until(self._healthy, timeout=20, interval=0.1, what="gatewayd to answer /healthz")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gatewayd exited with {self.proc.returncode}:\n{self.log()}")
        try:
            async with self.session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 8
                while self.proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            await self.session.close()
        if exc_type is not None:
            print(f"--- gatewayd log ({self.log_path}) ---\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGHUP) -> None:
        os.kill(self.proc.pid, sig)

    async def status(self) -> dict:
        async with self.session.get(self.url + "/admin/status") as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def reload(self, headers: dict | None = None) -> dict:
        async with self.session.post(self.url + "/admin/reload", headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def reloads(self) -> dict[tuple[str, str], float]:
        async with self.session.get(self.url + "/metrics") as response:
            return reload_counts(await response.text())

    async def chat(self, model: str = "chat") -> tuple[int, str, str]:
        """(status, content or error message, x-gatewayd-config) of one non-streaming request."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        async with self.session.post(self.url + "/v1/chat/completions", json=body) as response:
            payload = await response.json()
            if response.status == 200:
                text = payload["choices"][0]["message"]["content"]
            else:
                text = payload["error"]["message"]
            return response.status, text, response.headers.get("x-gatewayd-config", "")

    async def wait_reload(self, after: str | None, timeout: float = 5.0) -> dict:
        """The first last_reload whose `at` differs from `after` (a reload that happened since)."""
        async def probe():
            last = (await self.status())["last_reload"]
            return last if last is not None and last["at"] != after else None
        return await wait_until(probe, timeout, what="a reload")

    async def last_at(self) -> str | None:
        last = (await self.status())["last_reload"]
        return last["at"] if last else None


async def read_stream(response: aiohttp.ClientResponse) -> tuple[str, bool]:
    """(the content of every chunk, whether [DONE] came) of an SSE answer."""
    content, done = [], False
    async for line in response.content:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        assert "error" not in event, event
        content.append(event["choices"][0]["delta"].get("content") or "")
    return "".join(content), done


async def gatewayd_reload(path: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `gatewayd reload -c PATH` (see `gatewayd_command`)."""
    return await gatewayd_command("reload", path, env=env)


async def gatewayd_command(command: str, path: Path, *args: str,
                           env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `gatewayd COMMAND -c PATH ARGS` with `env` over this process's environment, less the
    admin key and the runtime and credentials folders (a test names those it wants)."""
    theirs = ("GATEWAYD_ADMIN_KEY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY")
    ours = {k: v for k, v in os.environ.items() if k not in theirs}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.daemon.cli", command, "-c", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=path.parent,
        env={**ours, **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()
