"""A worker's side of `server.workers: N > 1`: its link to the supervisor.

A worker is a whole `gatewayd run` serving the listen address beside its siblings
(SO_REUSEPORT), started by the supervisor (daemon/supervisor.py) with `--control-fd`.
It never reloads on its own and never talks to systemd; through its control channel
(daemon/control.py) it

- tells the supervisor `serving` (with its version) once it listens;
- forwards `POST /admin/reload` (`reload`) and answers with the supervisor's result, which
  covers every worker;
- asks for `workers` (each worker's pid, version, requests in flight) for /admin/status and
  for `metrics` (every worker's and the supervisor's, merged) for /metrics;
- answers the supervisor's `prepare` (compile the file, keep the graph unpublished, answer its
  version or its FILE:LINE:COL problems), `commit` (publish it) and `abort`, `status`,
  `metrics` (its own exposition), and takes `event` (to publish on /admin/events) and
  `last_reload` (for /admin/status).

The channel closing means the supervisor is gone: the worker then shuts down as on SIGTERM.
This object is the worker's `runtime.reloader` and `runtime.workers`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from datetime import datetime, timezone

from gatewayd.daemon.config.load import load
from gatewayd.daemon.control import Channel, ChannelClosed
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.http.runtime import Runtime

log = logging.getLogger("gatewayd")

RELOAD_WAIT = 120.0  # a forwarded reload: debounce, every worker's compile and the commit
GATHER_WAIT = 5.0  # /admin/status and /metrics: the supervisor asks every worker, each bounded


class SupervisorLink:
    def __init__(self, runtime: Runtime, index: int, stop: asyncio.Event) -> None:
        self.runtime = runtime
        self.index = index
        self.stop_event = stop
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.channel: Channel | None = None
        self._pending: Graph | None = None  # prepared, not yet committed
        self._last: dict | None = None  # the supervisor's last reload result
        self._watching: asyncio.Task | None = None

    async def connect(self, fd: int) -> None:
        self.channel = await Channel.over(socket.socket(fileno=fd), self.handle)
        self._watching = asyncio.get_running_loop().create_task(self._watch_supervisor(), name="gatewayd-supervisor")

    async def _watch_supervisor(self) -> None:
        assert self.channel is not None
        await self.channel.closed.wait()
        if not self.stop_event.is_set():
            log.warning("the supervisor is gone: shutting down", extra={"event": "supervisor_gone"})
            self.stop_event.set()

    def serving(self) -> None:
        self._tell("serving", version=self.runtime.holder.current.graph.version, pid=os.getpid())

    def own(self) -> dict:
        return {"index": self.index, "pid": os.getpid()}

    # -- what the runtime's reloader does (http/ops.py, server.py) --------------

    async def request(self, trigger: str) -> dict:
        """A reload of every worker, by the supervisor; its result."""
        try:
            return await self._call("reload", RELOAD_WAIT, trigger=trigger)
        except (ChannelClosed, TimeoutError):
            path = self.runtime.config_path
            return {"ok": False, "changed": False, "version": self.runtime.holder.current.graph.version,
                    "error": f"{path}:1:1: the supervisor did not answer; nothing was reloaded",
                    "errors": [{"file": path, "line": 1, "column": 1,
                                "message": "the supervisor did not answer; nothing was reloaded"}],
                    "warnings": [], "trigger": trigger, "diff": None}

    def last_result(self) -> dict | None:
        return self._last

    async def stop(self) -> None:
        """Shutdown: the channel stays open while the worker drains (the supervisor still asks
        for its status); it closes when the process exits."""

    # -- what the runtime's workers answer (http/ops.py) ------------------------

    async def listing(self) -> list[dict]:
        try:
            return (await self._call("workers", GATHER_WAIT))["workers"]
        except (ChannelClosed, TimeoutError, KeyError):
            return [{**self.own(), **self.status(), "state": "serving"}]

    async def metrics(self) -> bytes | None:
        try:
            return (await self._call("metrics", GATHER_WAIT))["text"].encode()
        except (ChannelClosed, TimeoutError, KeyError):
            return None

    # -- what the supervisor asks -----------------------------------------------

    async def handle(self, op: str, message: dict) -> dict | None:
        if op == "prepare":
            return await self.prepare()
        if op == "commit":
            return self.commit(message["version"])
        if op == "abort":
            self._pending = None
            return None
        if op == "status":
            return self.status()
        if op == "metrics":
            return {"text": self.runtime.metrics.render().decode()}
        if op == "event":
            self.runtime.events.publish(message["kind"], **message["fields"])
            return None
        if op == "last_reload":
            self._last = message["result"]
            return None
        return {"error": f"unknown operation {op!r}"}

    async def prepare(self) -> dict:
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load, self.runtime.config_path)
        except ConfigError as error:
            self._pending = None
            return {"ok": False, "errors": [problem.as_dict() for problem in error.problems]}
        self._pending = loaded.graph
        return {"ok": True, "version": loaded.graph.version,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2)}

    def commit(self, version: str) -> dict:
        graph, self._pending = self._pending, None
        if graph is None or graph.version != version:
            return {"ok": False, "error": f"no prepared config {version}",
                    "version": self.runtime.holder.current.graph.version}
        if graph.version != self.runtime.holder.current.graph.version:
            self.runtime.install(graph)
            gc.freeze()  # as the single process does after a reload: the new graph lives long
        return {"ok": True, "version": graph.version}

    def status(self) -> dict:
        return {"index": self.index, "pid": os.getpid(), "version": self.runtime.holder.current.graph.version,
                "inflight": len(self.runtime.requests), "started": self.started}

    # -- the channel ----------------------------------------------------------

    async def _call(self, op: str, timeout: float, **fields) -> dict:
        if self.channel is None:
            raise ChannelClosed(op)
        return await self.channel.call(op, timeout, **fields)

    def _tell(self, op: str, **fields) -> None:
        if self.channel is not None:
            self.channel.tell(op, **fields)


def worker_count(setting: int) -> int:
    """`server.workers` as a number of processes: 0 is auto, one per CPU."""
    return setting if setting > 0 else os.cpu_count() or 1


async def join_supervisor(runtime: Runtime, fd: int, stop: asyncio.Event,
                          loop: asyncio.AbstractEventLoop) -> SupervisorLink:
    """Connect to the supervisor over the inherited descriptor `fd` and let it reload this worker."""
    link = SupervisorLink(runtime, int(os.environ.get("GATEWAYD_WORKER_INDEX", "0")), stop)
    await link.connect(fd)
    runtime.reloader = runtime.workers = link
    # the supervisor owns SIGHUP; a hangup of the whole process group must not end a worker
    loop.add_signal_handler(signal.SIGHUP, log.debug, "SIGHUP ignored by a worker: the supervisor reloads")
    return link
