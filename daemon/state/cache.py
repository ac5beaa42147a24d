"""Stored answers of the response cache, whatever keeps them.

    CachedAnswer         one answer as its client was given it: the JSON body, the stream's
                         bytes, or both (each form is stored when a request of that form completes)
    ResponseStore        the interface: `get`, `put`, `retain`, and the bounds' bookkeeping
    LocalResponseStore   the one-process implementation, bounded by entries and bytes with a
                         time to live (cachetools.TTLCache); least recently used evicted first

What is stored under which key, and when, is the HTTP layer's business (daemon/http/cache.py);
this module only keeps bytes by key, so a store shared between processes (Redis) can take
its place without touching that logic.
"""

from __future__ import annotations

from typing import Callable, Hashable, Protocol

from cachetools import TTLCache


class CachedAnswer:
    """One stored answer, in the forms its client was given it."""

    __slots__ = ("body", "events", "events_usage", "deployment", "size")

    def __init__(self, body: bytes | None, events: bytes | None, deployment: str, events_usage: bool = True) -> None:
        self.body = body  # the JSON answer, as sent
        self.events = events  # the whole event stream, as sent (only a stream that ended cleanly)
        # whether the stream tells its usage (an OpenAI chat stream does only when the client asked)
        self.events_usage = events_usage
        self.deployment = deployment  # what answered it first
        self.size = len(body or b"") + len(events or b"") + len(deployment)

    def with_form(self, body: bytes | None, events: bytes | None, events_usage: bool = True) -> CachedAnswer:
        """This answer with a form it lacked added (a form it has is kept as it is, but a stream
        that tells its usage replaces one that does not)."""
        keep_events = self.events is not None and (self.events_usage or not events_usage or events is None)
        return CachedAnswer(self.body if self.body is not None else body,
                            self.events if keep_events else events, self.deployment,
                            self.events_usage if keep_events else events_usage)


class ResponseStore(Protocol):
    entries: int  # how many answers are kept now
    bytes: int  # their size
    evictions: int  # answers dropped to keep within the bounds (not counting those that expired)

    def get(self, key: Hashable) -> CachedAnswer | None: ...

    def put(self, key: Hashable, answer: CachedAnswer) -> bool:
        """Keep `answer` under `key` (replacing what was there); False when it is larger than the
        whole store may hold."""
        ...

    def retain(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the answers whose key `keep` refuses (those of routes whose plan changed)."""
        ...


class BoundedTTLCache(TTLCache):
    """A TTLCache that counts what it evicts to make room (expiry is not counted)."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        super().__init__(maxsize, ttl, getsizeof=lambda answer: answer.size)
        self.evictions = 0

    def popitem(self):
        item = super().popitem()
        self.evictions += 1
        return item


class LocalResponseStore:
    """Answers kept in this process: at most `max_entries` of them and `max_bytes` together,
    each for `ttl` seconds."""

    def __init__(self, max_entries: int, max_bytes: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._cache = BoundedTTLCache(max_bytes, ttl)

    @property
    def entries(self) -> int:
        self._cache.expire()
        return len(self._cache)

    @property
    def bytes(self) -> int:
        self._cache.expire()
        return self._cache.currsize

    @property
    def evictions(self) -> int:
        return self._cache.evictions

    def get(self, key: Hashable) -> CachedAnswer | None:
        return self._cache.get(key)

    def put(self, key: Hashable, answer: CachedAnswer) -> bool:
        if answer.size > self.max_bytes:
            return False
        cache = self._cache
        cache.pop(key, None)
        cache.expire()
        while len(cache) >= self.max_entries:
            cache.popitem()
        cache[key] = answer  # evicts by size as it needs to
        return True

    def retain(self, keep: Callable[[Hashable], bool]) -> None:
        for key in [key for key in self._cache.keys() if not keep(key)]:
            self._cache.pop(key, None)

    def resized(self, max_entries: int, max_bytes: int, ttl: float) -> LocalResponseStore:
        """A store with new bounds holding this one's answers (the most recently used first
        to be kept), its eviction count carried on; a reload that changes `cache:` uses it."""
        store = LocalResponseStore(max_entries, max_bytes, ttl)
        store._cache.evictions = self._cache.evictions
        self._cache.expire()
        for key, answer in list(self._cache.items()):  # least recently used first
            store.put(key, answer)
        return store
