"""The in-process event bus and `GET /admin/events`, owned by the Runtime.

Kinds and their fields (every event also carries `kind` and `at`, ISO 8601 UTC):

    reload          result (accepted|rejected|unchanged), version, trigger, error
    cooldown_start  deployment, deployments (every name sharing its identity), until,
                    last_error, failure (the class that tripped it)
    cooldown_end    deployment, deployments, last_error (what had caused the cooldown)
    fallback        alias, from (the deployment left), error (failure class), status, detail
    dropped         count: events this subscriber missed because it read too slowly

Publishing never blocks and never raises: each subscriber owns a bounded queue,
and a full queue drops its OLDEST event (a live view wants the newest) and
counts it; the subscriber is told with a `dropped` event before the next one.
`publish` is meant for the event loop's thread; from another thread it hands
the event over with `call_soon_threadsafe`.

Secrets: fields are passed through the Runtime's `redact`, which replaces any
configured credential (provider keys, app keys) with `[redacted]`, so an
upstream that echoes a key back cannot leak it through an error message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    pass

log = logging.getLogger("gatewayd")

QUEUE_SIZE = 1000
_CLOSED = object()  # the sentinel a subscriber gets when the bus closes (shutdown)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Subscription:
    """One subscriber's bounded queue; use it as a context manager to unsubscribe."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self._pending: dict | None = None
        self.dropped = 0  # not yet reported
        self.dropped_total = 0

    def offer(self, item: object) -> None:
        """Enqueue without blocking; a full queue loses its oldest item."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                try:
                    lost = self._queue.get_nowait()
                except asyncio.QueueEmpty:  # pragma: no cover - only one producer
                    continue
                if lost is _CLOSED:  # never lose the end: keep it, drop the newcomer
                    self._queue.put_nowait(lost)
                    return
                self.dropped += 1
                self.dropped_total += 1

    async def next(self) -> dict | None:
        """The next event, a `dropped` notice before it when some were lost; None once closed."""
        if self._pending is None:
            item = await self._queue.get()
            if item is _CLOSED:
                return None
            self._pending = item  # type: ignore[assignment]
        if self.dropped:  # say what was lost (it was older) before what follows
            count, self.dropped = self.dropped, 0
            return {"kind": "dropped", "at": now_iso(), "count": count}
        event, self._pending = self._pending, None
        return event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, redact: Callable[[str], str] | None = None, maxsize: int = QUEUE_SIZE) -> None:
        self._subscribers: set[Subscription] = set()
        self._redact = redact or (lambda text: text)
        self._maxsize = maxsize
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self.closed = False

    def subscribe(self) -> Subscription:
        self._bind()
        subscription = Subscription(self, self._maxsize)
        if self.closed:
            subscription.offer(_CLOSED)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, **fields: Any) -> dict | None:
        """Send an event to every subscriber; returns it (None when nobody listens)."""
        if self._thread is not None and threading.get_ident() != self._thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(lambda: self.publish(kind, **fields))
            return None
        if not self._subscribers or self.closed:
            return None
        try:
            event = {"kind": kind, "at": now_iso(), **{k: self._clean(v) for k, v in fields.items()}}
        except Exception:  # an event must never break what published it
            log.exception("could not build a %s event", kind, extra={"event": "event_error", "kind": kind})
            return None
        for subscription in list(self._subscribers):
            subscription.offer(event)
        return event

    def close(self) -> None:
        """End every subscriber's stream (shutdown); later subscribers end at once."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription.offer(_CLOSED)

    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, (list, tuple)):
            return [self._clean(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._clean(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self._redact(str(value))


