"""What `GET /v1/models` and `GET /v1/models/{id}` show an app key.

A name (alias or model) is listed when the key may use it (its `allow`) and
when it can serve now or later: at least one deployment of its plan has an
enabled provider. Cooldowns and windows pass, so a name cooling down or outside
its window now is listed; a disabled provider stays disabled until a reload, so
a name whose every deployment is disabled could only answer 503 and is left out.

`GET /v1/models/{id}` finds exactly the names the list shows: any other name,
one the key may not use included, is 404 `model_not_found`, so a key cannot
tell a name it may not use from one that does not exist.
"""

from __future__ import annotations

from gatewayd.daemon.core.graph import AppKey, Graph


def may_use(key: AppKey | None, name: str) -> bool:
    return key is None or key.allow is None or name in key.allow


def can_serve(graph: Graph, name: str) -> bool:
    """Whether some deployment of `name`'s plan has an enabled provider."""
    route = graph.routes.get(name)
    if route is None:
        return False
    deployments = graph.deployments
    return any(not deployments[deployment].disabled for deployment in route.deployments())


def listed(graph: Graph, key: AppKey | None) -> list[str]:
    """The names `GET /v1/models` shows `key`, in the config's order."""
    return [name for name in graph.routes if is_listed(graph, key, name)]


def is_listed(graph: Graph, key: AppKey | None, name: str) -> bool:
    return may_use(key, name) and can_serve(graph, name)


def entry(name: str) -> dict:
    """One model object, as OpenAI's API shapes it."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "gatewayd"}


def anthropic_entry(name: str) -> dict:
    """One model object, as Anthropic's API shapes it (for a client that sends `anthropic-version`)."""
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}


def anthropic_list(names: list[str]) -> dict:
    """Anthropic's list shape: one page holding every name."""
    return {"data": [anthropic_entry(name) for name in names], "has_more": False,
            "first_id": names[0] if names else None, "last_id": names[-1] if names else None}
