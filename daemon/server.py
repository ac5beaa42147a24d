"""`gatewayd run`: load the config, listen, serve, and shut down in order.

Start-up: the config is loaded and compiled before anything listens; an invalid
one exits 1 with FILE:LINE:COL messages on stderr and no READY=1. READY=1 goes
out once the graph is compiled and the socket listens; WATCHDOG=1 pings run as
a task on the event loop (half of WATCHDOG_USEC), so a stuck loop stops them.

Shutdown is ordered and bounded. On SIGTERM or SIGINT:

1. STOPPING=1; `runtime.stopping` is set and /admin/events streams end;
2. the listening sockets close at once (new connections are refused) and idle
   keep-alive connections close; busy ones close after their answer;
3. the reload task stops; in-flight requests (streams included) run to their
   end for up to `server.shutdown_grace` from the signal;
4. requests still running then are cancelled: one that has sent nothing gets a
   503 `shutting_down` answer, a stream ends with an SSE error event
   `data: {"error": {... "code": "shutting_down"}}` and no `[DONE]`
   (see `GatewayHandler` in app.py); they get CANCEL_WAIT to write it;
5. the runtime closes the upstream connection pools; exit 0.

A second SIGTERM/SIGINT exits at once with status 130 (EXIT_FORCED), without
draining: whatever is still open is cut.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import resource
import signal
import sys

from aiohttp import web

from gatewayd.daemon import runfile
from gatewayd.daemon.config.load import Loaded, find_config, load
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.http.app import create_app
from gatewayd.daemon.http.connection import GatewayServer
from gatewayd.daemon.http.runtime import Runtime
from gatewayd.daemon.observe.logformat import LineHandler, configure_logging
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from gatewayd.daemon.workers import join_supervisor, worker_count

log = logging.getLogger("gatewayd")

EXIT_FORCED = 130  # a second stop signal: exit at once
CANCEL_WAIT = 2.0  # after the grace, for cancelled requests to write their last message
RUNNER_TIMEOUT = 1.0  # aiohttp's own wait per connection at cleanup; nothing is in flight by then


# Connections the kernel may hold for us before we accept them. Linux caps it at
# net.core.somaxconn (4096 by default since 5.4) without a word, so this asks for as many as the
# host allows: a burst of new streams waits in the queue instead of being dropped from it.
BACKLOG = 65535
# Every relayed request holds two descriptors (its client's connection and its upstream's): fewer
# open files than this hold fewer than about 32,000 streams, which the start-up log says.
OPEN_FILES_WANTED = 65536
OPEN_FILES_CEILING = 1 << 20  # what Linux allows by default (fs.nr_open) when the hard limit is unlimited


def site_for(runner: web.BaseRunner, listen: str, reuse_port: bool = False) -> web.BaseSite:
    """The listening socket; `reuse_port` for one of several workers, each accepting its own share
    of the connections (the kernel spreads them by the connection's hash)."""
    if listen.startswith("unix:"):
        return web.UnixSite(runner, listen[5:], backlog=BACKLOG)
    host, _, port = listen.rpartition(":")
    return web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True, reuse_port=reuse_port or None,
                       backlog=BACKLOG)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (the usual soft default, 1024, would
    refuse connections past about 500 streams) and return the soft limit in force; log it when
    it stays below OPEN_FILES_WANTED (a hard limit that low, or a sandbox that forbids raising it:
    systemd/gatewayd.service sets `LimitNOFILE=` instead)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_WANTED:
        log.warning("open files are limited to %d: about %d requests and streams at once; raise the hard "
                    "limit (LimitNOFILE= under systemd, ulimit -Hn) for more", soft, soft // 2,
                    extra={"event": "open_files_low", "limit": soft})
    return soft


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, forced: bool = True) -> None:
    """The first SIGTERM/SIGINT sets `stop`; the second exits the process at once, unless
    `forced` is off: a worker gets the supervisor's SIGTERM and often the terminal's SIGINT too,
    and only the supervisor decides to force (by SIGKILL)."""

    def received(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s: shutting down (send it again to exit at once)", sig.name,
                     extra={"event": "stop_signal", "signal": sig.name})
            stop.set()
            return
        if not forced:
            return
        log.warning("%s again: exiting at once with status %d", sig.name, EXIT_FORCED,
                    extra={"event": "stop_forced", "signal": sig.name, "exit_code": EXIT_FORCED})
        for handler in logging.getLogger("gatewayd").handlers:
            handler.flush()
        os._exit(EXIT_FORCED)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig)


async def start_reloader(runtime: Runtime, notifier: Notifier, loop: asyncio.AbstractEventLoop) -> Reloader:
    reloader = Reloader(runtime, notifier)
    runtime.reloader = reloader
    await reloader.start(loop)
    return reloader


