"""The one connection to the Redis that shares state between instances, and whether it serves.

    RedisLink         the client (redis-py's asyncio client; `rediss://` is TLS), every command
                      bounded by `state.redis.timeout`; `status` is `shared` while Redis answers,
                      `degraded` from the first error or timeout until the background probe
                      (every PROBE_EVERY seconds, with or without traffic) is answered again
    Unavailable       (daemon/state/shared.py) what a caller gets instead of a Redis error: its
                      cue to go on with local state
    identity_digest   the name a state's identity has in Redis (a digest: never a key or credential)

Each instance registers itself at every probe (a sorted set of instance ids by last probe);
`instances` is how many probed within INSTANCE_TTL, the last known count by which local limits
are divided while Redis is away. A transition between `shared` and `degraded` is logged once
and counted; what each caller did instead is counted in `fallbacks`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gatewayd.daemon.core.graph import RedisSettings
from gatewayd.daemon.state.shared import Unavailable

log = logging.getLogger("gatewayd")

SHARED, DEGRADED = "shared", "degraded"
PROBE_EVERY = 1.0  # seconds between background probes: `degraded` ends within this of Redis answering
INSTANCE_TTL = 15.0  # seconds an instance counts as alive after its last probe
REGISTER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""
FAILURES = (RedisError, OSError, TimeoutError)
T = TypeVar("T")


class Script:
    """A Lua script, registered with the client on its first run (the client is made only when
    the probe first reaches for it: a password file is not read before)."""

    __slots__ = ("text", "_registered")

    def __init__(self, text: str) -> None:
        self.text = text
        self._registered = None

    def __call__(self, keys: list, args: list, client: aioredis.Redis):
        if self._registered is None:
            self._registered = client.register_script(self.text)
        return self._registered(keys=keys, args=args, client=client)


def identity_digest(identity: tuple) -> str:
    """A state identity's name in Redis: 24 hex digits of SHA-256 of its repr."""
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:24]


def read_password(settings: RedisSettings, config_dir: str, env) -> str | None:
    """`password_file`'s content (relative to $CREDENTIALS_DIRECTORY when set, else the config's
    folder); None when none is configured. Raises OSError or UnicodeDecodeError."""
    if not settings.password_file:
        return None
    base = env.get("CREDENTIALS_DIRECTORY") or config_dir
    return Path(base, settings.password_file).read_text("utf-8").rstrip("\r\n")


