"""The compiled routing graph: immutable values that a request reads without locks.

`compile()` (daemon/compile.py) builds one `Graph` from a validated document.
Nothing in a published graph is ever mutated; runtime state (cooldowns,
counters, latency averages, connection pools) lives elsewhere, keyed by the
stable identities defined here (`Deployment.identity`, `Provider.identity`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from gatewayd.daemon.windows import Windows

EMPTY_MAPPING: Mapping = MappingProxyType({})


class Secret:
    """A credential value that never prints itself.

    `repr()` and `str()` show only a short fingerprint, so a graph, a
    deployment or an exception that carries one can be logged safely.
    """

    __slots__ = ("_value", "_bytes", "fingerprint")

    def __init__(self, value: str) -> None:
        self._value = value
        self._bytes = value.encode("utf-8", "surrogateescape")  # app keys are compared as bytes on every request
        self.fingerprint = fingerprint(value)

    def reveal(self) -> str:
        return self._value

    def reveal_bytes(self) -> bytes:
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Secret(sha256:{self.fingerprint})"

    __str__ = __repr__


def fingerprint(value: str) -> str:
    """A short, non-reversible identifier of a secret (first 12 hex digits of SHA-256)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float
    total: float


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float
    max: float
    multiplier: float
    jitter: str  # "full" | "equal" | "none"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    backoff: Backoff
    retry_statuses: frozenset[int]  # HTTP statuses named in `when` (5xx expanded)
    retry_timeout: bool  # `timeout` in `when`
    retry_connect: bool  # `connect` in `when`
    retry_after_max: float


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    failures: int
    initial: float
    multiplier: float
    max: float


@dataclass(frozen=True, slots=True)
class Policy:
    timeouts: Timeouts
    retry: RetryPolicy
    cooldown: CooldownPolicy


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    type: str  # openai | azure-openai | anthropic | ollama | mock
    base_url: str
    api_key: Secret | None  # None: send no credential (local servers need none)
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # values may carry credentials
    max_connections: int
    options: Mapping[str, object]  # type-specific keys (api_version, anthropic_version, reply, latency, fail_rate)
    disabled: str | None = None  # why it is disabled, or None when usable

    @property
    def identity(self) -> tuple:
        """What a connection pool is keyed by: it survives reloads while this is unchanged."""
        key = self.api_key.fingerprint if self.api_key else None
        headers = tuple((name, fingerprint(value)) for name, value in self.headers)
        return (self.type, self.base_url, key, headers, self.max_connections,
                tuple(sorted((k, repr(v)) for k, v in self.options.items())))


@dataclass(frozen=True, slots=True)
class Pricing:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model deployment: one provider plus one upstream model, with its policy."""

    name: str
    provider: Provider
    model: str  # the upstream model (Azure: the deployment name)
    policy: Policy
    windows: Windows | None = None
    pricing: Pricing | None = None
    # Runtime state (cooldown, failures, latency) is keyed by this, not by the name (SPEC §3).
    # Derived once here: every request looks its deployments' health up by it.
    identity: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.provider.api_key.fingerprint if self.provider.api_key else None
        object.__setattr__(self, "identity", (self.provider.type, self.provider.base_url, self.model, key))

    @property
    def disabled(self) -> str | None:
        return self.provider.disabled


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: str  # name of a Deployment in Graph.deployments
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Tier:
    strategy: str  # ordered | round-robin | weighted | least-busy | lowest-latency
    candidates: tuple[Candidate, ...]
    origin: str  # the alias (or model) this tier came from


@dataclass(frozen=True, slots=True)
class Route:
    """What a requested `model` name resolves to: the flattened plan of tiers."""

    name: str
    kind: str  # "alias" | "model"
    tiers: tuple[Tier, ...]

    def deployments(self) -> tuple[str, ...]:
        return tuple(c.deployment for t in self.tiers for c in t.candidates)


@dataclass(frozen=True, slots=True)
class AppKey:
    name: str
    key: Secret
    allow: frozenset[str] | None  # None: every alias and model


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str  # "host:port" or "unix:/path"
    shutdown_grace: float
    max_body: int
    log_format: str  # text | json
    keys: tuple[AppKey, ...] | None  # None: no auth
    read_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Graph:
    """One compiled configuration. Built by `compile()`, never mutated after."""

    version: str
    source: str  # the config file's path
    server: ServerSettings
    providers: Mapping[str, Provider]
    deployments: Mapping[str, Deployment]
    routes: Mapping[str, Route]  # aliases and models, by the name apps send
    aliases: tuple[str, ...]
    default_policy: Policy  # `defaults:` merged over the schema's defaults; bounds a request's total
    warnings: tuple[str, ...] = field(default=())
