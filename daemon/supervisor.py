"""`gatewayd run` with `server.workers: N > 1`: one supervisor process and N workers.

The supervisor has validated the config (an invalid one exits 1 with FILE:LINE:COL before
anything starts, as a single process does) and owns everything that is the daemon's and not a
request's: the folder watch, SIGHUP and the reload task (daemon/reload.py), sd_notify with the
watchdog pings, the runtime file, and the workers. It holds no listening socket: each worker
binds the listen address itself with SO_REUSEPORT, and the kernel hands each new connection to
one of them.

Workers are fresh interpreters (`python -P -m gatewayd.daemon.cli run -c FILE --control-fd N`),
not forks: a worker is restarted while the supervisor's event loop, its watch thread and its
child-watcher threads run, and forking such a process copies locks held by other threads. Each
gets `GATEWAYD_WORKERS` and `GATEWAYD_WORKER_INDEX`, and loses `NOTIFY_SOCKET` and the
watchdog's variables: only the supervisor talks to systemd (`NotifyAccess=main` holds).
A control channel (daemon/control.py) per worker carries what the two ask each other.

- Start: READY=1 once every worker said it serves; a worker that exits before that fails the
  start (exit 1), as a single process that cannot listen does.
- Reload, all or nothing: a trigger reaches the one reload task (RELOADING=1); a changed config
  is compiled by every serving worker (`prepare`, nothing published); only when every one of
  them compiled the version the supervisor compiled does each `commit` it, else all `abort` and
  the reload is rejected with the problems. READY=1 follows once every worker serves the new
  version. A worker's `POST /admin/reload` reaches this same task and answers its result.
- A worker that dies is logged (pid, exit status or signal) and replaced, the others untouched;
  a replacement that keeps dying young waits longer each time (RESTART_FIRST doubling up to
  RESTART_MAX). It compiles the file as it is then; should that not be the accepted version,
  it is brought in line (the accepted one) or a reload is asked (a newer one).
- SIGTERM/SIGINT: STOPPING=1, each worker gets SIGTERM and drains as a single process does;
  the supervisor waits for them (bounded by `shutdown_grace`), then exits 0. A second signal
  kills the workers (SIGKILL) and exits at once with status 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, generate_latest

from gatewayd.daemon import runfile
from gatewayd.daemon.config.load import Loaded
from gatewayd.daemon.control import Channel, ChannelClosed
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.core.problems import ConfigError, Problem
from gatewayd.daemon.observe.logformat import LineHandler
from gatewayd.daemon.observe.metrics import reload_counter, reload_failed_gauge
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from gatewayd.daemon.server import EXIT_FORCED
from gatewayd.daemon.workers_metrics import merge

log = logging.getLogger("gatewayd")

START_TIMEOUT = 60.0  # for every worker to serve at start
PREPARE_TIMEOUT = 60.0  # for a worker to compile a new config
COMMIT_TIMEOUT = 10.0  # for a worker to publish it
ASK_TIMEOUT = 2.0  # for a worker's status or metrics
RESTART_FIRST, RESTART_MAX = 0.1, 30.0  # seconds before a dead worker's replacement starts
STABLE_AFTER = 30.0  # a worker that lived this long died of something new: replaced after RESTART_FIRST
STOP_MARGIN = 10.0  # beyond shutdown_grace: the workers' last words and cleanup, then SIGKILL
HIDDEN_FROM_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Worker:
    """One worker's place: its index, and the process filling it now."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.version: str | None = None  # what it said it serves
        self.serving = asyncio.Event()  # it listens and answers; cleared when it exits

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: int) -> None:
        # os.kill, not Popen.send_signal: that one polls first, reaping an exited worker behind
        # the child watcher's back, which then reports its exit status as 255
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    async def ask(self, op: str, timeout: float, **fields) -> dict:
        if self.channel is None or not self.serving.is_set():
            raise ChannelClosed(op)
        return await self.channel.call(op, timeout, **fields)

    def tell(self, op: str, **fields) -> None:
        if self.channel is not None:
            self.channel.tell(op, **fields)


