"""The HTTP path table: one handler per exact path and method.

gatewayd serves a dozen fixed paths and no path parameters, so it runs on
aiohttp's low-level `web.Server` and finds a request's handler with two dict
lookups. aiohttp's `Application` would resolve every request through its URL
dispatcher, wrap it in a `web.Request` and run the middleware chain: a bare
forwarding proxy served 8% more requests per second without that machinery
(docs/performance.md).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from gatewayd.daemon.errors import ApiError

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Routes:
    def __init__(self) -> None:
        self._paths: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        methods = self._paths.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} is routed twice")
        methods[method] = handler
        if method == "GET":  # as aiohttp's add_get: HEAD answers the same headers, without the body
            methods.setdefault("HEAD", handler)

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def resolve(self, method: str, path: str) -> Handler:
        """The handler for `method path`; ApiError 404 or 405 (with `Allow`) otherwise."""
        methods = self._paths.get(path)
        if methods is None:
            raise ApiError(404, "not_found", f"no such endpoint: {method} {path}")
        handler = methods.get(method)
        if handler is None:
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}",
                           headers={"Allow": ", ".join(sorted(methods))})
        return handler
