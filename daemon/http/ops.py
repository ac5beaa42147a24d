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
from gatewayd.daemon.observe.requests import MAX_LIMIT
from gatewayd.daemon.routing.explain import UnknownRoute, explain_plan, parse_instant
from gatewayd.daemon.routing.status import deployments_status, keys_status

if TYPE_CHECKING:
    from gatewayd.daemon.http.runtime import Runtime

REQUEST_PATH = "/admin/requests/"  # + a request id: GET /admin/requests/{id}
DEFAULT_LIMIT = 20  # entries GET /admin/requests answers without ?limit


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
        workers = self.runtime.workers
        body = self.runtime.metrics.render() if workers is None else await workers.metrics()
        if body is None:
            raise ApiError(503, "metrics_unavailable", "the workers' metrics could not be gathered; try again")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.BaseRequest) -> web.Response:
        self.guard(request)
        runtime = self.runtime
        snapshot = runtime.holder.current
        reloader = runtime.reloader
        status = {
            "config": {"path": os.path.abspath(runtime.config_path), "version": snapshot.graph.version,
                       "loaded_at": snapshot.loaded_at.isoformat(timespec="seconds")},
            "last_reload": reloader.last_result() if reloader else None,
            "deployments": deployments_status(snapshot, runtime.health, counters=runtime.counters,
                                              bandit=runtime.bandit),
            "keys": keys_status(snapshot, runtime.counters),
            "cache": runtime.cache.status(),
            "state": runtime.state_status(),
        }
        if runtime.workers is not None:  # one of several workers: this one, and all of them
            status["worker"] = runtime.workers.own()
            status["workers"] = await runtime.workers.listing()
        return json_response(status)

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
                                self.runtime.counters, self.runtime.bandit)
        except UnknownRoute as exc:
            raise ApiError(404, "model_not_found", str(exc), param="model") from None
        return json_response(plan)


    async def requests(self, request: web.BaseRequest) -> web.Response:
        """The latest `/v1` requests, newest first: `?limit=N` (default 20, at most MAX_LIMIT)."""
        self.guard(request)
        text = request.query.get("limit", str(DEFAULT_LIMIT))
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ApiError(400, "invalid_limit", f"limit={text[:40]!r} must be a whole number from 1 to {MAX_LIMIT}",
                           param="limit")
        ring = self.runtime.ring
        return json_response({"kept": ring.size, "requests": ring.latest(int(text))})

    async def request(self, request: web.BaseRequest) -> web.Response:
        """One request by its `x-request-id`, while the ring still holds it."""
        self.guard(request)
        request_id = request.path[len(REQUEST_PATH):]
        entry = self.runtime.ring.find(request_id)
        if entry is None:
            raise ApiError(404, "request_not_found", f"no request {request_id[:128]!r} among the "
                           f"{len(self.runtime.ring)} kept (server.recent_requests)", param="id")
        return json_response(entry)


def add_ops_routes(routes: Routes, runtime: Runtime) -> None:
    ops = OpsHandlers(runtime)
    routes.get("/metrics", ops.metrics)
    routes.get("/admin/status", ops.status)
    routes.get("/admin/explain", ops.explain)
    routes.post("/admin/reload", ops.reload)
    routes.get("/admin/requests", ops.requests)
    routes.add_prefix("GET", REQUEST_PATH, ops.request)
