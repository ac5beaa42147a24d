"""The HTTP path table: one handler per exact path and method, and a few prefixes.

gatewayd serves a dozen fixed paths, so it runs on aiohttp's low-level
`web.Server` and finds a request's handler with two dict lookups. aiohttp's
`Application` would resolve every request through its URL dispatcher, wrap it
in a `web.Request` and run the middleware chain: a bare forwarding proxy served
8% more requests per second without that machinery (docs/performance.md).

The one path parameter, `/v1/models/{id}` (ids may hold `/` and `:`), is a
prefix route: the handler reads the rest of the path itself. Prefixes are only
looked at when the exact lookup misses, so the fixed paths cost no more.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from gatewayd.daemon.http.errors import ApiError

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Routes:
    def __init__(self) -> None:
        self._paths: dict[str, dict[str, Handler]] = {}
        self._prefixes: dict[str, dict[str, Handler]] = {}  # longest first

    def add(self, method: str, path: str, handler: Handler) -> None:
        add_method(self._paths.setdefault(path, {}), method, path, handler)

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        """`handler` for every path that starts with `prefix` and has no exact route."""
        add_method(self._prefixes.setdefault(prefix, {}), method, prefix + "*", handler)
        self._prefixes = dict(sorted(self._prefixes.items(), key=lambda item: -len(item[0])))

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def resolve(self, method: str, path: str) -> Handler:
        """The handler for `method path`; ApiError 404 or 405 (with `Allow`) otherwise."""
        methods = self._paths.get(path)
        if methods is None:
            methods = self._by_prefix(path)
            if methods is None:
                raise ApiError(404, "not_found", f"no such endpoint: {method} {path}")
        handler = methods.get(method)
        if handler is None:
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}",
                           headers={"Allow": ", ".join(sorted(methods))})
        return handler

    def _by_prefix(self, path: str) -> dict[str, Handler] | None:
        for prefix, methods in self._prefixes.items():
            if path.startswith(prefix):
                return methods
        return None


def add_method(methods: dict[str, Handler], method: str, path: str, handler: Handler) -> None:
    if method in methods:
        raise ValueError(f"{method} {path} is routed twice")
    methods[method] = handler
    if method == "GET":  # as aiohttp's add_get: HEAD answers the same headers, without the body
        methods.setdefault("HEAD", handler)
