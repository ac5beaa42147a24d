"""What the request path says of state shared through Redis, without importing a Redis client:
a gateway whose `state.backend` is `local` never loads redis-py (which in turn loads
OpenTelemetry when it is installed), yet the router and the quotas name these.

    Over         a shared admission refused: which limit, and when it has room
    Unavailable  Redis did not answer in time (or is known to be away): go on with local state
"""

from __future__ import annotations

import msgspec


class Over(msgspec.Struct, gc=False):
    """Refused: `limit` is budget, rpm, tpm or concurrency; `wait` the seconds until room."""

    limit: str
    wait: float = 0.0
    spent: float = 0.0


class Unavailable(Exception):
    """Redis did not answer in time (or is known to be away): go on with local state."""
