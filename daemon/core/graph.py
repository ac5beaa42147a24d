"""The compiled routing graph: immutable values that a request reads without locks.

`compile()` (daemon/config/compile.py) builds one `Graph` from a validated document.
Nothing in a published graph is ever mutated; runtime state (cooldowns,
counters, latency averages, connection pools) lives elsewhere, keyed by the
stable identities defined here (`Deployment.identity`, `Provider.identity`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from gatewayd.daemon.core.windows import Windows

EMPTY_MAPPING: Mapping = MappingProxyType({})
# the schema's default of server.max_upstream_body, for graph values built without the compiler (tests)
DEFAULT_MAX_UPSTREAM_BODY = 64 * 1024 * 1024


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


# Characters a form must have to be redacted: a shorter one would blank out ordinary words in
# every answer. A header value may be no credential at all (`X-Title: MyApp`), so it needs more.
KEY_AT_LEAST = 4
HEADER_AT_LEAST = 8


def redaction_forms(credentials: Iterable[str], at_least: int = KEY_AT_LEAST) -> tuple[str, ...]:
    """Each credential as sent, and the parts an upstream may quote back alone: the token of
    `Bearer TOKEN`, and for `Basic BASE64` the decoded `user:password` and the password."""
    forms: set[str] = set()
    for value in credentials:
        forms.add(value)
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if not token:
            continue
        forms.add(token)
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(token, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                continue
            forms.update((pair, pair.partition(":")[2]))
    return tuple(sorted((f for f in forms if len(f) >= at_least), key=len, reverse=True))


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
    # server.max_upstream_body, compiled into each provider: its adapter reads no answer past it
    max_upstream_body: int = DEFAULT_MAX_UPSTREAM_BODY
    # every credential this provider sends, in each form an upstream may echo it: what adapters
    # and logs replace with [redacted], longest first
    redactions: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        forms = set(redaction_forms((value for _name, value in self.headers), HEADER_AT_LEAST))
        if self.api_key:
            forms.update(redaction_forms((self.api_key.reveal(),)))
        # a type's own credentials (Bedrock's access key id, secret key, session token)
        forms.update(redaction_forms(value.reveal() for value in self.options.values()
                                     if isinstance(value, Secret) and value))
        object.__setattr__(self, "redactions", tuple(sorted(forms, key=len, reverse=True)))

    @property
    def identity(self) -> tuple:
        """What a connection pool is keyed by: it survives reloads while this is unchanged."""
        key = self.api_key.fingerprint if self.api_key else None
        headers = tuple((name, fingerprint(value)) for name, value in self.headers)
        return (self.type, self.base_url, key, headers, self.max_connections,
                tuple(sorted((k, repr(v)) for k, v in self.options.items())), self.max_upstream_body)


@dataclass(frozen=True, slots=True)
class Pricing:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


PRIORITIES = ("low", "normal", "high")  # an app key's `priority`, lowest first


@dataclass(frozen=True, slots=True)
class Limits:
    """`limits:` of an app key or a deployment. `rpm` and `tpm` count requests and tokens in
    a rolling 60 s window, `concurrency` the requests in flight (a stream until its end);
    None: no such limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    # as `x-ratelimit-limit-*` writes them, on every answer to a limited key
    rpm_text: str = field(init=False, repr=False, compare=False)
    tpm_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rpm_text", str(self.rpm))
        object.__setattr__(self, "tpm_text", str(self.tpm))


