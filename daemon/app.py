"""The aiohttp application: the runtime that outlives reloads, and its routes.

`create_app(runtime)` wires handlers to an existing `Runtime`; everything is
owned by the app (no module globals), and `Runtime.close()` runs on cleanup.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web

from gatewayd.adapters.base import UpstreamError
from gatewayd.daemon.api import OpenAIHandlers
from gatewayd.daemon.config import Loaded
from gatewayd.daemon.errors import ApiError
from gatewayd.daemon.health import HealthBook
from gatewayd.daemon.metrics import Metrics
from gatewayd.daemon.ops import add_ops_routes
from gatewayd.daemon.router import Router, RoutingObserver
from gatewayd.daemon.runtime import AdapterPool, Holder
from gatewayd.daemon.status import deployment_state, usable_count

log = logging.getLogger("gatewayd")


class Runtime(RoutingObserver):
    """State that survives reloads: health by deployment identity, pools by provider
    identity, metrics, and the holder of the serving snapshot."""

    def __init__(self, loaded: Loaded, config_path: str) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.health = HealthBook(on_change=self.health_changed)
        self.router = Router(self.health, observer=self)
        self.pool = AdapterPool()
        snapshot = self.pool.build(loaded.graph)
        self.pool.adopt(snapshot)
        self.holder = Holder(snapshot)
        self.metrics.set_config(loaded.graph.version)
        self.metrics.watch_states(self.deployment_states)
        self.reloader = None  # set by the reload pipeline when it runs

    # RoutingObserver
    def attempt_failed(self, deployment: str, error: UpstreamError) -> None:
        self.metrics.failure(deployment, error.failure.value)

    def fell_back(self, route: str, deployment: str, error: UpstreamError) -> None:
        log.info("fallback: %s left %s after %s", route, deployment, error.describe())

    def health_changed(self, event: str, health) -> None:
        pass

    def deployment_states(self):
        now = time.monotonic()
        for name, deployment in self.holder.current.graph.deployments.items():
            yield name, deployment_state(deployment, self.health.peek(deployment), now)

    def ready(self) -> bool:
        return usable_count(self.holder.current, self.health) > 0

    async def close(self) -> None:
        await self.pool.close_all()


RUNTIME = web.AppKey("runtime", Runtime)


def json_response(payload, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.ready():
        return json_response({"status": "ready", "config": runtime.holder.current.graph.version})
    return json_response({"status": "not_ready", "reason": "no deployment is usable"}, status=503)


@web.middleware
async def api_errors(request: web.Request, handler):
    """Unknown paths and wrong methods answer in OpenAI's error shape too."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPNotFound:
        return ApiError(404, "not_found", f"no such endpoint: {request.method} {request.path}").response()
    except web.HTTPMethodNotAllowed:
        return ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}").response()


def create_app(runtime: Runtime) -> web.Application:
    # client_max_size is enforced by the handlers against server.max_body, which a reload may change
    app = web.Application(middlewares=[api_errors], client_max_size=2**40, handler_args={"tcp_keepalive": True})
    app[RUNTIME] = runtime
    openai = OpenAIHandlers(runtime)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/v1/embeddings", openai.embeddings)
    app.router.add_get("/v1/models", openai.models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_ops_routes(app, runtime)

    async def close_runtime(app: web.Application):
        yield
        await runtime.close()

    app.cleanup_ctx.append(close_runtime)
    return app
