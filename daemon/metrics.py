"""Prometheus metrics (prometheus-client), owned by the app: no global registry.

Label values come from the config (model and deployment names), never from
what a client sent, so cardinality is bounded by the config. Children are
cached per label set: `labels()` is the costly part on the request path.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from gatewayd.daemon.accesslog import AccessRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STATES = ("ok", "cooldown", "half_open", "disabled", "outside_window")


class DeploymentStateCollector:
    """Deployment states read at scrape time, so the request path never updates a gauge.

    Every deployment gets one sample per state, 1 for the state it is in and 0
    for the others, so `gatewayd_deployment_state{state="cooldown"} == 1`
    works as an alert and a graph shows the transitions.
    """

    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self):
        family = GaugeMetricFamily("gatewayd_deployment_state",
                                   "1 for the state each deployment is in, 0 for the others",
                                   labels=["deployment", "state"])
        for deployment, current in self._states():
            for state in STATES:
                family.add_metric([deployment, state], 1.0 if state == current else 0.0)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gatewayd_requests", "Requests answered", ["model", "deployment", "status"], registry=r)
        self.attempts = Counter("gatewayd_upstream_attempts", "Upstream attempts", ["model"], registry=r)
        self.failures = Counter("gatewayd_upstream_failures", "Failed upstream attempts by class",
                                ["deployment", "class"], registry=r)
        self.latency = Histogram("gatewayd_request_duration_seconds", "Request latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("gatewayd_time_to_first_byte_seconds", "Time to the answer's first byte",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("gatewayd_tokens", "Tokens by kind", ["deployment", "kind"], registry=r)
        self.cost = Counter("gatewayd_cost", "Cost from the models' pricing", ["deployment"], registry=r)
        self.fallbacks = Counter("gatewayd_fallbacks", "Times a route left a deployment for the next candidate",
                                 ["model", "deployment"], registry=r)
        self.inflight = Gauge("gatewayd_inflight_requests", "Requests being served", registry=r)
        self.reloads = Counter("gatewayd_reloads", "Reloads by result", ["result", "trigger"], registry=r)
        self.config = Gauge("gatewayd_config_info", "The serving config version", ["version"], registry=r)
        self.last_reload_error = Gauge("gatewayd_last_reload_failed", "1 when the last reload was rejected",
                                       ["error"], registry=r)
        self._children: dict[tuple, tuple] = {}
        self._usage_children: dict[str, tuple] = {}  # by deployment name, a name from the config

    def watch_states(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.registry.register(DeploymentStateCollector(states))

    def watch_inflight(self, count: Callable[[], int]) -> None:
        self.inflight.set_function(count)

    def observe(self, record: AccessRecord) -> None:
        model = record.model if record.deployment is not None or record.status in (200, 429, 503, 504) else None
        model = model or "-"
        key = (model, record.deployment, record.status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # a bound against runaway label sets
                self._children.clear()
            children = self._children[key] = (
                self.requests.labels(model, record.deployment or "-", str(record.status)),
                self.attempts.labels(model), self.latency.labels(model), self.ttfb.labels(model),
            )
        requests, attempts, latency, ttfb = children
        requests.inc()
        if record.attempts:
            attempts.inc(record.attempts)
        latency.observe(record.latency_ms / 1000)
        if record.ttfb_ms is not None:
            ttfb.observe(record.ttfb_ms / 1000)
        if record.deployment and record.prompt_tokens is not None:
            usage = self._usage_children.get(record.deployment)
            if usage is None:
                usage = self._usage_children[record.deployment] = (
                    self.tokens.labels(record.deployment, "prompt"),
                    self.tokens.labels(record.deployment, "completion"),
                    self.cost.labels(record.deployment),
                )
            prompt, completion, cost = usage
            prompt.inc(record.prompt_tokens)
            completion.inc(record.completion_tokens or 0)
            if record.cost:
                cost.inc(record.cost)

    def failure(self, deployment: str, failure_class: str) -> None:
        self.failures.labels(deployment, failure_class).inc()

    def fallback(self, model: str, deployment: str) -> None:
        self.fallbacks.labels(model, deployment).inc()

    def set_config(self, version: str) -> None:
        self.config.clear()
        self.config.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
