"""The HTTP application: the runtime that outlives reloads, and its routes.

`create_app(runtime)` wires handlers to an existing `Runtime` and returns the
request handler for aiohttp's low-level server; everything is owned by the
runtime (no module globals), and its owner calls `Runtime.close()` at the end.

Shutdown support (the order lives in server.py): every request runs inside
`GatewayHandler`, which keeps the set of handler tasks in flight so the server
can wait for them, and, once `runtime.stopping` is set, turns the cancellation
of a request still running at the end of the grace into a last message: a 503
`shutting_down` answer when nothing was sent yet, or an SSE error event
(`data: {"error": {... "code": "shutting_down"}}`, no `[DONE]`) ending a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone

from aiohttp import web

from gatewayd.adapters.base import UpstreamError
from gatewayd.daemon.accesslog import AccessLog
from gatewayd.daemon.api import MODEL_PATH, PREPARED, OpenAIHandlers
from gatewayd.daemon.config import Loaded
from gatewayd.daemon.errors import ApiError, error_body
from gatewayd.daemon.events import EventBus, add_event_routes
from gatewayd.daemon.graph import redaction_forms
from gatewayd.daemon.health import Health, HealthBook, wall
from gatewayd.daemon.metrics import Metrics
from gatewayd.daemon.ops import add_ops_routes, json_response
from gatewayd.daemon.router import Router, RoutingObserver
from gatewayd.daemon.routes import Routes
from gatewayd.daemon.runtime import AdapterPool, Holder
from gatewayd.daemon.status import deployment_state, usable_count

log = logging.getLogger("gatewayd")

SHUTTING_DOWN = "gatewayd is shutting down: the request did not finish within server.shutdown_grace"


class InFlight:
    """The handler tasks of requests being served, so shutdown can wait for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        self._idle.clear()

    def leave(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when no request is in flight any more, False when `timeout` passed first."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cancel_all(self) -> int:
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


class Runtime(RoutingObserver):
    """State that survives reloads: health by deployment identity, pools by provider
    identity, metrics, and the holder of the serving snapshot."""

    def __init__(self, loaded: Loaded, config_path: str) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.access = AccessLog()
        self.events = EventBus(redact=self.redact)
        self.requests = InFlight()
        self.stopping = asyncio.Event()  # set when shutdown begins (SIGTERM/SIGINT)
        self.health = HealthBook(on_change=self.health_changed)
        self.router = Router(self.health, observer=self)
        self.pool = AdapterPool()
        snapshot = self.pool.build(loaded.graph)
        self.pool.adopt(snapshot)
        self.holder = Holder(snapshot)
        self.metrics.set_config(loaded.graph.version)
        self.metrics.watch_states(self.deployment_states)
        self.metrics.watch_inflight(lambda: len(self.requests))
        self.reloader = None  # set by the reload pipeline when it runs

    # RoutingObserver
    def attempt_failed(self, deployment: str, error: UpstreamError) -> None:
        self.metrics.failure(deployment, error.failure.value)

    def fell_back(self, route: str, deployment: str, error: UpstreamError) -> None:
        log.info("fallback: %s left %s after %s", route, deployment, self.redact(error.describe()),
                 extra={"event": "fallback", "alias": route, "from": deployment, "failure": error.failure.value})
        self.metrics.fallback(route, deployment)
        self.events.publish("fallback", alias=route, **{"from": deployment}, error=error.failure.value,
                            status=error.status, detail=error.describe())

    # HealthBook
    def health_changed(self, event: str, health: Health) -> None:
        names = self.names_of(health)
        if not names:  # the deployment left the config meanwhile
            return
        fields = {"deployment": names[0], "deployments": names, "last_error": health.last_error}
        if event == "cooldown_start":
            until = datetime.fromtimestamp(wall(health.cooldown_until), timezone.utc)
            fields["until"] = until.isoformat(timespec="milliseconds")
            fields["failure"] = health.last_failure.value if health.last_failure else None
            log.warning("cooldown: %s until %s after %s", ", ".join(names), fields["until"],
                        self.redact(health.last_error or "failures"),
                        extra={"event": "cooldown_start", "deployments": names, "until": fields["until"],
                               "failure": fields["failure"]})
        else:
            log.info("cooldown ended: %s answered again", ", ".join(names),
                     extra={"event": "cooldown_end", "deployments": names})
        self.events.publish(event, **fields)

    def names_of(self, health: Health) -> list[str]:
        """The names of the serving graph's deployments whose identity owns `health`."""
        return [name for name, deployment in self.holder.current.graph.deployments.items()
                if self.health.peek(deployment) is health]

    def redact(self, text: str) -> str:
        """`text` with every credential of the serving config replaced (defence in depth)."""
        graph = self.holder.current.graph
        secrets = [form for provider in graph.providers.values() for form in provider.redactions]
        secrets += redaction_forms(k.key.reveal() for k in graph.server.keys or () if k.key)  # key_sha256: none
        for secret in sorted(secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def deployment_states(self):
        now = time.monotonic()
        for name, deployment in self.holder.current.graph.deployments.items():
            yield name, deployment_state(deployment, self.health.peek(deployment), now)

    def ready(self) -> bool:
        return usable_count(self.holder.current, self.health) > 0

    def begin_stopping(self) -> None:
        """Shutdown begins: streams learn it on cancellation, event streams end now."""
        self.stopping.set()
        self.events.close()

    async def close(self) -> None:
        await self.pool.close_all()


class GatewayHandler:
    """What aiohttp's low-level server calls for every request (see routes.py for why
    not an `Application`): it finds the handler, keeps the set of requests in flight
    (for the shutdown drain) and answers unknown paths and wrong methods in OpenAI's
    error shape."""

    def __init__(self, runtime: Runtime, routes: Routes) -> None:
        self.runtime = runtime
        self.routes = routes

    def unrouted_headers(self) -> dict[str, str]:
        return unrouted_headers(self.runtime)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        task = asyncio.current_task()
        assert task is not None
        runtime.requests.enter(task)
        try:
            try:
                handler = self.routes.resolve(request.method, request.path)
            except ApiError as error:
                return error.response(unrouted_headers(runtime))
            return await handler(request)
        except ApiError as error:
            return error.response()
        except asyncio.CancelledError:
            transport = request.transport
            if not runtime.stopping.is_set() or transport is None or transport.is_closing():
                raise  # the client went away, or this is not our shutdown
            task.uncancel()  # shutdown cancelled it to say goodbye: answer instead of dropping the line
            return await last_word(request)
        finally:
            runtime.requests.leave(task)


def unrouted_headers(runtime: Runtime) -> dict[str, str]:
    """What every answer carries (SPEC §3), for requests that reached no handler."""
    return {"x-gatewayd-deployment": "", "x-gatewayd-attempts": "0",
            "x-gatewayd-config": runtime.holder.current.graph.version}


async def last_word(request: web.BaseRequest) -> web.StreamResponse:
    """What a request still running at the end of the shutdown grace gets."""
    response = request.get(PREPARED)
    if response is None:
        return ApiError(503, "shutting_down", SHUTTING_DOWN, headers={"Connection": "close"}).response()
    if response.content_type != "text/event-stream":
        raise asyncio.CancelledError  # a body is half sent: closing the connection is all that is left
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(b"data: " + error_body(503, "shutting_down", SHUTTING_DOWN) + b"\n\n")
        await response.write_eof()
        return response
    raise asyncio.CancelledError


def create_app(runtime: Runtime) -> GatewayHandler:
    """The request handler for aiohttp's low-level `web.Server` (server.py, tests/conftest.py).
    The caller closes the runtime (its connection pools) once the server has stopped."""
    routes = Routes()
    openai = OpenAIHandlers(runtime)
    routes.post("/v1/chat/completions", openai.chat_completions)
    routes.post("/v1/embeddings", openai.embeddings)
    routes.get("/v1/models", openai.models)
    routes.add_prefix("GET", MODEL_PATH, openai.model)
    routes.get("/healthz", healthz)

    async def readyz(request: web.BaseRequest) -> web.Response:
        if runtime.ready():
            return json_response({"status": "ready", "config": runtime.holder.current.graph.version})
        return json_response({"status": "not_ready", "reason": "no deployment is usable"}, status=503)

    routes.get("/readyz", readyz)
    add_ops_routes(routes, runtime)
    add_event_routes(routes, runtime)
    return GatewayHandler(runtime, routes)


async def healthz(request: web.BaseRequest) -> web.Response:
    return json_response({"status": "ok"})
