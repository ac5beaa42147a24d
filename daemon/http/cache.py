"""The response cache: which answers are kept, under which key, and who may be given them.

    ResponseCache.lookup   the request's key and what the store has for it: `hit` (an answer
                           in the form the client asked for), `miss`, or `skip` (the client
                           said `Cache-Control: no-cache`)
    ResponseCache.keep     store an answer its client was given in full
    ResponseCache.install  at every graph: the store's bounds, and the entries of routes whose
                           plan changed dropped

An exact entry's key is the route, its plan (a changed plan starts empty), the client's wire
format, the scope (the app key's identity with `scope: key`, so no app is given another's
answer; one scope for all with `shared`) and the SHA-256 of the body's canonical JSON without
the fields that do not change the answer (`stream`, `stream_options`, `user`, `metadata`). An
answer is kept as its client was given it: the JSON answer, or the whole event stream of one
that ended cleanly; a request for the form an entry lacks is a miss that adds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

import orjson

from gatewayd.daemon.core.graph import AppKey, CacheSettings, Graph, Route
from gatewayd.daemon.state.cache import CachedAnswer, LocalResponseStore

HIT, MISS, SKIP = "hit", "miss", "skip"
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata"})
NO_KEY_SCOPE = "no-key"  # requests without an app key (auth off) share one scope
SHARED_SCOPE = "shared"


@dataclass(slots=True)
class Lookup:
    key: tuple
    status: str  # hit | miss | skip, as `x-gatewayd-cache` says it
    answer: CachedAnswer | None  # on a hit
    store: bool  # whether the answer may be kept (not `Cache-Control: no-store`)


class RouteCounts:
    """Lookups of one route, for /metrics and /admin/status."""

    __slots__ = ("hits", "misses", "skips")

    def __init__(self) -> None:
        self.hits = self.misses = self.skips = 0

    def count(self, status: str) -> None:
        if status == HIT:
            self.hits += 1
        elif status == MISS:
            self.misses += 1
        else:
            self.skips += 1

    def view(self) -> dict:
        looked = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "skips": self.skips,
                "hit_rate": round(self.hits / looked, 4) if looked else None}


def cache_control(value: str) -> tuple[bool, bool]:
    """(no-cache, no-store) from a request's `Cache-Control`."""
    directives = {part.strip().lower().split("=", 1)[0] for part in value.split(",")}
    return "no-cache" in directives, "no-store" in directives


def body_digest(body: dict) -> bytes:
    canonical = orjson.dumps({name: value for name, value in body.items() if name not in IGNORED_FIELDS},
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


class ResponseCache:
    def __init__(self) -> None:
        self.store: LocalResponseStore | None = None  # None: no `cache:` configured
        self.settings: CacheSettings | None = None
        self.counts: dict[str, RouteCounts] = {}  # by route name, a name from the config

    def install(self, graph: Graph) -> None:
        """Follow a graph's `cache:`: a store with its bounds (answers kept across reloads), the
        answers of routes whose plan changed dropped."""
        settings = graph.cache
        if settings is None:
            self.store, self.settings = None, None
            return
        store = self.store
        if store is None:
            store = LocalResponseStore(settings.max_entries, settings.max_bytes, settings.ttl)
        elif (store.max_entries, store.max_bytes, store.ttl) != (settings.max_entries, settings.max_bytes,
                                                                 settings.ttl):
            store = store.resized(settings.max_entries, settings.max_bytes, settings.ttl)
        plans: Mapping[str, str] = graph.plan_ids
        store.retain(lambda key: plans.get(key[0]) == key[1])
        self.store, self.settings = store, settings

    def lookup(self, graph: Graph, route: Route, label: str, body: dict, key: AppKey | None,
               control: str | None, stream: bool) -> Lookup:
        settings = self.settings
        if settings.scope == SHARED_SCOPE:
            scope: object = SHARED_SCOPE
        else:
            scope = key.identity if key is not None else NO_KEY_SCOPE
        cache_key = (route.name, graph.plan_ids[route.name], label, scope, body_digest(body))
        no_cache, no_store = cache_control(control) if control else (False, False)
        counts = self.counts.get(route.name)
        if counts is None:
            counts = self.counts[route.name] = RouteCounts()
        if no_cache:
            counts.count(SKIP)
            return Lookup(cache_key, SKIP, None, not no_store)
        answer = self.store.get(cache_key)
        if answer is not None and (answer.events if stream else answer.body) is not None:
            counts.count(HIT)
            return Lookup(cache_key, HIT, answer, False)
        counts.count(MISS)
        return Lookup(cache_key, MISS, None, not no_store)

    def keep(self, lookup: Lookup, deployment: str, body: bytes | None = None, events: bytes | None = None) -> None:
        """Keep an answer given in full (the JSON body, or a stream that ended cleanly)."""
        store = self.store
        if store is None:  # a reload turned the cache off meanwhile
            return
        known = store.get(lookup.key)
        answer = known.with_form(body, events) if known is not None else CachedAnswer(body, events, deployment)
        store.put(lookup.key, answer)

    def status(self) -> dict | None:
        """`cache` of /admin/status: the store's fill and each cached route's lookups."""
        store = self.store
        if store is None:
            return None
        return {"entries": store.entries, "bytes": store.bytes, "evictions": store.evictions,
                "routes": {name: counts.view() for name, counts in self.counts.items()}}