class RedisLink:
    def __init__(self, settings: RedisSettings, config_dir: str, env=os.environ) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self.timeout = settings.timeout
        self.instance = f"{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self.status = DEGRADED  # until the first probe is answered
        self.instances = 1  # the last known count of live instances (never 0)
        self.fallbacks = 0  # operations that went on with local state
        self.transitions = {SHARED: 0, DEGRADED: 0}
        self.since = time.time()
        self.last_error: str | None = None  # a class name and Redis's words, never a credential
        self.on_resume: list[Callable[[], Awaitable[None]]] = []  # run each time shared state resumes
        self._config_dir = config_dir
        self._env = env
        self._client: aioredis.Redis | None = None
        self._register = Script(REGISTER)
        self._tasks: set[asyncio.Task] = set()
        self._probe: asyncio.Task | None = None
        self._reported_start = False

    @property
    def shared(self) -> bool:
        return self.status is SHARED

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def client(self) -> aioredis.Redis:
        """The client, made on first use: the password file is read then (and again after a
        failure to read it), never logged."""
        if self._client is None:
            password = read_password(self.settings, self._config_dir, self._env)
            extra = {"password": password} if password is not None else {}
            # no retries inside the client: a failure is this request's cue to use local state
            self._client = aioredis.Redis.from_url(
                self.settings.url.reveal(), socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0, **extra)
        return self._client

    @staticmethod
    def script(text: str) -> Script:
        """A Lua script run by EVALSHA (loaded again by itself after a Redis restart)."""
        return Script(text)

    def start(self) -> None:
        self._probe = asyncio.get_running_loop().create_task(self._probe_forever(), name="gatewayd-redis-probe")

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """`operation` on the client within `timeout`; Unavailable when Redis is away or slow
        (the link turns degraded, and this is counted as a fallback)."""
        if self.status is not SHARED:
            self.fallbacks += 1
            raise Unavailable
        try:
            async with asyncio.timeout(self.timeout):
                return await operation(self.client())
        except FAILURES as exc:
            self.fallbacks += 1
            self.lost(exc)
            raise Unavailable from None

    def spawn(self, operation: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
        """`operation` in the background (a settlement, a publication): no request waits for it."""
        if self.status is not SHARED:
            self.fallbacks += 1
            return
        task = asyncio.get_running_loop().create_task(self._quietly(operation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, operation) -> None:
        try:
            await self.run(operation)
        except Unavailable:
            pass

    def lost(self, exc: BaseException) -> None:
        self.last_error = describe(exc)
        if self.status is SHARED:
            self._turn(DEGRADED)

    def _turn(self, status: str) -> None:
        self.status, self.since = status, time.time()
        self.transitions[status] += 1
        if status is SHARED:
            log.info("state: shared through Redis at %s (%d instances)", self.settings.address, self.instances,
                     extra={"event": "state_shared", "redis": self.settings.address, "instances": self.instances})
        else:
            log.warning("state: Redis at %s is unavailable (%s); serving on local state, limits divided by %d",
                        self.settings.address, self.last_error, self.instances,
                        extra={"event": "state_degraded", "redis": self.settings.address,
                               "instances": self.instances, "error": self.last_error})

    async def probe(self) -> bool:
        """Register this instance and learn how many are alive: the probe that ends `degraded`."""
        try:
            client = self.client()
            async with asyncio.timeout(self.timeout):
                count = await self._register(keys=[self.key("instances")], args=[
                    int(time.time() * 1000), self.instance, int(INSTANCE_TTL * 1000)], client=client)
        except (*FAILURES, UnicodeDecodeError) as exc:
            if isinstance(exc, OSError) and self._client is None:  # the password file: read it again next time
                exc = OSError(f"state.redis.password_file cannot be read ({exc.strerror or type(exc).__name__})")
            self.last_error = describe(exc)
            if self.status is SHARED:
                self._turn(DEGRADED)
            elif not self._reported_start:
                self._reported_start = True
                self._log_start_degraded()
            return False
        self.instances = max(1, int(count))
        if self.status is not SHARED:
            self._reported_start = True
            self._turn(SHARED)
            for resume in self.on_resume:
                try:
                    await resume()
                except Exception:  # a resync that failed must not stop the probe
                    log.exception("state: catching up with Redis failed", extra={"event": "state_resync_failed"})
        return True

    def _log_start_degraded(self) -> None:
        self.transitions[DEGRADED] += 1
        log.warning("state: Redis at %s is unavailable (%s); serving on local state until it answers",
                    self.settings.address, self.last_error,
                    extra={"event": "state_degraded", "redis": self.settings.address, "error": self.last_error})

    async def _probe_forever(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_EVERY)

    def view(self) -> dict:
        """`state` of /admin/status (the address never carries the password)."""
        return {"backend": "redis", "status": self.status, "instances": self.instances,
                "redis": self.settings.address, "prefix": self.prefix,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
                "fallbacks": self.fallbacks, "last_error": self.last_error}

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([self._probe] if self._probe else []), *self._tasks, return_exceptions=True)
        if self._client is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._client.zrem(self.key("instances"), self.instance)
            except FAILURES:
                pass
            await self._client.aclose()


def describe(exc: BaseException) -> str:
    """An error in words for status and logs: its class and message (redis-py's messages name
    hosts and commands, never a password)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class LinkCollector:
    """`gatewayd_state_degraded`, `gatewayd_state_fallbacks_total` and
    `gatewayd_state_transitions_total{to}`, read at scrape time."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def collect(self):
        link = self.link
        yield GaugeMetricFamily("gatewayd_state_degraded", "1 while Redis is away and state is local",
                                value=0.0 if link.shared else 1.0)
        yield CounterMetricFamily("gatewayd_state_fallbacks", "Operations on shared state that went on "
                                  "with local state because Redis was away or slow", value=link.fallbacks)
        transitions = CounterMetricFamily("gatewayd_state_transitions", "Times shared state turned shared "
                                          "or degraded", labels=["to"])
        for status, count in link.transitions.items():
            transitions.add_metric([status], count)
        yield transitions
