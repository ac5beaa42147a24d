"""What serves across reloads: the holder of the serving snapshot, health by deployment
identity, connection pools by provider identity, metrics, the access log, the event
bus, and the set of requests in flight (for the shutdown drain)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from gatewayd.daemon.config.load import Loaded
from gatewayd.daemon.core.failures import UpstreamError
from gatewayd.daemon.core.graph import redaction_forms
from gatewayd.daemon.observe.accesslog import AccessLog
from gatewayd.daemon.observe.events import EventBus
from gatewayd.daemon.observe.metrics import Metrics
from gatewayd.daemon.routing.router import Router, RoutingObserver
from gatewayd.daemon.routing.snapshot import AdapterPool, Holder
from gatewayd.daemon.routing.status import deployment_state, usable_count
from gatewayd.daemon.state.health import Health, HealthBook, wall

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
    identity, metrics, and the holder of the serving snapshot."""

    def __init__(self, loaded: Loaded, config_path: str) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.access = AccessLog()
        self.events = EventBus(redact=self.redact)
        self.requests = InFlight()
        self.stopping = asyncio.Event()  # set when shutdown begins (SIGTERM/SIGINT)
        self.health = HealthBook(on_change=self.health_changed)
        self.router = Router(self.health, observer=self)
        self.pool = AdapterPool()
        snapshot = self.pool.build(loaded.graph)
        self.pool.adopt(snapshot)
        self.holder = Holder(snapshot)
        self.metrics.set_config(loaded.graph.version)
        self.metrics.watch_states(self.deployment_states)
        self.metrics.watch_inflight(lambda: len(self.requests))
        self.reloader = None  # server.start_reloader sets it once the daemon listens; tests may run without

    # RoutingObserver
    def attempt_failed(self, deployment: str, error: UpstreamError) -> None:
        self.metrics.failure(deployment, error.failure.value)

    def fell_back(self, route: str, deployment: str, error: UpstreamError) -> None:
        log.info("fallback: %s left %s after %s", route, deployment, self.redact(error.describe()),
                 extra={"event": "fallback", "alias": route, "from": deployment, "failure": error.failure.value})
        self.metrics.fallback(route, deployment)
        self.events.publish("fallback", alias=route, **{"from": deployment}, error=error.failure.value,
                            status=error.status, detail=error.describe())

    # HealthBook
    def health_changed(self, event: str, health: Health) -> None:
        names = self.names_of(health)
        if not names:  # the deployment left the config meanwhile
            return
        fields = {"deployment": names[0], "deployments": names, "last_error": health.last_error}
        if event == "cooldown_start":
            until = datetime.fromtimestamp(wall(health.cooldown_until), timezone.utc)
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

    def names_of(self, health: Health) -> list[str]:
        """The names of the serving graph's deployments whose identity owns `health`."""
        return [name for name, deployment in self.holder.current.graph.deployments.items()
                if self.health.peek(deployment) is health]

    def redact(self, text: str) -> str:
        """`text` with every credential of the serving config replaced (defence in depth)."""
        graph = self.holder.current.graph
        secrets = [form for provider in graph.providers.values() for form in provider.redactions]
        secrets += redaction_forms(k.key.reveal() for k in graph.server.keys or () if k.key)  # key_sha256: none
        for secret in sorted(secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def deployment_states(self):
        now = time.monotonic()
        for name, deployment in self.holder.current.graph.deployments.items():
            yield name, deployment_state(deployment, self.health.peek(deployment), now)

    def ready(self) -> bool:
        return usable_count(self.holder.current, self.health) > 0

    def begin_stopping(self) -> None:
        """Shutdown begins: streams learn it on cancellation, event streams end now."""
        self.stopping.set()
        self.events.close()

    async def close(self) -> None:
        await self.pool.close_all()
