"""What to do after a failed attempt: a pure function of the failure's class and
the deployment's retry policy, plus the backoff schedule.

    class                     action                       counts against the deployment
    client (400, 413, 422)    return to the client as is   no
    auth, not_found           fall back, no retry          yes
    protocol, redirect        fall back, no retry          yes
    internal (a gateway bug)  fall back, no retry          no: whatever caused it, the
                                                           deployment did not
    rate_limit, overloaded,   retry while `retry.when`     yes, once the deployment is left
    server, timeout, connect  lists it and attempts remain;
                              a Retry-After beyond
                              `retry_after_max` moves on at once
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import Backoff, RetryPolicy
from gatewayd.daemon.state.health import capped_growth

# The status a class stands for when the failure carried none (an in-band stream error).
NOMINAL_STATUS = {FailureClass.RATE_LIMIT: 429, FailureClass.OVERLOADED: 503, FailureClass.SERVER: 500}
NEVER_RETRIED = frozenset({FailureClass.AUTH, FailureClass.NOT_FOUND, FailureClass.PROTOCOL,
                           FailureClass.REDIRECT})


class Action(str, Enum):
    RETURN = "return"  # hand the upstream's answer to the client
    RETRY = "retry"  # same deployment again, after `delay`
    FALL_BACK = "fall_back"  # next candidate


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    counts: bool = True  # a failure of the deployment (cooldown bookkeeping)


def is_listed(error: UpstreamError, retry: RetryPolicy) -> bool:
    """Whether `retry.when` names this failure."""
    if error.failure is FailureClass.TIMEOUT:
        return retry.retry_timeout
    if error.failure is FailureClass.CONNECT:
        return retry.retry_connect
    status = error.status or NOMINAL_STATUS.get(error.failure)
    return status is not None and status in retry.retry_statuses


def decide(error: UpstreamError, retry: RetryPolicy, attempt: int, rng: random.Random | None = None) -> Decision:
    """`attempt` counts tries at this deployment so far, the failed one included (1-based)."""
    if error.failure is FailureClass.CLIENT:
        return Decision(Action.RETURN, counts=False)
    if error.failure is FailureClass.INTERNAL:
        return Decision(Action.FALL_BACK, counts=False)
    if error.failure in NEVER_RETRIED or attempt >= retry.attempts or not is_listed(error, retry):
        return Decision(Action.FALL_BACK)
    if error.retry_after is not None:
        if error.retry_after > retry.retry_after_max:
            return Decision(Action.FALL_BACK)
        return Decision(Action.RETRY, delay=error.retry_after)
    return Decision(Action.RETRY, delay=backoff_delay(retry.backoff, attempt, rng))


def backoff_delay(backoff: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Wait before try `attempt + 1`: exponential, capped at `max`, with jitter."""
    base = capped_growth(backoff.initial, backoff.multiplier, attempt - 1, backoff.max)
    uniform = (rng or random).uniform
    if backoff.jitter == "full":
        return uniform(0.0, base)
    if backoff.jitter == "equal":
        return base / 2 + uniform(0.0, base / 2)
    return base
