"""The path table (daemon/http/paths.py): exact paths first, prefixes only when the exact lookup misses."""

from __future__ import annotations

import pytest

from gatewayd.daemon.http.errors import ApiError
from gatewayd.daemon.http.paths import Routes


async def exact(request):
    return "exact"


async def models_entry(request):
    return "entry"


async def deeper(request):
    return "deeper"


def table() -> Routes:
    routes = Routes()
    routes.get("/v1/models", exact)
    routes.add_prefix("GET", "/v1/models/", models_entry)
    routes.add_prefix("GET", "/v1/models/special/", deeper)
    routes.get("/v1/models/fixed", exact)
    return routes


def test_an_exact_path_wins_over_a_prefix_that_covers_it():
    routes = table()
    assert routes.resolve("GET", "/v1/models") is exact
    assert routes.resolve("GET", "/v1/models/fixed") is exact


def test_a_prefix_serves_what_no_exact_path_does_the_longest_prefix_first():
    routes = table()
    assert routes.resolve("GET", "/v1/models/meta/llama-3:free") is models_entry
    assert routes.resolve("HEAD", "/v1/models/chat") is models_entry
    assert routes.resolve("GET", "/v1/models/") is models_entry
    assert routes.resolve("GET", "/v1/models/special/x") is deeper


def test_a_path_under_no_prefix_is_404_and_a_wrong_method_on_a_prefix_is_405():
    routes = table()
    with pytest.raises(ApiError) as caught:
        routes.resolve("GET", "/v1/modelsx")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as caught:
        routes.resolve("POST", "/v1/models/chat")
    assert (caught.value.status, caught.value.code) == (405, "method_not_allowed")
    assert caught.value.headers["Allow"] == "GET, HEAD"


def test_a_prefix_routed_twice_for_one_method_is_refused():
    routes = table()
    with pytest.raises(ValueError):
        routes.add_prefix("GET", "/v1/models/", exact)
