"""Operations endpoints: /metrics and /admin/*. When keys are configured,
admin endpoints need an admin key (`role: admin`; an app key gets 403 `permission_denied`),
and so does /metrics unless `server.metrics: public`. Secrets never appear in what they return."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatewayd.daemon.http.errors import ApiError
from gatewayd.daemon.http.guard import refuse_cross_origin, require_admin
from gatewayd.daemon.http.paths import Routes
from gatewayd.daemon.routing.explain import UnknownRoute, explain_plan, parse_instant
from gatewayd.daemon.routing.status import deployments_status, keys_status

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime


def json_response(payload, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class OpsHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def guard(self, request: web.BaseRequest) -> None:
        refuse_cross_origin(request)
        require_admin(request, self.runtime.holder.current.graph)

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        refuse_cross_origin(request)
        graph = self.runtime.holder.current.graph
        if graph.server.metrics != "public":
            require_admin(request, graph)
        return web.Response(body=self.runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.BaseRequest) -> web.Response:
        self.guard(request)
        runtime = self.runtime
        snapshot = runtime.holder.current
        reloader = runtime.reloader
        return json_response({
            "config": {"path": os.path.abspath(runtime.config_path), "version": snapshot.graph.version,
                       "loaded_at": snapshot.loaded_at.isoformat(timespec="seconds")},
            "last_reload": reloader.last_result() if reloader else None,
            "deployments": deployments_status(snapshot, runtime.health, counters=runtime.counters),
            "keys": keys_status(snapshot, runtime.counters),
            "cache": runtime.cache.status(),
        })

    async def reload(self, request: web.BaseRequest) -> web.Response:
        """Reload now and answer with the result (200 even when rejected: `ok` tells)."""
        self.guard(request)
        reloader = self.runtime.reloader
        if reloader is None:
            raise ApiError(503, "reload_unavailable", "this gatewayd cannot reload; restart it instead")
        trigger = "cli" if request.headers.get("X-Gatewayd-Trigger", "").lower() == "cli" else "api"
        return json_response(await reloader.request(trigger))

    async def explain(self, request: web.BaseRequest) -> web.Response:
        self.guard(request)
        name = request.query.get("model")
        if not name:
            raise ApiError(400, "missing_model", "pass ?model=ALIAS (and optionally &at=ISO8601)", param="model")
        at_text = request.query.get("at")
        try:
            at = parse_instant(at_text)
        except ValueError:
            raise ApiError(400, "invalid_at", f"at={at_text!r} is not an ISO 8601 instant", param="at") from None
        try:
            plan = explain_plan(self.runtime.holder.current.graph, name, at, self.runtime.health,
                                self.runtime.counters)
        except UnknownRoute as exc:
            raise ApiError(404, "model_not_found", str(exc), param="model") from None
        return json_response(plan)


def add_ops_routes(routes: Routes, runtime: Runtime) -> None:
    ops = OpsHandlers(runtime)
    routes.get("/metrics", ops.metrics)
    routes.get("/admin/status", ops.status)
    routes.get("/admin/explain", ops.explain)
    routes.post("/admin/reload", ops.reload)
