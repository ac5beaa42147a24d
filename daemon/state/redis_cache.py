"""Exact cache entries shared through Redis: an answer one instance stored, another serves.

    RedisAnswers.get   the answer stored under a cache key by any instance, or None (also when
                       Redis is away: a miss, never a failure)
    RedisAnswers.put   store one in the background, expiring after the cache's `ttl`

A key is the cache key's digest under the prefix (`OWNER:answer`); the value is the answer's
forms as msgpack. Bounds by entries and bytes stay each instance's (its local store); Redis
bounds the shared entries by their expiry (and its own maxmemory, if set). The semantic index
is not shared: each instance searches the embeddings it computed.
"""

from __future__ import annotations

import hashlib
from typing import Hashable

import msgspec

from gatewayd.daemon.state.cache import CachedAnswer
from gatewayd.daemon.state.redis_link import RedisLink
from gatewayd.daemon.state.shared import Unavailable


class Stored(msgspec.Struct, array_like=True):
    body: bytes | None
    events: bytes | None
    deployment: str
    events_usage: bool


ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(Stored)


class RedisAnswers:
    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def name(self, key: Hashable) -> str:
        return self.link.key(hashlib.sha256(repr(key).encode()).hexdigest()[:32], "answer")

    async def get(self, key: Hashable) -> CachedAnswer | None:
        name = self.name(key)
        try:
            data = await self.link.run(lambda client: client.get(name))
        except Unavailable:
            return None
        if data is None:
            return None
        try:
            stored = DECODER.decode(data)
        except msgspec.DecodeError:  # not ours (another version's): a miss
            return None
        return CachedAnswer(stored.body, stored.events, stored.deployment, stored.events_usage)

    def put(self, key: Hashable, answer: CachedAnswer, ttl: float) -> None:
        name = self.name(key)
        data = ENCODER.encode(Stored(answer.body, answer.events, answer.deployment, answer.events_usage))
        self.link.spawn(lambda client: client.set(name, data, px=max(1, int(ttl * 1000))))
