"""What serves across reloads: the holder of the serving snapshot, health by deployment
identity, limit counters by key and deployment identity, connection pools by provider
identity, metrics, the access log, the event bus, and the set of requests in flight (for
the shutdown drain)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from gatewayd.adapters.base import Adapter
from gatewayd.daemon.config.load import Loaded
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.http.cache import ResponseCache
from gatewayd.daemon.observe.accesslog import AccessLog
from gatewayd.daemon.observe.events import EventBus
from gatewayd.daemon.observe.metrics import Metrics
from gatewayd.daemon.routing.quota import Quotas
from gatewayd.daemon.routing.router import Router, RoutingObserver
from gatewayd.daemon.routing.snapshot import AdapterPool, Holder, Snapshot, close_when_drained
from gatewayd.daemon.routing.status import deployment_states, usable_count
from gatewayd.daemon.state.counters import LocalCounterStore
from gatewayd.daemon.state.health import LocalHealthStore
from gatewayd.daemon.state.store import HealthView

log = logging.getLogger("gatewayd")


class InFlight:
    """The handler tasks of requests being served, so shutdown can wait for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        self._idle.clear()

    def leave(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when no request is in flight any more, False when `timeout` passed first."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cancel_all(self) -> int:
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


class Runtime(RoutingObserver):
    """State that survives reloads: health by deployment identity, pools by provider
    identity, metrics, and the holder of the serving snapshot, which `install` alone fills."""

    def __init__(self, loaded: Loaded, config_path: str) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.access = AccessLog()
        self.events = EventBus(redact=self.redact)
        self.requests = InFlight()
        self.stopping = asyncio.Event()  # set when shutdown begins (SIGTERM/SIGINT)
        self.health = LocalHealthStore(on_change=self.health_changed)
        self.counters = LocalCounterStore()
        self.cache = ResponseCache()
        self.router = Router(self.health, observer=self, quotas=Quotas(self.counters))
        self._pool = AdapterPool()
        self._closing: set[asyncio.Task] = set()  # pools of providers that left, closing once drained
        self.holder = Holder()
        self.install(loaded.graph)
        self.metrics.watch_states(self.deployment_states)
        self.metrics.watch_queues(self.queue_lengths)
        self.metrics.watch_cache(self.cache)
        self.metrics.watch_inflight(lambda: len(self.requests))
        self.reloader = None  # server.start_reloader sets it once the daemon listens; tests may run without

    def install(self, graph: Graph) -> Snapshot:
        """Publish `graph`, at start and on every reload: nothing else writes `holder.current`.

        Building comes first, and it is the only step that may fail (an adapter for a new
        provider identity is constructed; unchanged providers keep theirs). It changes nothing
        that serves, so a failure here leaves the old snapshot serving with nothing to roll back.
        Then one assignment publishes: every request from there on reads the new snapshot, and
        one in flight finishes on the one it started with. The bookkeeping after it cannot fail:
        health and limit counters are kept for the key and deployment identities still configured
        (a changed `concurrency` lets waiting requests into the slots it frees), the metrics name
        the new version, and the pools of providers that left close once the old snapshot's last
        request has ended (bounded by the new `shutdown_grace`).
        """
        new = self._pool.build(graph)
        old = getattr(self.holder, "current", None)  # None at the first install
        self.holder.current = new  # THE publish
        if old is not None:
            old.retired = True
        self.health.retain(d.identity for d in graph.deployments.values())
        self.cache.install(graph)
        self.counters.retain((key.identity for key in graph.server.keys or ()),
                             (d.identity for d in graph.deployments.values()))
        for deployment in graph.deployments.values():
            usage = self.counters.peek_deployment(deployment.identity)
            if usage is not None:
                limits = deployment.limits
                concurrency = limits.concurrency if limits is not None else None
                usage.slots.admit_waiting(concurrency if concurrency is not None else float("inf"))
        self.router.strategies.retain(tier for route in graph.routes.values() for tier in route.tiers)
        gone = self._pool.adopt(new)
        if old is not None and gone:
            self._close_later(old, gone, graph.server.shutdown_grace)
        self.metrics.set_config(graph.version)
        return new

    def _close_later(self, old: Snapshot, gone: list[Adapter], timeout: float) -> None:
        async def close() -> None:
            try:
                await close_when_drained(old, gone, timeout)
            except asyncio.CancelledError:  # the loop is closing: close the pools now, not never
                for adapter in gone:
                    await adapter.close()
                raise

        task = asyncio.get_running_loop().create_task(close(), name="gatewayd-close-pools")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # RoutingObserver
    def attempt_failed(self, deployment: str, error: UpstreamError) -> None:
        self.metrics.failure(deployment, error.failure.value)

    def fell_back(self, route: str, deployment: str, error: UpstreamError) -> None:
        log.info("fallback: %s left %s after %s", route, deployment, self.redact(error.describe()),
                 extra={"event": "fallback", "alias": route, "from": deployment, "failure": error.failure.value})
        self.metrics.fallback(route, deployment)
        self.events.publish("fallback", alias=route, **{"from": deployment}, error=error.failure.value,
                            status=error.status, detail=error.describe())

    def rejected(self, reason: str) -> None:
        self.metrics.rejected(reason)

    def queued(self, deployment: str, waited: float, admitted: bool) -> None:
        self.metrics.queue_wait(deployment, waited, admitted)

    # the health store's on_change
    def health_changed(self, event: str, identity: tuple, health: HealthView) -> None:
        names = self.names_of(identity)
        if not names:  # the deployment left the config meanwhile
            return
        fields = {"deployment": names[0], "deployments": names, "last_error": health.last_error}
        if event == "cooldown_start":
            until = datetime.fromtimestamp(health.cooldown_until, timezone.utc)
            fields["until"] = until.isoformat(timespec="milliseconds")
            fields["failure"] = health.last_failure.value if health.last_failure else None
            log.warning("cooldown: %s until %s after %s", ", ".join(names), fields["until"],
                        self.redact(health.last_error or "failures"),
                        extra={"event": "cooldown_start", "deployments": names, "until": fields["until"],
                               "failure": fields["failure"]})
        else:
            log.info("cooldown ended: %s answered again", ", ".join(names),
                     extra={"event": "cooldown_end", "deployments": names})
        self.events.publish(event, **fields)

    def names_of(self, identity: tuple) -> list[str]:
        """The names of the serving graph's deployments of this identity."""
        return [name for name, deployment in self.holder.current.graph.deployments.items()
                if deployment.identity == identity]

    def redact(self, text: str) -> str:
        """`text` with every credential of the serving config replaced (defence in depth)."""
        for secret in self.holder.current.graph.redactions:  # a key_sha256 holds no secret
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def deployment_states(self):
        return deployment_states(self.holder.current, self.health, counters=self.counters)

    def queue_lengths(self):
        """(deployment, requests waiting in its queue) for each deployment with a concurrency limit."""
        for name, deployment in self.holder.current.graph.deployments.items():
            if deployment.limits is not None and deployment.limits.concurrency is not None:
                usage = self.counters.peek_deployment(deployment.identity)
                yield name, usage.slots.queued if usage is not None else 0

    def ready(self) -> bool:
        return usable_count(self.holder.current, self.health, counters=self.counters) > 0

    def begin_stopping(self) -> None:
        """Shutdown begins: streams learn it on cancellation, event streams end now."""
        self.stopping.set()
        self.events.close()

    async def close(self) -> None:
        await self._pool.close_all()
