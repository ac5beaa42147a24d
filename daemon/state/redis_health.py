"""Deployment health shared through Redis: what one instance learns of an upstream, the others
apply at once. The request path still reads each process's own `Health` (no round trip to judge
a candidate); this keeps those in step.

    cooldowns   a cooldown that starts here is written to the deployment's hash (its deadline in
                wall-clock seconds, the count for the multiplier, the last error; expiring
                EXPIRY_MARGIN past the deadline) and PUBLISHed; every instance applies it to its
                own health (a deadline only moves later). A success that ends one is published too.
    failures    every counted failure is added to a shared count (INCR, expiring); when it reaches
                the deployment's `cooldown.failures`, the instance that saw it starts the cooldown
    the probe   after a cooldown, one instance probes: the claim is SET NX PX (lapsing after the
                deployment's total timeout if its holder vanishes)
    catching up on every (re)connection each instance reads the current cooldowns

Keys, under the prefix, by the deployment identity's digest: OWNER:health (hash), OWNER:failures,
OWNER:probe; the channel is `health`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

import orjson

from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.core.graph import Deployment
from gatewayd.daemon.state.health import Health, LocalHealthStore
from gatewayd.daemon.state.redis_link import FAILURES, RedisLink, identity_digest
from gatewayd.daemon.state.shared import Unavailable
from gatewayd.daemon.state.store import ChangeListener, HealthView

log = logging.getLogger("gatewayd")

EXPIRY_MARGIN = 600.0  # seconds a cooldown's record outlives its deadline (its count feeds the multiplier)
FAILURES_TTL = 600.0  # seconds a shared failure count lasts without a new failure
LISTEN_WAIT = 1.0  # seconds each read of the channel waits

# KEYS: health, probe   ARGV: until, cooldowns, error, expire at (ms), channel, message
COOLDOWN = """
local known = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if tonumber(ARGV[1]) > known then
  redis.call('HSET', KEYS[1], 'until', ARGV[1], 'cooldowns', ARGV[2], 'error', ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 0
"""


class SharedHealth:
    """Keeps a `LocalHealthStore` in step with the other instances'. `changed` is the store's
    on_change hook (it passes everything on to `announce`, the logs and events); `settled` its
    outcome listener; `claim` the router's half-open probe claim."""

    def __init__(self, link: RedisLink, store: LocalHealthStore, announce: ChangeListener) -> None:
        self.link = link
        self.store = store
        self.announce = announce
        self.channel = link.key("health")
        self._cooldown = link.script(COOLDOWN)
        self._deployments: dict[str, Deployment] = {}  # by identity digest
        self._digests: dict[tuple, str] = {}  # identity -> digest
        self._failing: set[tuple] = set()  # identities whose shared failure count this instance raised
        self._listener: asyncio.Task | None = None
        link.on_resume.append(self.catch_up)

    def track(self, deployments: Iterable[Deployment]) -> None:
        """The deployments of the serving graph (at every install)."""
        self._deployments = {}
        self._digests = {}
        for deployment in deployments:
            digest = identity_digest(deployment.identity)
            self._deployments.setdefault(digest, deployment)
            self._digests[deployment.identity] = digest

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen_forever(), name="gatewayd-redis-health")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def keys(self, digest: str) -> list[str]:
        link = self.link
        return [link.key(digest, "health"), link.key(digest, "probe"), link.key(digest, "failures")]

    # the store's on_change: a cooldown began or ended here
    def changed(self, event: str, identity: tuple, view: HealthView) -> None:
        self.announce(event, identity, view)
        digest = self._digests.get(identity)
        if digest is None:
            return
        self._failing.discard(identity)
        until = view.cooldown_until if event == "cooldown_start" else 0.0
        message = orjson.dumps({"id": digest, "from": self.link.instance, "until": until,
                                "cooldowns": view.cooldowns, "error": view.last_error})
        keys = self.keys(digest)
        if event == "cooldown_start":
            args = [repr(until), view.cooldowns, view.last_error or "", int((until + EXPIRY_MARGIN) * 1000),
                    self.channel, message]
            self.link.spawn(lambda client: self._cooldown(keys=keys, args=args, client=client))
        else:
            async def ended(client):
                async with client.pipeline(transaction=True) as pipe:
                    pipe.delete(*keys)
                    pipe.publish(self.channel, message)
                    await pipe.execute()
            self.link.spawn(ended)

    # the store's outcome listener: every settled try at a deployment
    def settled(self, identity: tuple, failure: FailureClass | None, latency: float | None) -> None:
        digest = self._digests.get(identity)
        if digest is None:
            return
        key = self.link.key(digest, "failures")
        if failure is None:
            if identity in self._failing:
                self._failing.discard(identity)
                self.link.spawn(lambda client: client.delete(key))
            return
        self._failing.add(identity)
        self.link.spawn(lambda client: self._count_failure(client, key, digest))

    async def _count_failure(self, client, key: str, digest: str) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, int(FAILURES_TTL * 1000))
            count, _ = await pipe.execute()
        deployment = self._deployments.get(digest)
        if deployment is None:
            return
        health = self.store.peek(deployment)
        now = time.time()
        policy = deployment.policy.cooldown
        if health is not None and int(count) >= policy.failures and health.cooldown_until <= now:
            health.enter_cooldown(policy, now, None)  # its on_change publishes it

    async def claim(self, deployment: Deployment, health: Health) -> bool:
        """Whether this instance may probe `deployment` (half-open) now: only one instance does.
        Redis away: this instance decides alone. Refused: the local probe is given up."""
        probe = self.link.key(self._digests.get(deployment.identity) or identity_digest(deployment.identity),
                              "probe")
        lapse = max(1, int(deployment.policy.timeouts.total * 1000))
        try:
            claimed = await self.link.run(lambda client: client.set(probe, self.link.instance, nx=True, px=lapse))
        except Unavailable:
            return True
        if not claimed:
            health.abandon_probe()
        return bool(claimed)

    # what the other instances said
    def received(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            digest, sender, until = message["id"], message["from"], float(message["until"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if sender == self.link.instance:
            return
        self.apply(digest, until, int(message.get("cooldowns") or 0), message.get("error"))

    def apply(self, digest: str, until: float, cooldowns: int, error: str | None) -> None:
        deployment = self._deployments.get(digest)
        if deployment is None:
            return
        health = self.store.get(deployment)
        if until > 0.0:
            if until <= health.cooldown_until:
                return
            health.cooldown_until = until  # a deadline only moves later
            health.cooldowns = max(health.cooldowns, cooldowns)
            health.failures = 0
            health.probing = False
            if error:
                health.last_error = error
            self.announce("cooldown_start", deployment.identity, health.view())
        elif health.cooldown_until != 0.0:
            health.failures, health.cooldown_until, health.cooldowns, health.probing = 0, 0.0, 0, False
            self.announce("cooldown_end", deployment.identity, health.view())

    async def catch_up(self) -> None:
        """On (re)connection: the cooldowns the others started meanwhile."""
        digests = list(self._deployments)
        if not digests:
            return

        async def read(client):
            async with client.pipeline(transaction=False) as pipe:
                for digest in digests:
                    pipe.hgetall(self.link.key(digest, "health"))
                return await pipe.execute()

        try:
            records = await self.link.run(read)
        except Unavailable:
            return
        now = time.time()
        for digest, record in zip(digests, records, strict=True):
            until = float(record.get(b"until") or 0.0)
            if until > now:
                error = record.get(b"error")
                self.apply(digest, until, int(record.get(b"cooldowns") or 0), error.decode() if error else None)

    async def _listen_forever(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = self.link.client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_WAIT)
                    if message is not None and message.get("type") == "message":
                        self.received(message["data"])
            except (*FAILURES, UnicodeDecodeError):
                await asyncio.sleep(LISTEN_WAIT)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except FAILURES:
                        pass
