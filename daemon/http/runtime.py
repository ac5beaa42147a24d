"""What serves across reloads: the holder of the serving snapshot, health by deployment
identity, what strategy: ucb learned by deployment identity, limit counters by key and
deployment identity, connection pools by provider
identity, metrics, the access log, the event bus, and the set of requests in flight (for
the shutdown drain)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from gatewayd.adapters.base import UPSTREAM_TRACE, Adapter
from gatewayd.daemon.config.load import Loaded
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.http.cache import ResponseCache
from gatewayd.daemon.observe.accesslog import AccessLog
from gatewayd.daemon.observe.events import EventBus
from gatewayd.daemon.observe.metrics import Metrics
from gatewayd.daemon.observe.requests import RequestRing
from gatewayd.daemon.observe.tracing import CLOSE_WAIT, SpanCountCollector, SpanCounts, Tracing
from gatewayd.daemon.routing.bandit import learning_identities
from gatewayd.daemon.routing.quota import Quotas, per_instance
from gatewayd.daemon.routing.router import Router, RoutingObserver
from gatewayd.daemon.routing.snapshot import AdapterPool, Holder, Snapshot, close_when_drained
from gatewayd.daemon.routing.status import deployment_states, usable_count
from gatewayd.daemon.routing.strategies import Strategies
from gatewayd.daemon.state.bandit import LocalBanditStore
from gatewayd.daemon.state.counters import LocalCounterStore
from gatewayd.daemon.state.health import LocalHealthStore
from gatewayd.daemon.state.store import HealthView

if TYPE_CHECKING:
    from gatewayd.daemon.state.redis_health import SharedHealth
    from gatewayd.daemon.state.redis_link import RedisLink

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
        self.ring = RequestRing(loaded.graph.server.recent_requests)  # and the traces, with telemetry on
        self.span_counts: SpanCounts | None = None  # once telemetry was on
        self._closing_traces: list = []  # threads that let a replaced Tracing's last spans leave
        self.bandit = LocalBanditStore()  # what strategy: ucb learns, by deployment identity
        self._learning = False  # the bandit hears outcomes (from the first graph with a ucb tier on)
        self.router = Router(self.health, Strategies(bandit=self.bandit), observer=self, quotas=Quotas(self.counters))
        # `state:` is read at start: shared through Redis, or each process's own (then, with
        # several workers, every limit is divided among them)
        self.state = loaded.graph.state
        self.link: RedisLink | None = None
        self.shared_health: SharedHealth | None = None
        self.share_among = 1 if self.state.backend == "redis" else workers_from_env()
        if self.state.backend == "redis":
            self.share_state(config_path)
        self._pool = AdapterPool()
        self._closing: set[asyncio.Task] = set()  # pools of providers that left, closing once drained
        self.holder = Holder()
        self.install(loaded.graph)
        self.metrics.watch_states(self.deployment_states)
        self.metrics.watch_queues(self.queue_lengths)
        self.metrics.watch_cache(self.cache)
        self.metrics.watch_inflight(lambda: len(self.requests))
        self.reloader = None  # server.start_reloader sets it once the daemon listens; tests may run without
        self.workers = None  # the link to the supervisor when this process is one of several workers

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
        graph = per_instance(graph, self.share_among)
        new = self._pool.build(graph)
        tracing = self.tracing_for(graph)
        old = getattr(self.holder, "current", None)  # None at the first install
        self.holder.current = new  # THE publish
        if old is not None:
            old.retired = True
        self.health.retain(d.identity for d in graph.deployments.values())
        self.cache.install(graph)
        self.ring.resize(graph.server.recent_requests)
        if tracing is not self.ring.tracing:
            if self.ring.tracing is not None:
                self._closing_traces = [t for t in self._closing_traces if t.is_alive()]
                self._closing_traces.append(self.ring.tracing.close())
            self.ring.trace_with(tracing)
        self.counters.retain((key.identity for key in graph.server.keys or ()),
                             (d.identity for d in graph.deployments.values()))
        for deployment in graph.deployments.values():
            usage = self.counters.peek_deployment(deployment.identity)
            if usage is not None:
                limits = deployment.limits
                concurrency = limits.concurrency if limits is not None else None
                usage.slots.admit_waiting(concurrency if concurrency is not None else float("inf"))
        self.router.strategies.retain(tier for route in graph.routes.values() for tier in route.tiers)
        if self.shared_health is not None:
            self.shared_health.track(graph.deployments.values())
        if graph.state != self.state:
            log.warning("state: changed; restart gatewayd to apply it (serving with the state: it started with)",
                        extra={"event": "state_needs_restart"})
        learning = learning_identities(graph)
        self.bandit.track(learning)
        if learning and not self._learning:  # until a tier learns, no request pays for the listener
            self.health.subscribe(self.bandit.record)
            self._learning = True
        gone = self._pool.adopt(new)
        if old is not None and gone:
            self._close_later(old, gone, graph.server.shutdown_grace)
        self.metrics.set_config(graph.version)
        return new

    def share_state(self, config_path: str) -> None:
        """Health, counters, spend and exact cache entries through Redis, beside the local ones
        that serve whenever Redis is away. Imported here: redis-py loads OpenTelemetry when it
        is installed, which a gateway without `state.backend: redis` should not pay for."""
        from gatewayd.daemon.state.redis_cache import RedisAnswers
        from gatewayd.daemon.state.redis_counters import RedisCounters
        from gatewayd.daemon.state.redis_health import SharedHealth
        from gatewayd.daemon.state.redis_link import LinkCollector, RedisLink

        link = self.link = RedisLink(self.state.redis, os.path.dirname(os.path.abspath(config_path)))
        shared = self.shared_health = SharedHealth(link, None, self.health_changed)  # type: ignore[arg-type]
        self.health = shared.store = LocalHealthStore(on_change=shared.changed)
        self.health.subscribe(shared.settled)
        self.router.health = self.health
        self.router.probes = shared
        self.router.quotas = Quotas(self.counters, RedisCounters(link))
        self.cache.shared = RedisAnswers(link)
        self.metrics.registry.register(LinkCollector(link))
        link.start()
        shared.start()

    def state_status(self) -> dict:
        """`state` of /admin/status."""
        if self.link is not None:
            return self.link.view()
        return {"backend": "local", "status": "local", "limits_divided_by": self.share_among}

    def tracing_for(self, graph: Graph) -> Tracing | None:
        """The tracing for `graph.telemetry`: the serving one while its settings are unchanged,
        else a new one (which may fail: telemetry configured without OpenTelemetry installed)."""
        settings = graph.telemetry
        current = self.ring.tracing
        if settings is None or (current is not None and current.settings == settings):
            return current if settings is not None else None
        if self.span_counts is None:
            self.span_counts = SpanCounts()
            self.metrics.registry.register(SpanCountCollector(self.span_counts))
        return Tracing(settings, self.span_counts, UPSTREAM_TRACE.set)

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
        if self.link is not None:
            await self.shared_health.close()
            await self.link.close()
        if self.ring.tracing is not None:
            self._closing_traces.append(self.ring.tracing.close())
            self.ring.trace_with(None)
        closing, self._closing_traces = self._closing_traces, []
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in closing:  # the spans still waiting leave, or are given up, within CLOSE_WAIT
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))


def workers_from_env() -> int:
    """How many worker processes serve (GATEWAYD_WORKERS, set by the supervisor; absent: 1)."""
    text = os.environ.get("GATEWAYD_WORKERS", "")
    return int(text) if text.isdigit() and int(text) > 0 else 1