class SupervisorMetrics:
    """What only the supervisor counts, merged into every worker's /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reloads = reload_counter(self.registry)
        self.last_reload_error = reload_failed_gauge(self.registry)
        self.restarts = Counter("gatewayd_worker_restarts", "Workers that exited unexpectedly and were replaced",
                                registry=self.registry)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class WorkerEvents:
    """The reload task's event bus: its events are published on every worker's /admin/events."""

    def __init__(self, workers: list[Worker]) -> None:
        self._workers = workers

    def publish(self, kind: str, **fields) -> None:
        for worker in self._workers:
            if worker.serving.is_set():
                worker.tell("event", kind=kind, fields=fields)


class WorkersReloader(Reloader):
    """The reload task of daemon/reload.py, publishing into every worker or none."""

    def __init__(self, supervisor: Supervisor, notifier: Notifier) -> None:
        self.supervisor = supervisor
        super().__init__(supervisor, notifier)  # it is what the Reloader reloads: config_path, metrics, events

    def serving(self) -> Graph:
        return self.supervisor.accepted

    async def install(self, graph: Graph) -> None:
        try:
            await self.supervisor.install(graph)
        except ConfigError:
            self._inputs = None  # the workers refused what the digests describe: the next reload loads again
            raise

    async def reload(self, trigger: str) -> dict:
        result = await super().reload(trigger)
        self.supervisor.tell_serving("last_reload", result=self.last_result())
        return result


def worker_environ(environ: Mapping[str, str], count: int) -> dict[str, str]:
    env = {name: value for name, value in environ.items() if name not in HIDDEN_FROM_WORKERS}
    env["GATEWAYD_WORKERS"] = str(count)
    return env


def exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, config_path: str, loaded: Loaded, count: int) -> None:
        self.config_path = config_path
        self.accepted: Graph = loaded.graph  # what every worker serves, or will once it starts
        self.workers = [Worker(index) for index in range(count)]
        self.metrics = SupervisorMetrics()
        self.events = WorkerEvents(self.workers)
        self.environ = worker_environ(os.environ, count)
        self.stopping = asyncio.Event()
        self.ready = False  # READY=1 was sent: a worker exiting from now on is replaced
        self.start_failed = asyncio.Event()
        self.reloader: WorkersReloader | None = None
        self._changing = asyncio.Lock()  # one prepare/commit round across the workers at a time
        self._keepers: list[asyncio.Task] = []
        self._aligning: set[asyncio.Task] = set()

    # -- the process's life ---------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.on_stop_signals(loop)
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP before the workers serve: ignored")
        notifier = Notifier.from_environ()
        graph = self.accepted
        self._keepers = [loop.create_task(self.keep(worker), name=f"gatewayd-worker-{worker.index}")
                         for worker in self.workers]
        published = None
        watchdog: asyncio.Task | None = None
        try:
            if not await self.all_serving():
                if not self.stopping.is_set():
                    log.error("gatewayd: not started: not every worker came to serve",
                              extra={"event": "start_failed"})
                    await self.stop_workers()
                    return 1
            else:
                published = runfile.publish(graph.server.listen, self.config_path)
                self.reloader = WorkersReloader(self, notifier)
                await self.reloader.start(loop)
                watchdog = loop.create_task(notifier.run_watchdog(), name="gatewayd-watchdog")
                pids = [worker.pid for worker in self.workers]
                log.info("gatewayd serving on %s with %d workers (pids %s; config %s, version %s)",
                         graph.server.listen, len(pids), ", ".join(map(str, pids)), self.config_path, graph.version,
                         extra={"event": "start", "listen": graph.server.listen, "config": self.config_path,
                                "version": graph.version, "workers": pids})
                self.ready = True
                if not self.stopping.is_set():
                    notifier.ready(f"serving config {graph.version} with {len(pids)} workers")
            await self.stopping.wait()
            notifier.stopping()
            if self.reloader is not None:
                await self.reloader.stop()
            loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: shutting down")
            await self.stop_workers()
        finally:
            runfile.withdraw(published)
            if watchdog is not None:
                watchdog.cancel()
            notifier.close()
        log.info("stopped", extra={"event": "stopped"})
        return 0

    def on_stop_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def received(sig: signal.Signals) -> None:
            if not self.stopping.is_set():
                log.info("%s: shutting down every worker (send it again to exit at once)", sig.name,
                         extra={"event": "stop_signal", "signal": sig.name})
                self.stopping.set()
                return
            log.warning("%s again: killing the workers and exiting at once with status %d", sig.name, EXIT_FORCED,
                        extra={"event": "stop_forced", "signal": sig.name, "exit_code": EXIT_FORCED})
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
            for handler in logging.getLogger("gatewayd").handlers:
                handler.flush()
            os._exit(EXIT_FORCED)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, received, sig)

    async def all_serving(self) -> bool:
        """Wait (bounded) until every worker serves; False when one exited first, or on a stop."""
        everyone = asyncio.ensure_future(asyncio.gather(*(worker.serving.wait() for worker in self.workers)))
        ends = [asyncio.ensure_future(self.start_failed.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait([everyone, *ends], timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (everyone, *ends):
                waiting.cancel()
            await asyncio.gather(everyone, *ends, return_exceptions=True)
        return all(worker.serving.is_set() for worker in self.workers) and not self.start_failed.is_set()

    async def stop_workers(self) -> None:
        """SIGTERM to every worker, and wait for them to drain; SIGKILL to what is left after the grace."""
        self.stopping.set()
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        wait = self.accepted.server.shutdown_grace + STOP_MARGIN
        await asyncio.wait(self._keepers, timeout=wait)
        for worker in self.workers:
            if worker.alive:
                log.warning("worker %d (pid %s) still running %gs after SIGTERM: killing it", worker.index, worker.pid,
                            wait, extra={"event": "worker_killed", "worker": worker.index, "pid": worker.pid})
                worker.signal(signal.SIGKILL)
        await asyncio.wait(self._keepers, timeout=5)

    # -- each worker's place ----------------------------------------------------

    async def keep(self, worker: Worker) -> None:
        """Keep `worker`'s place filled until the supervisor stops."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stopping.is_set():
            started = loop.time()
            try:
                await self.spawn(worker)
            except OSError as exc:
                log.error("worker %d could not start: %s", worker.index, exc,
                          extra={"event": "worker_start_failed", "worker": worker.index})
                code = None
            else:
                if self.stopping.is_set():  # the stop came while it was starting
                    worker.signal(signal.SIGTERM)
                code = await worker.process.wait()
            worker.serving.clear()
            if worker.channel is not None:
                await worker.channel.close()
            if self.stopping.is_set():
                return
            how = exit_text(code) if code is not None else "did not start"
            if not self.ready:
                log.error("worker %d (pid %s) %s before serving", worker.index, worker.pid, how,
                          extra={"event": "worker_exit", "worker": worker.index, "pid": worker.pid, "exit": code})
                self.start_failed.set()
                return
            failures = 1 if loop.time() - started >= STABLE_AFTER else failures + 1
            delay = min(RESTART_FIRST * 2 ** (failures - 1), RESTART_MAX)
            log.error("worker %d (pid %s) %s: starting a new one in %gs", worker.index, worker.pid, how, delay,
                      extra={"event": "worker_exit", "worker": worker.index, "pid": worker.pid, "exit": code,
                             "restart_in_s": delay})
            self.metrics.restarts.inc()
            self.events.publish("worker_exit", worker=worker.index, pid=worker.pid, exit=how)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    async def spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "gatewayd.daemon.cli", "run", "-c", self.config_path,
                "--control-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                env={**self.environ, "GATEWAYD_WORKER_INDEX": str(worker.index)})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.version = None
        worker.channel = await Channel.over(ours, functools.partial(self.handle, worker))

    # -- what workers ask -------------------------------------------------------

    async def handle(self, worker: Worker, op: str, message: dict) -> dict | None:
        if op == "serving":
            self.serving(worker, message["version"])
            return None
        if op == "reload":
            trigger = message.get("trigger") if message.get("trigger") in ("api", "cli") else "api"
            if self.reloader is None:
                return {"ok": False, "error": "gatewayd is starting; nothing was reloaded", "errors": [],
                        "changed": False, "version": self.accepted.version, "trigger": trigger}
            return await self.reloader.request(trigger)
        if op == "workers":
            return {"workers": await self.listing()}
        if op == "metrics":
            return {"text": await self.metrics_text()}
        return {"error": f"unknown operation {op!r}"}

    def serving(self, worker: Worker, version: str) -> None:
        worker.version = version
        worker.serving.set()
        log.info("worker %d (pid %s) serving config %s", worker.index, worker.pid, version,
                 extra={"event": "worker_serving", "worker": worker.index, "pid": worker.pid, "version": version})
        if self.reloader is not None and self.reloader.last_result() is not None:
            worker.tell("last_reload", result=self.reloader.last_result())
        if self.ready and version != self.accepted.version:
            task = asyncio.get_running_loop().create_task(self.align(worker))
            self._aligning.add(task)
            task.add_done_callback(self._aligning.discard)

    async def listing(self) -> list[dict]:
        """Each worker's pid, version, requests in flight and start, or why it has none."""
        async def one(worker: Worker) -> dict:
            place = {"index": worker.index, "pid": worker.pid}
            if not worker.serving.is_set():
                return {**place, "state": "starting" if worker.alive else "restarting"}
            try:
                return {**await worker.ask("status", ASK_TIMEOUT), "state": "serving"}
            except (ChannelClosed, TimeoutError):
                return {**place, "version": worker.version, "state": "not answering"}
        return list(await asyncio.gather(*(one(worker) for worker in self.workers)))

    async def metrics_text(self) -> str:
        async def one(worker: Worker) -> tuple[str, str] | None:
            try:
                return str(worker.index), (await worker.ask("metrics", ASK_TIMEOUT))["text"]
            except (ChannelClosed, TimeoutError, KeyError):
                return None
        texts = [text for text in await asyncio.gather(*(one(w) for w in self.workers)) if text is not None]
        return merge([*texts, (None, self.metrics.render())]).decode()

    def tell_serving(self, op: str, **fields) -> None:
        for worker in self.workers:
            if worker.serving.is_set():
                worker.tell(op, **fields)

    # -- one config across the workers --------------------------------------------

    async def install(self, graph: Graph) -> None:
        """Publish `graph` in every serving worker, or in none (ConfigError with the problems)."""
        async with self._changing:
            members = [worker for worker in self.workers if worker.serving.is_set()]
            prepared = await self.prepare(members, graph.version)
            self.accepted = graph  # a worker starting from here compiles this same file
            await self.commit(prepared, graph.version)

    async def prepare(self, members: list[Worker], version: str) -> list[Worker]:
        answers = await asyncio.gather(*(worker.ask("prepare", PREPARE_TIMEOUT) for worker in members),
                                       return_exceptions=True)
        problems: list[Problem] = []
        prepared = []
        for worker, answer in zip(members, answers, strict=True):
            if isinstance(answer, ChannelClosed):
                continue  # it died meanwhile: its replacement compiles the file itself
            if isinstance(answer, BaseException):
                problems.append(Problem(self.config_path, 1, 1, f"worker {worker.index} (pid {worker.pid}) did not "
                                        f"compile the config within {PREPARE_TIMEOUT:g}s"))
            elif not answer.get("ok"):
                problems.extend(Problem(**problem) for problem in answer.get("errors", ()))
            elif answer["version"] != version:
                problems.append(Problem(self.config_path, 1, 1, f"worker {worker.index} compiled config "
                                        f"{answer['version']}, not {version}: the file changed during the reload; "
                                        "the next reload applies it"))
            else:
                prepared.append(worker)
        if problems:
            for worker in members:
                worker.tell("abort")
            raise ConfigError(list(dict.fromkeys(problems)))  # every worker finds the same problems
        return prepared

    async def commit(self, prepared: list[Worker], version: str) -> None:
        answers = await asyncio.gather(*(worker.ask("commit", COMMIT_TIMEOUT, version=version)
                                         for worker in prepared), return_exceptions=True)
        for worker, answer in zip(prepared, answers, strict=True):
            if isinstance(answer, ChannelClosed):
                continue
            if isinstance(answer, BaseException) or not answer.get("ok"):
                # it compiled the config a moment ago: a new process serves it rather than leave one behind
                log.error("worker %d (pid %s) did not publish config %s: replacing it", worker.index, worker.pid,
                          version, extra={"event": "worker_commit_failed", "worker": worker.index, "pid": worker.pid})
                worker.signal(signal.SIGKILL)
            else:
                worker.version = answer["version"]

    async def align(self, worker: Worker) -> None:
        """A worker that came up serving another version than the accepted one: give it the accepted
        one, or, when the file holds a newer one by now, ask for the reload that brings everyone there."""
        async with self._changing:
            if not worker.serving.is_set() or worker.version == self.accepted.version:
                return
            try:
                await self.commit(await self.prepare([worker], self.accepted.version), self.accepted.version)
            except ConfigError:
                if self.reloader is not None:
                    self.reloader.ask("file")


def supervise(config_path: str, loaded: Loaded, count: int, log_lines: LineHandler) -> int:
    """Run the supervisor of `count` workers until it stops; its exit status."""
    async def main() -> int:
        supervisor = Supervisor(config_path, loaded, count)
        log_lines.follow(lambda: supervisor.accepted.server.log_format)
        return await supervisor.run()

    with asyncio.Runner() as runner:
        return runner.run(main())