@dataclass(frozen=True, slots=True)
class Budget:
    """`budget:` of an app key: spend in US dollars per period, from each model's `pricing`."""

    usd: float
    period: str  # day | week | month, in `defaults.timezone`


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model deployment: one provider plus one upstream model, with its policy."""

    name: str
    provider: Provider
    model: str  # the upstream model (Azure: the deployment name)
    policy: Policy
    windows: Windows | None = None
    pricing: Pricing | None = None
    limits: Limits | None = None  # the upstream's quota for this deployment
    queue_wait: float = 0.0  # `queue.max_wait`: how long a request waits for a free slot (concurrency)
    max_output_tokens: int | None = None  # what a request that names no maximum is assumed to ask for
    # Runtime state (cooldown, failures, latency) is keyed by this, not by the name.
    # Derived once here: every request looks its deployments' health up by it.
    identity: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        provider = self.provider
        key = provider.api_key.fingerprint if provider.api_key else None
        # headers may carry the credential (a base_url's user:password becomes one)
        headers = tuple((name, fingerprint(value)) for name, value in provider.headers)
        object.__setattr__(self, "identity", (provider.type, provider.base_url, self.model, key, headers))

    @property
    def disabled(self) -> str | None:
        return self.provider.disabled


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: str  # name of a Deployment in Graph.deployments
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Ucb:
    """`ucb:` of an alias whose strategy is ucb: how much it explores, and what it rewards."""

    exploration: float = 2.0  # c in mean + sqrt(c * ln(pulls of the tier) / pulls of the deployment)
    reward: str = "success"  # success: the success rate | latency: it, scaled by speed against the tier's fastest


@dataclass(frozen=True, slots=True)
class Tier:
    strategy: str  # ordered | round-robin | weighted | least-busy | lowest-latency | ucb
    candidates: tuple[Candidate, ...]
    origin: str  # the alias (or model) this tier came from
    ucb: Ucb | None = None  # the strategy's settings, when it is ucb


@dataclass(frozen=True, slots=True)
class Route:
    """What a requested `model` name resolves to: the flattened plan of tiers."""

    name: str
    kind: str  # "alias" | "model"
    tiers: tuple[Tier, ...]
    cache: str = "off"  # off | exact | semantic: an alias's `cache` (a model route is never cached)

    def deployments(self) -> tuple[str, ...]:
        return tuple(c.deployment for t in self.tiers for c in t.candidates)


@dataclass(frozen=True, slots=True)
class AppKey:
    """An app key, given as the key itself (`key:`) or as its SHA-256 (`key_sha256:`).

    A presented key is compared with `expected`: as it is for a plain key, hashed first
    for a hashed one. Both are derived once here: every request compares them.
    """

    name: str
    expected: bytes = field(repr=False)  # the key's bytes, or its SHA-256 digest when `hashed`
    hashed: bool
    allow: frozenset[str] | None  # None: every alias and model
    admin: bool = False  # role: admin, the only keys that reach /admin/* (and /metrics unless public)
    key: Secret | None = None  # the key itself, for redaction; None when only its digest is known
    limits: Limits | None = None
    budget: Budget | None = None
    priority: str = "normal"  # one of PRIORITIES: its place in a deployment's queue
    # what its counters (limits, spend) are kept by: the key's digest, so they survive a reload
    # that renames it, and a key changed under the same name starts afresh
    identity: tuple = field(init=False, repr=False, compare=False)
    limited: bool = field(init=False, repr=False, compare=False)  # a limit or a budget applies to it

    def __post_init__(self) -> None:
        digest = self.expected if self.hashed else hashlib.sha256(self.expected).digest()
        object.__setattr__(self, "identity", ("key", digest.hex()[:24]))
        object.__setattr__(self, "limited", self.limits is not None or self.budget is not None)

    @classmethod
    def plain(cls, name: str, key: Secret, allow: frozenset[str] | None, admin: bool = False,
              **admission) -> AppKey:
        return cls(name, key.reveal_bytes(), False, allow, admin, key, **admission)

    @classmethod
    def from_sha256(cls, name: str, hex_digest: str, allow: frozenset[str] | None, admin: bool = False,
                    **admission) -> AppKey:
        return cls(name, bytes.fromhex(hex_digest), True, allow, admin, **admission)


@dataclass(frozen=True, slots=True)
class SemanticCache:
    """`cache.semantic:` after an exact miss, a stored answer to a similar request is served."""

    embeddings: str  # the alias or model whose route embeds a request's text
    threshold: float  # least cosine similarity served, in (0, 1]
    max_entries: int  # entries kept with their vectors for the search


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """`cache:`, the response cache shared by every alias whose `cache` is not off."""

    ttl: float  # seconds an entry is served after it was stored
    max_entries: int
    max_bytes: int  # of stored answers; past either bound the least recently used go first
    scope: str  # key: an entry is served only to the app key that stored it | shared: to every key
    semantic: SemanticCache | None = None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str  # "host:port" or "unix:/path"
    shutdown_grace: float
    max_body: int
    log_format: str  # text | json
    keys: tuple[AppKey, ...] | None  # None: no auth
    read_timeout: float = 60.0
    metrics: str = "auth"  # auth: /metrics needs an admin key when keys are configured; public: no key
    max_upstream_body: int = DEFAULT_MAX_UPSTREAM_BODY  # the largest upstream answer read (Provider has it too)
    recent_requests: int = 1000  # /v1 requests kept for /admin/requests (0: none kept)
    workers: int = 1  # processes serving `listen` (SO_REUSEPORT); 0: one per CPU, counted at start
    # whether a presented key must be hashed (some key is given as key_sha256): without such
    # keys a request never pays for the hash
    hashed_keys: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashed_keys", any(key.hashed for key in self.keys or ()))


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """`telemetry:` OpenTelemetry traces exported over OTLP/HTTP: a span per request, one per attempt."""

    endpoint: str  # where spans are POSTed: `otlp_endpoint` with /v1/traces
    service_name: str
    sample: float  # the share of traces kept, in [0, 1], when the client's traceparent decides nothing
    max_queue: int  # spans waiting for export; past it new ones are dropped and counted


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """`state.redis:` where shared state is kept."""

    url: Secret  # may hold the password: shown only with it removed (`address`)
    address: str  # the url without user or password, for status and logs
    url_password: str | None = field(repr=False)  # the password written in the url, for redaction
    password_file: str | None  # as written; read when the daemon starts
    prefix: str
    timeout: float  # seconds a command may take before the request goes on with local state


@dataclass(frozen=True, slots=True)
class StateSettings:
    """`state:` whether health, counters, spend and exact cache entries are shared (redis) or not."""

    backend: str = "local"  # local | redis
    redis: RedisSettings | None = None  # with backend redis


LOCAL_STATE = StateSettings()


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
    timezone: str = "UTC"  # `defaults.timezone`: where budget periods begin
    cache: CacheSettings | None = None  # None: the document has no `cache:` section
    telemetry: TelemetrySettings | None = None  # None: no traces, and nothing of OpenTelemetry imported
    state: StateSettings = LOCAL_STATE  # read at start only: a change needs a restart
    # every credential of this config, providers' and app keys', in each form an upstream may echo
    # it, longest first: what logs and events replace (derived once, not per line)
    redactions: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # some deployment has a `tpm`: each request's tokens are estimated (else only a limited key's)
    counts_tokens: bool = field(init=False, repr=False, compare=False)
    # by route name: the largest `max_output_tokens` among its deployments (0: none names one),
    # what a request that names no maximum is assumed to ask for
    output_tokens: Mapping[str, int] = field(init=False, repr=False, compare=False)
    # by route name: a short digest of its plan and of what answers for it (`plan_ids`); a reload
    # keeps the cached answers of every alias whose plan id did not change, the others start empty
    plan_ids: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        deployments = self.deployments
        object.__setattr__(self, "plan_ids", plan_ids(self.routes, deployments))
        object.__setattr__(self, "counts_tokens", any(
            d.limits is not None and d.limits.tpm is not None for d in deployments.values()))
        object.__setattr__(self, "output_tokens", MappingProxyType({
            name: max((deployments[d].max_output_tokens or 0 for d in route.deployments()), default=0)
            for name, route in self.routes.items()}))
        forms = {form for provider in self.providers.values() for form in provider.redactions}
        forms.update(redaction_forms(key.key.reveal() for key in self.server.keys or () if key.key))
        if self.state.redis is not None and self.state.redis.url_password:
            forms.update(redaction_forms([self.state.redis.url_password]))
        object.__setattr__(self, "redactions", tuple(sorted(forms, key=len, reverse=True)))


def plan_ids(routes: Mapping[str, Route], deployments: Mapping[str, Deployment]) -> Mapping[str, str]:
    """Each route's plan as 16 hex digits of SHA-256: each tier's strategy, and each candidate's
    weight and what answers for it: its deployment's identity (provider type, base_url, upstream
    model, credentials) and its provider's type-specific options (a mock's `reply` is its answer).

    A reload keeps the cached answers of an alias whose plan id did not change. Names are left
    out: renaming a model changes no answer, while the same name pointed at another upstream
    model or endpoint does. Plans share their tiers, so each tier is written once however many
    routes hold it.
    """
    written: dict[int, bytes] = {}  # by id(): tiers are shared objects, alive through this call
    ids = {}
    for name, route in routes.items():
        digest = hashlib.sha256()
        for tier in route.tiers:
            text = written.get(id(tier))
            if text is None:
                # repr() escapes newlines, so one ends each tier unambiguously
                text = repr((tier.strategy, tuple((answerer(deployments[c.deployment]), c.weight)
                                                  for c in tier.candidates))).encode() + b"\n"
                written[id(tier)] = text
            digest.update(text)
        ids[name] = digest.hexdigest()[:16]
    return MappingProxyType(ids)


def answerer(deployment: Deployment) -> tuple:
    """What answers for a candidate in a plan id: the upstream, and the options that shape it."""
    options = tuple(sorted((key, repr(value)) for key, value in deployment.provider.options.items()))
    return deployment.identity, options
