"""What serves requests: the published snapshot, and the state that outlives it.

A `Snapshot` pairs one compiled graph with the adapters (connection pools) its
providers use; requests read `Holder.current` once and use only that. The
`AdapterPool` keys adapters by provider identity, so a reload that leaves a
provider unchanged keeps its pool, and closes a pool that left the config once
the last request using it has ended.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

from gatewayd.adapters.base import Adapter
from gatewayd.adapters.registry import create_adapter
from gatewayd.daemon.core.graph import Graph

log = logging.getLogger("gatewayd")


@dataclass(eq=False, slots=True)
class Snapshot:
    graph: Graph
    adapters: Mapping[str, Adapter]  # provider name -> adapter
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    inflight: int = 0  # requests reading this snapshot
    retired: bool = False  # a newer snapshot has been published
    drained: asyncio.Event | None = None  # set when retired and inflight reaches 0

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0 and self.drained is not None:
            self.drained.set()


class Holder:
    """The one reference to the serving snapshot; publishing is one assignment, made only by
    `Runtime.install`. Empty until the first install: reading it before then is a bug, and
    raises AttributeError rather than serving nothing."""

    __slots__ = ("current",)
    current: Snapshot


class AdapterPool:
    def __init__(self) -> None:
        self._by_identity: dict[tuple, Adapter] = {}

    def build(self, graph: Graph) -> Snapshot:
        """A snapshot for `graph`, reusing the adapter of every unchanged provider."""
        adapters = {}
        for name, provider in graph.providers.items():
            adapter = self._by_identity.get(provider.identity)
            if adapter is None:
                adapter = create_adapter(provider)
            adapters[name] = adapter
        return Snapshot(graph, adapters)

    def adopt(self, snapshot: Snapshot) -> list[Adapter]:
        """Make `snapshot`'s adapters the pool; returns the adapters that left it."""
        live = {snapshot.graph.providers[name].identity: adapter for name, adapter in snapshot.adapters.items()}
        gone = [adapter for identity, adapter in self._by_identity.items()
                if identity not in live and all(adapter is not a for a in live.values())]
        self._by_identity = live
        return gone

    async def close_all(self) -> None:
        adapters, self._by_identity = list(self._by_identity.values()), {}
        for adapter in adapters:
            await adapter.close()


async def close_when_drained(old: Snapshot, adapters: list[Adapter], timeout: float) -> None:
    """Close `adapters` once the last request of `old` has ended (bounded by `timeout`)."""
    if old.inflight:
        old.drained = asyncio.Event()
        try:
            await asyncio.wait_for(old.drained.wait(), timeout)
        except TimeoutError:
            log.warning("closing %d connection pool(s) with requests still in flight", len(adapters),
                        extra={"event": "pools_closed_busy"})
    for adapter in adapters:
        await adapter.close()
