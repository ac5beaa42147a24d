"""The compiler: a pure function from a validated document to an immutable `Graph`.

`compile_graph(document, secrets)` does no I/O: secret files have been read by
the loader (daemon/config/load.py) and arrive as `secrets`. It enforces every rule
of the config language that a schema cannot express, reporting each problem at
the node that causes it, and flattens every alias into its plan of tiers.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import ipaddress
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from gatewayd.adapters.base import ProviderType
from gatewayd.adapters.registry import PROVIDER_TYPES, TYPE_KEYS
from gatewayd.daemon.config import schemadoc
from gatewayd.daemon.config.units import seconds, size_bytes
from gatewayd.daemon.config.yamldoc import Document
from gatewayd.daemon.core.graph import (
    AppKey,
    Backoff,
    Budget,
    CacheSettings,
    Candidate,
    CooldownPolicy,
    Deployment,
    Graph,
    Limits,
    Policy,
    Pricing,
    Provider,
    RedisSettings,
    RetryPolicy,
    Route,
    Secret,
    SemanticCache,
    ServerSettings,
    StateSettings,
    TelemetrySettings,
    Tier,
    Timeouts,
    Ucb,
    fingerprint,
)
from gatewayd.daemon.core.problems import ConfigError, Problem, quoted, suggest
from gatewayd.daemon.core.windows import Windows, WindowSyntaxError, load_zone, parse_window

# how a provider type's own keys are read, by what its module declares (adapters/base.TypeKey)
TYPE_KEY_READERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {"text": lambda value: value, "duration": seconds, "number": float})
# a type's own credentials, read into a `Secret` (a `credential` the provider cannot go without, a
# `secret` it may), each given as KEY or as KEY_file (a `file` key, whose content the loader reads)
CREDENTIAL_READS = frozenset({"credential", "secret"})
SECRET_KEYS = frozenset({"api_key"}).union(*(
    (key for key, spec in kind.keys.items() if spec.reads_as in CREDENTIAL_READS) for kind in PROVIDER_TYPES.values()))
POLICY_KEYS = ("timeouts", "retry", "cooldown")
LIMIT_KEYS = ("rpm", "tpm", "concurrency")
HEX_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")
OTEL_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")  # what `telemetry:` needs


class Compiler:
    """Holds the document and the problems found while one graph is compiled."""

    def __init__(self, document: Document, secrets: Mapping[str, str]) -> None:
        self.doc = document
        self.data: dict = document.data
        self.secrets = secrets
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: tuple, message: str, *, key: bool = False) -> None:
        mark = self.doc.key_mark(path) if key else self.doc.mark(path)
        self.errors.append(Problem(self.doc.path, mark.line, mark.column, message))

    def warn(self, path: tuple, message: str) -> None:
        mark = self.doc.key_mark(path)
        self.warnings.append(Problem(self.doc.path, mark.line, mark.column, message))

    # -- policy ---------------------------------------------------------------

    def policy(self, *layers: Mapping[str, Any]) -> Policy:
        """Merge policy keys, later layers winning key by key (defaults < provider < model)."""

        def pick(section: str, key: str, sub: str | None = None) -> Any:
            for layer in reversed(layers):
                value = layer.get(section, {}).get(key)
                if sub is not None:
                    value = value.get(sub) if isinstance(value, dict) else None
                if value is not None:
                    return value
            if sub is None:
                return schemadoc.default(section, key)
            return schemadoc.definition(section)["properties"][key]["properties"][sub]["default"]

        timeouts = Timeouts(*(seconds(pick("timeouts", k)) for k in ("connect", "first_byte", "idle", "total")))
        backoff = Backoff(
            seconds(pick("retry", "backoff", "initial")), seconds(pick("retry", "backoff", "max")),
            float(pick("retry", "backoff", "multiplier")), pick("retry", "backoff", "jitter"),
        )
        statuses: set[int] = set()
        when = pick("retry", "when")
        for item in when:
            text = str(item)
            if text.endswith("xx"):
                first = int(text[0]) * 100
                statuses.update(range(first, first + 100))
            elif text.isdigit():
                statuses.add(int(text))
        retry = RetryPolicy(
            int(pick("retry", "attempts")), backoff, frozenset(statuses),
            "timeout" in when, "connect" in when, seconds(pick("retry", "retry_after_max")),
        )
        cooldown = CooldownPolicy(
            int(pick("cooldown", "failures")), seconds(pick("cooldown", "initial")),
            float(pick("cooldown", "multiplier")), seconds(pick("cooldown", "max")),
        )
        return Policy(timeouts, retry, cooldown)

    # -- sections -------------------------------------------------------------

    def server(self) -> ServerSettings:
        raw = self.data.get("server") or {}

        def get(key: str) -> Any:
            return raw.get(key, schemadoc.default("server", key))

        listen = get("listen")
        keys = None
        auth = raw.get("auth")
        if auth is not None:
            keys_list = []
            seen: dict[str, int] = {}
            for index, entry in enumerate(auth.get("keys", [])):
                path = ("server", "auth", "keys", index)
                if entry["name"] in seen:
                    self.error(path + ("name",), f"app key name '{entry['name']}' is used twice "
                               f"(first at keys[{seen[entry['name']]}])")
                seen[entry["name"]] = index
                key = self.app_key(path, entry)
                if key is not None:
                    keys_list.append(key)
            keys = tuple(keys_list)
        if keys is None and not is_loopback(listen):
            self.error(("server", "listen"), f"listen address {quoted(listen)} is not loopback: "
                       "add server.auth with keys, or listen on 127.0.0.1, [::1] or a unix socket")
        workers = 0 if get("workers") == "auto" else int(get("workers"))
        if workers != 1 and listen.startswith("unix:"):  # SO_REUSEPORT shares TCP ports, not socket paths
            self.error(("server", "workers"), "several workers need a host:port listen address; "
                       f"a unix socket ({quoted(listen)}) is served by one process: use workers: 1")
        return ServerSettings(
            listen=listen, shutdown_grace=seconds(get("shutdown_grace")),
            max_body=size_bytes(get("max_body")), log_format=get("log_format"),
            keys=keys, read_timeout=seconds(get("read_timeout")), metrics=get("metrics"),
            max_upstream_body=size_bytes(get("max_upstream_body")), recent_requests=int(get("recent_requests")),
            workers=workers,
        )

    def app_key(self, path: tuple, entry: Mapping[str, Any]) -> AppKey | None:
        """One `server.auth.keys` entry: exactly one of `key` and `key_sha256`, neither empty."""
        name = entry["name"]
        allow = frozenset(entry["allow"]) if "allow" in entry else None
        admin = entry.get("role", schemadoc.default("appKey", "role")) == "admin"
        admission = self.admission(path, entry)
        if "key" in entry and "key_sha256" in entry:
            self.error(path + ("key_sha256",), f"app key '{name}': give either key or key_sha256, not both",
                       key=True)
            return None
        if "key_sha256" in entry:
            digest = entry["key_sha256"]
            if not HEX_SHA256.fullmatch(digest):
                # the value is not shown: a key pasted here by mistake must not reach a log
                self.error(path + ("key_sha256",), f"app key '{name}': key_sha256 must be 64 hex digits, "
                           "the SHA-256 of the key (`gatewayd hash-key` prints it)")
                return None
            return AppKey.from_sha256(name, digest, allow, admin, **admission)
        if "key" not in entry:
            self.error(path, f"app key '{name}' needs key (the key itself) or key_sha256 (its SHA-256, "
                       "from `gatewayd hash-key`)")
            return None
        if not entry["key"]:
            self.error(path + ("key",), f"app key '{name}' is empty; set the variable it names or remove the entry")
            return None
        return AppKey.plain(name, Secret(entry["key"]), allow, admin, **admission)

    def admission(self, path: tuple, entry: Mapping[str, Any]) -> dict[str, Any]:
        """An app key's `limits`, `budget` and `priority`, as AppKey's keyword arguments."""
        budget = None
        if "budget" in entry:
            raw = entry["budget"]
            budget = Budget(float(raw["usd"]), raw.get("period", schemadoc.default("appKey", "budget", "period")))
        return {"limits": self.limits(path, entry, f"app key '{entry['name']}'"), "budget": budget,
                "priority": entry.get("priority", schemadoc.default("appKey", "priority"))}

    def limits(self, path: tuple, raw: Mapping[str, Any], owner: str) -> Limits | None:
        """`limits:` of an app key or a model; one that names no limit is a mistake, not "no limits"."""
        if "limits" not in raw:
            return None
        given = raw["limits"]
        if not any(key in given for key in LIMIT_KEYS):
            self.error(path + ("limits",), f"limits of {owner} is empty: give rpm, tpm or concurrency, "
                       "or remove limits")
            return None
        # int(): the schema's integer admits 5.0
        return Limits(**{key: int(given[key]) for key in LIMIT_KEYS if key in given})

    def providers(self, max_upstream_body: int) -> dict[str, Provider]:
        providers = {}
        for name, raw in (self.data.get("providers") or {}).items():
            path = ("providers", name)
            type_ = raw["type"]
            for key, types in TYPE_KEYS.items():
                if key in raw and type_ not in types:
                    self.error(path + (key,), f"key '{key}' applies only to {' and '.join(types)} providers, "
                               f"and '{name}' is {type_}", key=True)
            if "api_key" in raw and "api_key_file" in raw:
                self.error(path + ("api_key_file",), "give either api_key or api_key_file, not both", key=True)
            kind = PROVIDER_TYPES[type_]
            options = self.type_options(kind, raw)
            # a type's default base_url may name its own keys in braces (bedrock's {region})
            base_url = raw.get("base_url") or (kind.base_url and kind.base_url.format_map(options))
            if base_url is None:
                example = f", e.g. {kind.base_url_example}" if kind.base_url_example else ""
                self.error(path, f"provider '{name}' ({type_}) needs base_url{example}", key=True)
                continue
            key: Secret | None = None
            disabled = None
            if "api_key" in raw or "api_key_file" in raw:
                value = self.secrets.get(name, raw.get("api_key", ""))
                if value:
                    key = Secret(value)
                else:
                    source = "api_key_file" if "api_key_file" in raw else "api_key"
                    disabled = f"its {source} resolved to an empty value"
            credentials, missing = self.type_credentials(path, name, kind, raw)
            options.update(credentials)
            disabled = disabled or missing
            if disabled:
                self.warn(path, f"provider '{name}' is disabled: {disabled}; "
                          "its models are left out of every plan")
            base_url, headers = with_userinfo_as_header(base_url, raw.get("headers") or {})
            providers[name] = Provider(
                name=name, type=type_, base_url=base_url.rstrip("/"), api_key=key,
                headers=tuple(sorted(headers.items())),
                max_connections=raw.get("max_connections", schemadoc.default("provider", "max_connections")),
                options=MappingProxyType(options), disabled=disabled, max_upstream_body=max_upstream_body,
            )
        return providers

    def type_options(self, kind: ProviderType, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A provider's `options`: the keys only its type takes, read as its module declares."""
        options = {}
        for key, spec in kind.keys.items():
            if spec.reads_as not in TYPE_KEY_READERS:
                continue  # a credential or its file: `type_credentials` reads them
            if key in raw:
                value = raw[key]
            elif spec.schema_default:
                value = schemadoc.default("provider", key)
            else:
                continue  # the adapter has its own default
            options[key] = TYPE_KEY_READERS[spec.reads_as](value)
        return options

    def type_credentials(self, path: tuple, name: str, kind: ProviderType,
                         raw: Mapping[str, Any]) -> tuple[dict[str, Secret], str | None]:
        """A provider's own credentials (its type's `credential` and `secret` keys, each given as
        KEY or read from KEY_file), and why the provider is disabled, if it is: a `credential`
        absent or resolving empty. An empty `secret` is left out."""
        found: dict[str, Secret] = {}
        missing = None
        for key, spec in kind.keys.items():
            if spec.reads_as not in CREDENTIAL_READS:
                continue
            file_key = f"{key}_file"
            if key in raw and file_key in raw:
                self.error(path + (file_key,), f"give either {key} or {file_key}, not both", key=True)
            given = file_key if file_key in raw else key if key in raw else None
            value = self.secrets.get(secret_name(name, key), raw.get(key, "")) if given else ""
            if value:
                found[key] = Secret(value)
            elif spec.reads_as == "credential" and missing is None:
                missing = f"its {given} resolved to an empty value" if given else f"it has no {key}"
        return found, missing

    def zone_name(self) -> str:
        """`defaults.timezone` as written, or the schema's default."""
        return (self.data.get("defaults") or {}).get("timezone", schemadoc.default("defaults", "timezone"))

    def default_zone(self) -> str | None:
        """`defaults.timezone`, checked once whether or not any model has windows or budgets."""
        name = self.zone_name()
        try:
            load_zone(name)
        except WindowSyntaxError as exc:
            self.error(("defaults", "timezone"), str(exc))
            return None
        return name

    def windows(self, path: tuple, raw: Mapping[str, Any], default_zone: str | None) -> Windows | None:
        zone_name = raw.get("timezone") or default_zone
        ok = zone_name is not None  # a bad default zone is reported once, by default_zone()
        if "timezone" in raw:
            try:
                load_zone(zone_name)
            except WindowSyntaxError as exc:
                self.error(path + ("timezone",), str(exc))
                ok = False
        parsed: dict[str, list] = {"only": [], "except": []}
        for part in ("only", "except"):
            for index, text in enumerate(raw.get(part, [])):
                try:
                    parsed[part].append(parse_window(text))
                except WindowSyntaxError as exc:
                    self.error(path + (part, index), str(exc))
                    ok = False
        if not ok:
            return None
        return Windows.build(tuple(parsed["only"]), tuple(parsed["except"]), zone_name)

    def deployments(self, providers: Mapping[str, Provider]) -> dict[str, Deployment]:
        defaults = self.data.get("defaults") or {}
        raw_providers = self.data.get("providers") or {}
        deployments = {}
        default_zone = self.default_zone()
        for name, raw in (self.data.get("models") or {}).items():
            path = ("models", name)
            limits = self.limits(path, raw, f"model '{name}'")
            queue = raw.get("queue") or {}
            queue_wait = seconds(queue.get("max_wait", schemadoc.default("model", "queue", "max_wait")))
            if queue_wait > 0 and (limits is None or limits.concurrency is None):
                # only a deployment at its concurrency queues; at its rpm or tpm it is skipped
                self.warn(path + ("queue", "max_wait"), f"model '{name}': queue.max_wait has no effect "
                          "without limits.concurrency (requests wait only for a free slot)")
            max_output = raw.get("max_output_tokens")
            provider = providers.get(raw["provider"])
            if provider is None:
                if raw["provider"] not in raw_providers:  # else: the provider's own error is reported
                    self.error(path + ("provider",), f"model '{name}' names provider {quoted(raw['provider'])}, "
                               f"which is not defined{suggest(raw['provider'], raw_providers)}")
                continue
            windows = self.windows(path + ("windows",), raw["windows"], default_zone) if "windows" in raw else None
            pricing = None
            if "pricing" in raw:
                pricing = Pricing(float(raw["pricing"].get("input_per_mtok", 0)),
                                  float(raw["pricing"].get("output_per_mtok", 0)))
            deployments[name] = Deployment(
                name=name, provider=provider, model=raw["model"],
                policy=self.policy(defaults, raw_providers[raw["provider"]], raw),
                windows=windows, pricing=pricing, limits=limits, queue_wait=queue_wait,
                max_output_tokens=None if max_output is None else int(max_output),
            )
        return deployments

    def check_aliases(self) -> None:
        models = self.data.get("models") or {}
        aliases = self.data.get("aliases") or {}
        names = list(models) + list(aliases)
        for name, raw in aliases.items():
            path = ("aliases", name)
            if name in models:
                self.error(path, f"'{name}' is both a model and an alias; rename one of them", key=True)
            for index, target in enumerate(raw["targets"]):
                target_name = target if isinstance(target, str) else target["model"]
                tpath = path + ("targets", index) + (() if isinstance(target, str) else ("model",))
                if target_name in aliases and target_name not in models:
                    self.error(tpath, f"target '{target_name}' is an alias; targets name models "
                               "(put aliases in fallbacks)")
                elif target_name not in models:
                    self.error(tpath, f"target {quoted(target_name)} is not a defined model"
                               f"{suggest(target_name, models)}")
            for index, fallback in enumerate(raw.get("fallbacks", [])):
                if fallback not in models and fallback not in aliases:
                    self.error(path + ("fallbacks", index), f"fallback {quoted(fallback)} is neither a model "
                               f"nor an alias{suggest(fallback, names)}")
            strategy = raw.get("strategy", schemadoc.default("alias", "strategy"))
            if "ucb" in raw and strategy != "ucb":
                self.error(path + ("ucb",), f"ucb settings apply only with strategy: ucb (alias '{name}' "
                           f"has strategy: {strategy})", key=True)
        self.check_cycles(aliases)

    def check_cycles(self, aliases: Mapping[str, Any]) -> None:
        """Report each fallback cycle once, at the fallback entry that closes it.

        Iterative depth-first search: a chain of thousands of aliases must not
        exhaust Python's recursion limit.
        """
        done: set[str] = set()
        reported: set[frozenset[str]] = set()
        for root in aliases:
            if root in done:
                continue
            trail = [root]  # the aliases on the current path
            on_trail = {root}
            cursors = [0]  # next fallback index to look at, per trail entry
            while trail:
                name = trail[-1]
                fallbacks = aliases[name].get("fallbacks", [])
                index = cursors[-1]
                if index >= len(fallbacks):
                    done.add(name)
                    on_trail.discard(trail.pop())
                    cursors.pop()
                    continue
                cursors[-1] += 1
                fallback = fallbacks[index]
                if fallback not in aliases or fallback in done:
                    continue
                if fallback in on_trail:
                    cycle = trail[trail.index(fallback):] + [fallback]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        self.error(("aliases", name, "fallbacks", index), f"fallback cycle: {' -> '.join(cycle)}")
                    continue
                trail.append(fallback)
                on_trail.add(fallback)
                cursors.append(0)

    # -- response cache -------------------------------------------------------

    def cache(self) -> CacheSettings | None:
        """`cache:`, with the schema's defaults; None when the document has none."""
        raw = self.data.get("cache")
        if raw is None:
            return None

        def get(*keys: str) -> Any:
            node = raw
            for key in keys[:-1]:
                node = node[key]
            return node.get(keys[-1], schemadoc.default("cache", *keys))

        semantic = None
        if "semantic" in raw:
            semantic = SemanticCache(embeddings=raw["semantic"]["embeddings"],
                                     threshold=float(get("semantic", "threshold")),
                                     max_entries=int(get("semantic", "max_entries")))
        settings = CacheSettings(ttl=seconds(get("ttl")), max_entries=int(get("max_entries")),
                                 max_bytes=size_bytes(get("max_bytes")), scope=get("scope"), semantic=semantic)
        for key, value in (("ttl", settings.ttl), ("max_bytes", settings.max_bytes)):
            if value <= 0:  # a cache that keeps nothing is a mistake, not a way to turn it off
                self.error(("cache", key), f"cache.{key} must be more than 0; to cache nothing, set the "
                           "aliases' cache to off")
        return settings

    def telemetry(self) -> TelemetrySettings | None:
        """`telemetry:`, with the schema's defaults; None when the document has none."""
        raw = self.data.get("telemetry")
        if raw is None:
            return None
        endpoint = raw["otlp_endpoint"].rstrip("/")
        if "@" in urlsplit(endpoint).netloc:
            # the endpoint is shown in logs and status: it must not carry a credential
            self.error(("telemetry", "otlp_endpoint"), "telemetry.otlp_endpoint must not hold a user or "
                       "password; give the collector's address alone")
        if not all(importlib.util.find_spec(name) for name in OTEL_MODULES):
            self.error(("telemetry",), "telemetry needs OpenTelemetry, the otel extra: "
                       "pip install 'gatewayd[otel]'", key=True)
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        return TelemetrySettings(
            endpoint=endpoint,
            service_name=raw.get("service_name", schemadoc.default("telemetry", "service_name")),
            sample=float(raw.get("sample", schemadoc.default("telemetry", "sample"))),
            max_queue=int(raw.get("max_queue", schemadoc.default("telemetry", "max_queue"))))

    def state(self) -> StateSettings:
        """`state:`, with the schema's defaults; a Redis url shown only without its password."""
        raw = self.data.get("state") or {}
        backend = raw.get("backend", schemadoc.default("state", "backend"))
        if backend != "redis":
            return StateSettings(backend)
        redis = raw.get("redis") or {}

        def get(key: str) -> Any:
            return redis.get(key, schemadoc.default("state", "redis", key))

        url = get("url")
        parts = urlsplit(url)
        if redis.get("password_file") and parts.password:
            self.error(("state", "redis", "password_file"), "give Redis's password in the url or in "
                       "password_file, not both", key=True)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return StateSettings(backend, RedisSettings(
            url=Secret(url), address=urlunsplit((parts.scheme, netloc, parts.path, "", "")),
            url_password=unquote(parts.password) if parts.password else None,
            password_file=redis.get("password_file"), prefix=get("prefix"), timeout=seconds(get("timeout"))))

    def written(self, *path: str) -> bool:
        """Whether the file has the key at `path`, even where the schema refused its value (the
        compiler then sees the document without it, and must not report it missing too)."""
        node = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return tuple(path) in self.doc.key_marks
            node = node[key]
        return True

    def check_cache(self) -> None:
        """Aliases ask only for the cache the document configures; the embeddings route exists
        and is not cached itself (its answers are what a semantic lookup compares)."""
        models = self.data.get("models") or {}
        aliases = self.data.get("aliases") or {}
        has_cache, has_semantic = self.written("cache"), self.written("cache", "semantic")
        for name, raw in aliases.items():
            mode = cache_mode(raw)
            path = ("aliases", name, "cache")
            if mode != "off" and not has_cache:
                self.error(path, f"alias '{name}' has cache: {mode}, but there is no cache section: "
                           "add a top-level `cache:` section (every key of it has a default)")
            elif mode == "semantic" and not has_semantic:
                self.error(path, f"alias '{name}' has cache: semantic, but cache.semantic is not set: "
                           "add cache.semantic with the embeddings route to use, or use cache: exact")
        semantic = (self.data.get("cache") or {}).get("semantic")
        if semantic is None:
            return
        embeddings = semantic["embeddings"]
        path = ("cache", "semantic", "embeddings")
        if embeddings not in models and embeddings not in aliases:
            self.error(path, f"cache.semantic.embeddings {quoted(embeddings)} is neither a model nor an alias"
                       f"{suggest(embeddings, list(models) + list(aliases))}")
        elif embeddings in aliases and (mode := cache_mode(aliases[embeddings])) != "off":
            self.error(path, f"cache.semantic.embeddings names alias '{embeddings}', which has cache: {mode}; "
                       "the route that embeds requests must not be cached (set its cache to off)")

    # -- plans ----------------------------------------------------------------

    def routes(self, deployments: Mapping[str, Deployment]) -> dict[str, Route]:
        aliases = self.data.get("aliases") or {}
        routes: dict[str, Route] = {}
        for name in deployments:
            routes[name] = Route(name, "model", (Tier("ordered", (Candidate(name),), name),))
        plans = self.plans(aliases, deployments)
        for name in aliases:  # in the order the file lists them
            if name in plans:
                routes[name] = Route(name, "alias", plans[name], cache_mode(aliases[name]))
        for name, route in routes.items():
            # a model's own disabled provider is already reported; an alias left empty is news
            if route.kind == "alias" and all(deployments[d].disabled for d in route.deployments()):
                self.warn(("aliases", name), f"alias '{name}' has no usable deployment "
                          "(every provider it uses is disabled)")
        return routes

    def plans(self, aliases: Mapping[str, Any], deployments: Mapping) -> dict[str, tuple[Tier, ...]]:
        """Each alias flattened into tiers: its targets, then each fallback expanded in order.

        Aliases are expanded children first, each once, and each plan is
        deduplicated as it is built, so shared fallbacks cost linear time and a
        long chain needs no recursion. The alias graph is acyclic here.
        """
        plans: dict[str, tuple[Tier, ...]] = {}
        for root in aliases:
            if root in deployments:
                continue  # reported: a name is both a model and an alias
            stack = [root]
            while stack:
                name = stack[-1]
                if name in plans:
                    stack.pop()
                    continue
                pending = [f for f in aliases[name].get("fallbacks", [])
                           if f in aliases and f not in deployments and f not in plans]
                if pending:
                    stack.extend(pending)
                    continue
                stack.pop()
                raw = aliases[name]
                candidates = []
                for target in raw["targets"]:
                    target_name, weight = ((target, 1.0) if isinstance(target, str)
                                           else (target["model"], float(target.get("weight", 1))))
                    if target_name in deployments:
                        candidates.append(Candidate(target_name, weight))
                strategy = raw.get("strategy", schemadoc.default("alias", "strategy"))
                tiers = [Tier(strategy, tuple(candidates), name, ucb_settings(raw) if strategy == "ucb" else None)]
                for fallback in raw.get("fallbacks", []):
                    if fallback in deployments:
                        tiers.append(Tier("ordered", (Candidate(fallback),), fallback))
                    elif fallback in plans:
                        tiers.extend(plans[fallback])
                plans[name] = dedup(tiers)
        return plans


