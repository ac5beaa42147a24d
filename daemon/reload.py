"""Hot reload: four triggers feed one reload task, which runs one reload at a time.

Triggers. The folder watch (`watch.FolderWatch`, on a file event), SIGHUP,
`POST /admin/reload` and `gatewayd reload` (which calls that endpoint) all call
`Reloader.ask`; nothing else ever reloads. One task runs the reloads, one at a
time. Whatever is asked while a reload runs becomes ONE more reload afterwards,
of the file as it is then: requests coalesce, they never queue up. `request()`
waits for the result of a reload that starts after it was asked, so a caller
sees its own edit.

Debounce, bounded. Each trigger has a quiet time and a longest wait (`DELAYS`):
the reload starts once no request of that trigger came for its quiet time, but
never later than its longest wait after the burst's first request. A file event
(already grouped by the watch) waits 150 ms of quiet, so a file being written
is not read half-way, and at most 1 s: a file rewritten every 300 ms, or
continuously, still serves its latest content within 2 s. SIGHUP bursts get a
short quiet window (100 ms, at most 500 ms); API and CLI requests start at once.

One reload. It first digests what the serving config was made of (the file,
the environment values it references, its secret files): identical inputs need
no parsing at all. Otherwise it reads, validates, resolves secrets and compiles
(in a thread: `config.load` touches only files); a resolved config identical to
the running one (same `graph.version`) publishes nothing; any other is handed
to `Runtime.install`, the one publisher. Any failure leaves the old snapshot
serving: there is nothing to roll back. Every reload is then reported the same
way: its result (`last_result()`, the `request()` answer), the log, /metrics,
the event bus, and systemd's RELOADING=1 / READY=1 with STATUS=.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from gatewayd.daemon.config.diff import describe as describe_diff
from gatewayd.daemon.config.diff import of_reload as reload_diff
from gatewayd.daemon.config.load import load, secret_files
from gatewayd.daemon.config.yamldoc import load_document
from gatewayd.daemon.core.problems import ConfigError, Problem
from gatewayd.daemon.watch import FolderWatch

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Graph
    from gatewayd.daemon.http.runtime import Runtime
    from gatewayd.daemon.sdnotify import Notifier

log = logging.getLogger("gatewayd")

# trigger -> (quiet time wanted after its last request, longest wait after its first), seconds
DELAYS = {"file": (0.15, 1.0), "signal": (0.1, 0.5), "api": (0.0, 0.0), "cli": (0.0, 0.0)}
PRIORITY = ("cli", "api", "signal", "file")  # the trigger a coalesced reload is reported under


class Reloader:
    """The one reload task, the triggers that ask it, and the result of its last reload."""

    def __init__(self, runtime: Runtime, notifier: Notifier) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.path = runtime.config_path
        self.listening = self.serving().server.listen  # what the socket is bound to
        self.configured_workers = self.serving().server.workers  # applies at restart only
        self._last: dict | None = None
        self._first: dict[str, float] = {}  # trigger -> loop time of its first pending request
        self._due: dict[str, float] = {}  # trigger -> loop time its reload should start
        self._waiters: list[asyncio.Future] = []  # request() callers the next reload answers
        self._running: list[asyncio.Future] = []  # those the reload under way answers
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._secrets: tuple[Path, ...] = ()
        self._env_names: tuple[str, ...] = ()  # the environment variables the config references
        self._inputs: tuple | None = None  # digests of what the serving config was loaded from
        self._data: Mapping | None = None  # the serving config's document, for the next reload's diff
        self._last_diff: dict | None = None  # what the last accepted reload changed
        self.watch = FolderWatch(self.path, lambda: self.ask("file"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # -- triggers -------------------------------------------------------------

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_signal_handler(signal.SIGHUP, self.ask, "signal")  # before any await: no gap
        try:
            data = load_document(self.path, os.environ).data
            self._secrets = tuple(secret_files(data, self.path, os.environ).values())
            self._data = data
        except ConfigError:
            pass  # the running graph loaded it a moment ago; a watch on the config itself still works
        self.watch.aim(self._secrets)
        self._task = loop.create_task(self._run(), name="gatewayd-reload")
        self.watch.start(loop)

    async def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(asyncio.wait([self._task], timeout=2), self.watch.stop())
        for waiter in self._waiters + self._running:
            if not waiter.done():
                waiter.set_result(self._failure("api", "gatewayd is shutting down; nothing was reloaded"))
        # pools still draining keep closing while the server drains (see Runtime.install)

    def ask(self, trigger: str) -> None:
        """Ask for a reload; a burst of asks becomes one reload."""
        now = asyncio.get_running_loop().time()
        quiet, longest = DELAYS[trigger]
        first = self._first.setdefault(trigger, now)
        self._due[trigger] = min(now + quiet, first + longest)
        self._wake.set()

    async def request(self, trigger: str) -> dict:
        """Reload and return the result of a reload that started after this call."""
        if self._stopping.is_set():
            return self._failure(trigger, "gatewayd is shutting down; nothing was reloaded")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.ask(trigger)
        return await waiter

    def last_result(self) -> dict | None:
        """The last reload's result, for /admin/status; its `diff` is the last accepted reload's
        (what the serving config changed), whatever came after it."""
        if self._last is None:
            return None
        return {**self._last, "diff": self._last_diff}

    # -- what a reload serves ---------------------------------------------------

    def serving(self) -> Graph:
        """The graph serving now (the supervisor of several workers: the one they all serve)."""
        return self.runtime.holder.current.graph

    async def install(self, graph: Graph) -> None:
        """Publish `graph`; a ConfigError rejects it with the old graph still serving (the
        supervisor of several workers installs it in every worker or in none)."""
        self.runtime.install(graph)

    # -- the reload task ------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            while True:  # bounded: every due time is capped by its trigger's first request
                self._wake.clear()
                delay = min(self._due.values()) - loop.time()
                if delay <= 0:
                    break
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            if not self._due:
                continue
            trigger = next(t for t in PRIORITY if t in self._due)
            self._running, self._waiters = self._waiters, []
            self._first.clear()
            self._due.clear()
            try:
                result = await self.reload(trigger)
            except Exception as exc:  # reporting failed; the task must live on for the next reload
                log.exception("reload task error", extra={"event": "reload_error"})
                result = self._failure(trigger, f"reload failed: {exc!r}")
            for waiter in self._running:
                if not waiter.done():
                    waiter.set_result(dict(result))
            self._running = []

    async def reload(self, trigger: str) -> dict:
        """One reload: load, compare, install (or keep serving the old snapshot); never raises."""
        started, at = time.perf_counter(), datetime.now(timezone.utc)
        self.notifier.reloading()
        old = self.serving()
        problems: list[Problem] = []
        warnings: list[str] = []
        changed = False
        diff: dict | None = None
        try:
            inputs = await asyncio.to_thread(inputs_of, self.path, self._env_names, self._secrets)
            if inputs is not None and inputs == self._inputs:  # nothing it is made of changed: no work
                self.watch.aim(self._secrets)
                result = self._result(trigger, [], False, [], started, at)
                self._report(result, [])
                self._last = result
                return result
            loaded = await asyncio.to_thread(load, self.path)
            graph = loaded.graph
            secrets = tuple(secret_files(loaded.document.data, self.path, os.environ).values())
            env_names = tuple(sorted(loaded.document.env_refs))
            # The digests were taken before the load: if the file changed in between, the next
            # reload sees a difference and loads again, never the reverse. A file that now names
            # other secret files gets no digests until the next full load.
            if inputs is not None and secrets == self._secrets:
                inputs = (inputs[0], tuple((name, os.environ.get(name)) for name in env_names), inputs[2])
            else:
                inputs = None
            self._inputs, self._secrets, self._env_names = inputs, secrets, env_names
            if graph.server.listen != self.listening:
                warnings.append(f"server.listen changed from {self.listening} to {graph.server.listen}: "
                                "restart gatewayd to apply it")
            if graph.server.workers != self.configured_workers:
                warnings.append(f"server.workers changed from {workers_text(self.configured_workers)} to "
                                f"{workers_text(graph.server.workers)}: restart gatewayd to apply it")
            if graph.version != old.version:
                await self.install(graph)
                changed = True
                diff = self._last_diff = reload_diff(self._data, loaded.document.data)
                self._data = loaded.document.data
                # The new graph is long-lived: keep the cyclic collector from rescanning it (and
                # all that came before) in every full collection, which paused serving for ~120 ms
                # at 1,000 aliases. Freezing is the process's choice (here and in server.serve),
                # not Runtime's: whatever else builds a Runtime keeps its collector as it was.
                gc.freeze()
        except ConfigError as error:
            problems = list(error.problems)
        except Exception as exc:  # a bug must neither take the daemon down nor publish half a world
            log.exception("reload failed unexpectedly", extra={"event": "reload_error"})
            problems = [Problem(self.path, 1, 1, f"reload failed: {type(exc).__name__}: {exc}")]
        self.watch.aim(self._secrets)
        result = self._result(trigger, problems, changed, warnings, started, at)
        result["diff"] = diff
        self._report(result, problems)
        self._last = result
        return result

    def _result(self, trigger: str, problems: list[Problem], changed: bool, warnings: list[str],
                started: float, at: datetime) -> dict:
        return {"ok": not problems, "changed": changed, "version": self.serving().version,
                "error": str(problems[0]) if problems else None, "errors": [p.as_dict() for p in problems],
                "warnings": warnings, "trigger": trigger, "at": at.isoformat(timespec="milliseconds"),
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "diff": None}  # what an accepted reload changed (reload() sets it)

    def _failure(self, trigger: str, message: str) -> dict:
        problems = [Problem(self.path, 1, 1, message)]
        return self._result(trigger, problems, False, [], time.perf_counter(), datetime.now(timezone.utc))

    def _report(self, result: dict, problems: list[Problem]) -> None:
        """The log, /metrics and systemd's STATUS= hear of every reload."""
        metrics, version, trigger = self.runtime.metrics, result["version"], result["trigger"]
        for warning in result["warnings"]:
            log.warning("warning: %s", warning, extra={"event": "config_warning"})
        metrics.last_reload_error.clear()
        if problems:
            outcome = "rejected"
            log.error("reload (%s) rejected; still serving config %s:", trigger, version,
                      extra={"event": "reload", "result": outcome, "trigger": trigger, "version": version,
                             "error": result["error"]})
            for problem in problems:
                log.error("error: %s", problem, extra={"event": "config_error", "file": problem.file,
                                                   "line": problem.line, "column": problem.column})
            first = problems[0]
            metrics.last_reload_error.labels(f"{first.file}:{first.line}:{first.column}").set(1)
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            status = f"reload rejected: {first}{more}; serving config {version}"
        elif result["changed"]:
            outcome = "accepted"
            diff = result.get("diff")
            changes = describe_diff(diff) if diff is not None else []
            log.info("reload (%s) accepted: serving config %s (%.1f ms)%s", trigger, version, result["duration_ms"],
                     "".join(f"\n  {line}" for line in changes),
                     extra={"event": "reload", "result": outcome, "trigger": trigger, "version": version,
                            "duration_ms": result["duration_ms"], "diff": diff})
            status = f"reload accepted: serving config {version}"
        else:
            outcome = "unchanged"
            log.info("reload (%s): config unchanged, still %s (%.1f ms)", trigger, version, result["duration_ms"],
                     extra={"event": "reload", "result": outcome, "trigger": trigger, "version": version,
                            "duration_ms": result["duration_ms"]})
            status = f"reload accepted: config {version} unchanged"
        if result["warnings"]:
            status += "; " + "; ".join(result["warnings"])
        metrics.reloads.labels(outcome, trigger).inc()
        events = getattr(self.runtime, "events", None)  # /admin/events
        if events is not None:
            events.publish("reload", result=outcome, version=version, trigger=trigger, error=result["error"],
                           warnings=result["warnings"], diff=result.get("diff"))
        self.notifier.ready(status)


def workers_text(count: int) -> str:
    return "auto" if count == 0 else str(count)


def inputs_of(path: str, env_names: tuple[str, ...], secrets: tuple[Path, ...]) -> tuple | None:
    """What a resolved config is made of, as digests: the file's bytes, the values of the
    environment variables it references, its secret files' bytes. None if one can't be read."""
    try:
        file_digest = hashlib.sha256(Path(path).read_bytes()).digest()
        secret_digests = tuple(hashlib.sha256(p.read_bytes()).digest() for p in secrets)
    except OSError:
        return None
    return file_digest, tuple((name, os.environ.get(name)) for name in env_names), secret_digests
