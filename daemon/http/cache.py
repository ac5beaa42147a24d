"""The response cache: which answers are kept, under which key, and who may be given them.

    ResponseCache.lookup   the request's key and what the store has for it: `hit` (an answer
                           in the form the client asked for), `miss`, or `skip` (the client
                           said `Cache-Control: no-cache`)
    ResponseCache.similar  after an exact miss on a `semantic` route: the request's text embedded
                           (through the configured embeddings route, by the caller), and the
                           stored answer of the most similar request at or above `threshold`
    ResponseCache.shared_lookup   after a local miss, with `state.backend: redis`: the answer
                           another instance stored (exact entries only)
    ResponseCache.keep     store an answer its client was given in full (and, on a semantic
                           route, its request's embedding; in Redis too when shared)
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
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

import orjson

from gatewayd.daemon.core.conversation import Chat
from gatewayd.daemon.core.graph import AppKey, CacheSettings, Graph, Route
from gatewayd.daemon.formats.openai import wants_usage
from gatewayd.daemon.state.cache import CachedAnswer, LocalResponseStore
from gatewayd.daemon.state.vectors import VectorIndex

if TYPE_CHECKING:
    from gatewayd.daemon.state.redis_cache import RedisAnswers

log = logging.getLogger("gatewayd")

HIT, MISS, SKIP = "hit", "miss", "skip"
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata"})
NO_KEY_SCOPE = "no-key"  # requests without an app key (auth off) share one scope
SHARED_SCOPE = "shared"
OPENAI_LABEL = "openai"  # the access line's name of OpenAI's chat format, whose streams tell usage on request


@dataclass(slots=True)
class Lookup:
    key: tuple
    status: str  # hit | miss | skip, as `x-gatewayd-cache` says it
    answer: CachedAnswer | None  # on a hit
    store: bool  # whether the answer may be kept (not `Cache-Control: no-store`)
    usage: bool = True  # a stream asked for tells its usage (OpenAI chat: only when the client asks)
    vector: list[float] | None = None  # the request's embedding, on a semantic route
    similarity: float | None = None  # of the stored request a semantic hit served


def chat_text(chat: Chat) -> str:
    """What a semantic route embeds: the text of every message, one per line."""
    lines = []
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            lines.append(content)
        elif isinstance(content, tuple):
            lines.extend(part.text for part in content if isinstance(getattr(part, "text", None), str))
    return "\n".join(lines)


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


def serves(answer: CachedAnswer, stream: bool, usage: bool) -> bool:
    """Whether a stored answer can be given in the form asked for."""
    if not stream:
        return answer.body is not None
    return answer.events is not None and (answer.events_usage or not usage)


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
        self.index: VectorIndex | None = None  # the semantic routes' embeddings
        self.shared: RedisAnswers | None = None  # exact entries shared through Redis (state.backend: redis)

    def install(self, graph: Graph) -> None:
        """Follow a graph's `cache:`: a store with its bounds (answers kept across reloads), the
        answers of routes whose plan changed dropped."""
        settings = graph.cache
        if settings is None:
            self.store, self.settings, self.index = None, None, None
            return
        store = self.store
        if store is None:
            store = LocalResponseStore(settings.max_entries, settings.max_bytes, settings.ttl)
        elif (store.max_entries, store.max_bytes, store.ttl) != (settings.max_entries, settings.max_bytes,
                                                                 settings.ttl):
            store = store.resized(settings.max_entries, settings.max_bytes, settings.ttl)
        plans: Mapping[str, str] = graph.plan_ids

        def current(key: tuple) -> bool:
            return plans.get(key[0]) == key[1]

        store.retain(current)
        semantic = settings.semantic
        if semantic is None:
            self.index = None
        else:
            if self.index is None or self.index.max_entries != semantic.max_entries:
                self.index = VectorIndex(semantic.max_entries)
            self.index.retain(current)
        self.store, self.settings = store, settings

    def lookup(self, graph: Graph, route: Route, label: str, body: dict, key: AppKey | None,
               control: str | None, stream: bool) -> Lookup:
        settings = self.settings
        if settings.scope == SHARED_SCOPE:
            scope: object = SHARED_SCOPE
        else:
            scope = key.identity if key is not None else NO_KEY_SCOPE
        cache_key = (route.name, graph.plan_ids[route.name], label, scope, body_digest(body))
        # `stream_options` is not in the key, so a stream kept without its usage must not be a
        # hit for a client that asked for the usage (it is fetched, and kept with it)
        usage = not stream or label != OPENAI_LABEL or wants_usage(body)
        no_cache, no_store = cache_control(control) if control else (False, False)
        counts = self.counts.get(route.name)
        if counts is None:
            counts = self.counts[route.name] = RouteCounts()
        if no_cache:
            counts.count(SKIP)
            return Lookup(cache_key, SKIP, None, not no_store, usage)
        answer = self.store.get(cache_key)
        if answer is not None and serves(answer, stream, usage):
            counts.count(HIT)
            return Lookup(cache_key, HIT, answer, False, usage)
        counts.count(MISS)
        return Lookup(cache_key, MISS, None, not no_store, usage)

    async def similar(self, lookup: Lookup, text: str, stream: bool,
                      embed: Callable[[str], Awaitable[list[float] | None]]) -> Lookup:
        """After an exact miss: the stored answer of the most similar request of the same route,
        plan, format and scope, at or above `threshold`, in the form asked for. `embed` gives the
        text's embedding, or None when it failed: then it is a miss, never a failure."""
        index, settings = self.index, self.settings
        if index is None or settings is None or settings.semantic is None or not text:
            return lookup
        vector = await embed(text)
        if vector is None:
            return lookup
        lookup.vector = vector
        found = index.nearest(lookup.key[:4], vector)
        if found is None or found[1] < settings.semantic.threshold:
            return lookup
        key, similarity = found
        answer = self.store.get(key) if self.store is not None else None
        if answer is None or not serves(answer, stream, lookup.usage):
            return lookup
        counts = self.counts[lookup.key[0]]
        counts.misses -= 1  # counted as a miss by the exact lookup: a hit after all
        counts.count(HIT)
        return Lookup(lookup.key, HIT, answer, False, lookup.usage, vector, similarity)

    async def shared_lookup(self, lookup: Lookup, stream: bool) -> Lookup:
        """After a local miss: the answer stored in Redis by any instance (kept locally too), in
        the form asked for; Redis away or slow, a miss as it was."""
        answer = await self.shared.get(lookup.key)
        store = self.store
        if answer is None or store is None or not serves(answer, stream, lookup.usage):
            return lookup
        store.put(lookup.key, answer)
        counts = self.counts[lookup.key[0]]
        counts.misses -= 1  # counted as a miss by the local lookup: a hit after all
        counts.count(HIT)
        return Lookup(lookup.key, HIT, answer, False, lookup.usage)

    def keep(self, lookup: Lookup, deployment: str, body: bytes | None = None, events: bytes | None = None) -> None:
        """Keep an answer given in full (the JSON body, or a stream that ended cleanly)."""
        store = self.store
        if store is None:  # a reload turned the cache off meanwhile
            return
        known = store.get(lookup.key)
        usage = lookup.usage
        answer = (known.with_form(body, events, usage) if known is not None
                  else CachedAnswer(body, events, deployment, usage))
        if store.put(lookup.key, answer) and known is None and lookup.vector is not None and self.index is not None:
            self.index.add(lookup.key[:4], lookup.key, lookup.vector)
        if self.shared is not None:
            self.shared.put(lookup.key, answer, self.settings.ttl)

    def status(self) -> dict | None:
        """`cache` of /admin/status: the store's fill and each cached route's lookups."""
        store = self.store
        if store is None:
            return None
        return {"entries": store.entries, "bytes": store.bytes, "evictions": store.evictions,
                "routes": {name: counts.view() for name, counts in self.counts.items()}}