def cache_mode(alias: Mapping[str, Any]) -> str:
    """An alias's `cache`: YAML 1.1 reads a bare `off` as false, which the schema admits as off."""
    mode = alias.get("cache", schemadoc.default("alias", "cache"))
    return "off" if mode is False else mode


def ucb_settings(alias: Mapping[str, Any]) -> Ucb:
    """An alias's `ucb:`, with the schema's defaults."""
    raw = alias.get("ucb") or {}
    return Ucb(float(raw.get("exploration", schemadoc.default("ucb", "exploration"))),
               raw.get("reward", schemadoc.default("ucb", "reward")))


def dedup(tiers: list[Tier]) -> tuple[Tier, ...]:
    """Keep each deployment at its first position; drop tiers left empty."""
    seen: set[str] = set()
    result = []
    for tier in tiers:
        kept = []
        for candidate in tier.candidates:
            if candidate.deployment not in seen:
                seen.add(candidate.deployment)
                kept.append(candidate)
        if len(kept) == len(tier.candidates):
            result.append(tier)  # unchanged: share it with the plan it came from (memory stays linear)
        elif kept:
            result.append(Tier(tier.strategy, tuple(kept), tier.origin, tier.ucb))
    return tuple(result)


def with_userinfo_as_header(base_url: str, headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """A base_url's `user:password@` moved into the `Authorization: Basic` header it stands for
    (unless the headers already set one), so that the URL a graph shows, logs and keys its
    pools by holds no credential, and the header is redacted like every other."""
    headers = dict(headers)
    try:
        parts = urlsplit(base_url)
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:  # not a URL the adapter could use either; the schema says what is wrong
        return base_url, headers
    if not has_userinfo:
        return base_url, headers
    if not any(name.lower() == "authorization" for name in headers):
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), headers


