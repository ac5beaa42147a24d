"""`gatewayd run`: load the config, listen, serve, and shut down in order.

Start-up with an invalid config exits 1 with FILE:LINE:COL messages before
anything listens. SIGTERM/SIGINT stop accepting, let in-flight requests finish
for up to `server.shutdown_grace`, end streams still open with an SSE error
event, and exit 0; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from gatewayd.daemon.app import Runtime, create_app
from gatewayd.daemon.config import find_config, load
from gatewayd.daemon.problems import ConfigError
from gatewayd.daemon.sdnotify import Notifier

log = logging.getLogger("gatewayd")


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("gatewayd")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def site_for(runner: web.AppRunner, listen: str) -> web.BaseSite:
    if listen.startswith("unix:"):
        return web.UnixSite(runner, listen[5:])
    host, _, port = listen.rpartition(":")
    return web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True, backlog=1024)


async def serve(config_path: str, loaded) -> int:
    runtime = Runtime(loaded, config_path)
    graph = loaded.graph
    app = create_app(runtime)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=graph.server.shutdown_grace)
    await runner.setup()
    site = site_for(runner, graph.server.listen)
    await site.start()
    notifier = Notifier.from_environ()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_stop_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting at once")
            os._exit(0)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    reloader = None
    try:
        from gatewayd.daemon.reload import Reloader
    except ImportError:
        Reloader = None  # type: ignore[assignment,misc]
    if Reloader is not None:
        reloader = Reloader(runtime, notifier)
        runtime.reloader = reloader
        await reloader.start(loop)
    watchdog = asyncio.create_task(notifier.run_watchdog()) if notifier.watchdog_interval() else None
    log.info("gatewayd serving on %s (config %s, version %s)", graph.server.listen, config_path, graph.version)
    notifier.ready(f"serving config {graph.version}")
    await stop.wait()
    notifier.stopping()
    log.info("stopping: draining in-flight requests for up to %ss", runtime.holder.current.graph.server.shutdown_grace)
    if reloader is not None:
        await reloader.stop()
    if watchdog is not None:
        watchdog.cancel()
    await runner.cleanup()
    notifier.close()
    log.info("stopped")
    return 0


def run(config: str | None) -> int:
    configure_logging()
    try:
        path = find_config(config)
        loaded = load(path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("gatewayd: not started: the config has errors", file=sys.stderr)
        return 1
    for warning in loaded.graph.warnings:
        log.warning("warning: %s", warning)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(path, loaded))
    except OSError as exc:
        print(f"gatewayd: cannot listen on {loaded.graph.server.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