async def serve(config_path: str, loaded: Loaded, log_lines: LineHandler | None = None,
                control_fd: int | None = None) -> int:
    """Serve until stopped; with `control_fd`, as one of several workers (daemon/workers.py):
    the supervisor reloads, notifies systemd and writes the runtime file."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    on_stop_signals(loop, stop, forced=control_fd is None)  # before anything else: a stop during start-up is not lost
    runtime = Runtime(loaded, config_path)
    gc.freeze()  # the graph and the imported code live as long as the process: out of the GC's way
    runtime.access.write_to(sys.stderr)  # the journal under systemd; batched, not through logging
    if log_lines is not None:  # log lines follow the serving graph's log_format, after the access lines before them
        log_lines.follow(lambda: runtime.holder.current.graph.server.log_format,
                         runtime.access.flush_before_log_line)
    graph = loaded.graph
    notifier = Notifier.from_environ()
    # keepalive_timeout also bounds a connection that never completes its request headers
    # (aiohttp closes a handler still waiting for a message when it fires): slow clients are cut
    # off after read_timeout; the body has its own bound in api.read_json.
    server = GatewayServer(create_app(runtime), handler_cancellation=True, access_log=None, tcp_keepalive=True,
                           keepalive_timeout=graph.server.read_timeout)
    runner = web.ServerRunner(server, shutdown_timeout=RUNNER_TIMEOUT)
    await runner.setup()
    watchdog: asyncio.Task | None = None
    published = None
    try:
        if control_fd is None:
            await site_for(runner, graph.server.listen).start()
            published = runfile.publish(graph.server.listen, config_path)  # where `gatewayd reload` finds us
            reloader = await start_reloader(runtime, notifier, loop)
        else:
            reloader = await join_supervisor(runtime, control_fd, stop, loop)
            await site_for(runner, graph.server.listen, reuse_port=True).start()
            reloader.serving()
        watchdog = loop.create_task(notifier.run_watchdog(), name="gatewayd-watchdog")
        log.info("gatewayd serving on %s (config %s, version %s)", graph.server.listen, config_path,
                 graph.version, extra={"event": "start", "listen": graph.server.listen, "config": config_path,
                                       "version": graph.version})
        if not stop.is_set():
            notifier.ready(f"serving config {graph.version}")
        await stop.wait()
        await shutdown(runner, runtime, notifier, reloader)
    finally:
        runfile.withdraw(published)
        await runner.cleanup()
        await runtime.close()  # the upstream pools, once no request can use them
        runtime.access.flush()
        if watchdog is not None:
            watchdog.cancel()
        notifier.close()
    log.info("stopped", extra={"event": "stopped"})
    return 0


async def shutdown(runner: web.BaseRunner, runtime: Runtime, notifier: Notifier, reloader) -> None:
    """Steps 1-4 of the module docstring; the caller runs the cleanup (step 5)."""
    loop = asyncio.get_running_loop()
    grace = runtime.holder.current.graph.server.shutdown_grace
    deadline = loop.time() + grace
    notifier.stopping()
    runtime.begin_stopping()
    for site in list(runner.sites):
        await site.stop()  # the listening socket closes: new connections are refused from here
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their answer
    log.info("stopping: no longer accepting; %d request(s) in flight, %gs to finish",
             len(runtime.requests), grace,
             extra={"event": "drain", "in_flight": len(runtime.requests), "grace_s": grace})
    if reloader is not None:
        await reloader.stop()
        # its SIGHUP handler is gone; SIGHUP's default action would kill the process mid-drain
        loop.add_signal_handler(signal.SIGHUP, functools.partial(
            log.info, "SIGHUP ignored: shutting down", extra={"event": "signal_ignored", "signal": "SIGHUP"}))
    if await runtime.requests.wait_idle(deadline - loop.time()):
        return
    count = runtime.requests.cancel_all()
    log.warning("shutdown_grace (%gs) passed: ending %d request(s) with a shutting_down error", grace, count,
                extra={"event": "drain_timeout", "grace_s": grace, "cancelled": count})
    if not await runtime.requests.wait_idle(CANCEL_WAIT):
        log.warning("%d request(s) did not end after cancellation; closing their connections",
                    len(runtime.requests), extra={"event": "drain_cut", "in_flight": len(runtime.requests)})


def run(config: str | None, control_fd: int | None = None) -> int:
    """`gatewayd run`: one process serving (`server.workers: 1`), the supervisor of several, or,
    with `control_fd`, one of the supervisor's workers."""
    log_lines = configure_logging()
    try:
        path = find_config(config)
        loaded = load(path)
    except ConfigError as error:  # no log_format chosen yet: these lines are text
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("gatewayd: not started: the config has errors", file=sys.stderr)
        return 1
    log_lines.follow(lambda: loaded.graph.server.log_format)
    for warning in loaded.graph.warnings if control_fd is None else ():  # the supervisor said it
        log.warning("warning: %s", warning, extra={"event": "config_warning"})
    workers = worker_count(loaded.graph.server.workers)
    if control_fd is None and workers > 1:
        from gatewayd.daemon.supervisor import supervise

        return supervise(path, loaded, workers, log_lines)
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:  # not installed where uvloop has no build (Windows): the standard loop serves
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(path, loaded, log_lines, control_fd))
    except OSError as exc:
        log.error("gatewayd: cannot listen on %s: %s", loaded.graph.server.listen, exc.strerror or exc,
                  extra={"event": "listen_failed", "listen": loaded.graph.server.listen})
        return 1