def is_loopback(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_name(provider: str, key: str) -> str:
    """What the content of a provider's secret file is known by among the loader's `secrets`:
    an api_key_file's by the provider's name, a type's own KEY_file's as `provider#KEY` (no
    name holds a '#')."""
    return provider if key == "api_key" else f"{provider}#{key}"


def version_id(data: Mapping[str, Any], secrets: Mapping[str, str]) -> str:
    """A short id of the resolved configuration; secrets enter only as fingerprints."""
    redacted = orjson.loads(orjson.dumps(data))
    for provider in (redacted.get("providers") or {}).values():
        for key in SECRET_KEYS.intersection(provider):
            provider[key] = fingerprint(provider[key])
    for entry in ((redacted.get("server") or {}).get("auth") or {}).get("keys", []):
        if "key" in entry:  # a key_sha256 is no secret: it enters as written
            entry["key"] = fingerprint(entry["key"])
    canonical = orjson.dumps(
        {"config": redacted, "secret_files": {k: fingerprint(v) for k, v in sorted(secrets.items())}},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()[:12]


def compile_graph(document: Document, secrets: Mapping[str, str] | None = None) -> Graph:
    """Compile a schema-valid document; raise ConfigError with every problem found."""
    secrets = secrets or {}
    compiler = Compiler(document, secrets)
    server = compiler.server()
    providers = compiler.providers(server.max_upstream_body)
    deployments = compiler.deployments(providers)
    compiler.check_aliases()
    compiler.check_cache()
    cache = compiler.cache()
    telemetry = compiler.telemetry()
    state = compiler.state()
    if compiler.errors:
        raise ConfigError(sorted(compiler.errors, key=lambda p: (p.line, p.column)))
    routes = compiler.routes(deployments)
    return Graph(
        version=version_id(document.data, secrets),
        source=document.path,
        server=server,
        providers=MappingProxyType(providers),
        deployments=MappingProxyType(deployments),
        routes=MappingProxyType(routes),
        aliases=tuple(name for name, r in routes.items() if r.kind == "alias"),
        default_policy=compiler.policy(document.data.get("defaults") or {}),
        warnings=tuple(str(w) for w in sorted(compiler.warnings, key=lambda p: (p.line, p.column))),
        timezone=compiler.zone_name(),
        cache=cache,
        telemetry=telemetry,
        state=state,
    )
