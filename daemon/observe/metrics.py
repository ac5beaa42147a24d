"""Prometheus metrics, owned by the app: no global registry.

Label values come from the config (model and deployment names), never from
what a client sent, so cardinality is bounded by the config.

The per-request series (requests, attempts, latency, time to first byte,
tokens, cost) are plain Python numbers that `observe` adds to, and
collectors turn them into metric families at scrape time: the daemon is
single-threaded asyncio, so prometheus-client's per-sample locks and its
bucket walk in Python were pure cost on every request. prometheus-client
still renders the text, and still holds the rarely-touched metrics
(failures, fallbacks, reloads, config, inflight).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from itertools import accumulate
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import metrics as client_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gatewayd.daemon.observe.accesslog import AccessRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LE = tuple(floatToGoString(bound) for bound in LATENCY_BUCKETS) + ("+Inf",)  # `le` as prometheus-client writes it
STATES = ("ok", "cooldown", "half_open", "limited", "disabled", "outside_window")
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def with_created() -> bool:
    """Whether counters and histograms carry `_created`, as prometheus-client decides for its own
    (`PROMETHEUS_DISABLE_CREATED_SERIES`, `disable_created_metrics()`), so every family agrees.

    The per-request series keep their `_created` samples: it costs one `time.time()` per new
    label set, not per request, and /metrics stays what it was.
    """
    return getattr(client_metrics, "_use_created", True)


class Buckets:
    """One histogram series: a count per bucket (not cumulative, the last one is +Inf) and the sum.

    `bisect_left` finds the first bound >= the value, the bucket prometheus-client's
    `Histogram.observe` counts it in, in C rather than a loop in Python.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(LE)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        return list(zip(LE, accumulate(self.counts), strict=True))


class RequestSeries:
    """`gatewayd_requests_total` for one (model, deployment, status, client format)."""

    __slots__ = ("count", "created")

    def __init__(self) -> None:
        self.count = 0.0
        self.created = time.time()


class ModelSeries:
    """The series labelled by model alone: attempts and the two latency histograms."""

    __slots__ = ("attempts", "latency", "ttfb", "created")

    def __init__(self) -> None:
        self.attempts = 0.0
        self.latency = Buckets()
        self.ttfb = Buckets()
        self.created = time.time()


class UsageSeries:
    """Tokens and cost of one deployment."""

    __slots__ = ("prompt", "completion", "cost", "created")

    def __init__(self) -> None:
        self.prompt = self.completion = self.cost = 0.0
        self.created = time.time()


class Family:
    """A collector for one metric family, so each takes its place in the registry's order."""

    def __init__(self, build: Callable[[], Metric]) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        yield self._build()


def counter(name: str, documentation: str, labels: list[str],
            series: Iterable[tuple[tuple[str, ...], float, float]]) -> Metric:
    """Samples as prometheus-client's `Counter` gives them: `_total`, then `_created` when it is on."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    created = with_created()
    for values, total, since in series:
        family.add_metric(values, total, since if created else None)
    return family


def histogram(name: str, documentation: str, series: Iterable[tuple[str, Buckets, float]]) -> Metric:
    """Samples as prometheus-client's `Histogram` gives them: buckets, `_count`, `_sum`, then `_created`."""
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    created = with_created()
    for model, buckets, since in series:
        family.add_metric([model], buckets.cumulative(), buckets.sum)
        if created:
            family.samples.append(Sample(name + "_created", {"model": model}, since, None))
    return family


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


class QueueCollector:
    """Requests waiting in each deployment's queue, read at scrape time."""

    def __init__(self, lengths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._lengths = lengths

    def collect(self):
        family = GaugeMetricFamily("gatewayd_queue_length",
                                   "Requests waiting for a slot at a deployment at its concurrency limit",
                                   labels=["deployment"])
        for deployment, length in self._lengths():
            family.add_metric([deployment], float(length))
        yield family


class CacheCollector:
    """The response cache's lookups, evictions and fill, read at scrape time. `cache` has
    `counts` (route name -> hits, misses, skips) and `store` (None when no cache is configured)."""

    def __init__(self, cache) -> None:
        self._cache = cache

    def collect(self):
        lookups = CounterMetricFamily("gatewayd_cache_lookups", "Response cache lookups by alias and result "
                                      "(hit, miss, skip)", labels=["alias", "result"])
        for alias, counts in self._cache.counts.items():
            for result, value in (("hit", counts.hits), ("miss", counts.misses), ("skip", counts.skips)):
                lookups.add_metric([alias, result], float(value))
        yield lookups
        store = self._cache.store
        evictions = CounterMetricFamily("gatewayd_cache_evictions", "Answers the response cache dropped to keep "
                                        "within its bounds")
        evictions.add_metric([], float(store.evictions if store is not None else 0))
        yield evictions
        entries = GaugeMetricFamily("gatewayd_cache_entries", "Answers in the response cache")
        entries.add_metric([], float(store.entries if store is not None else 0))
        yield entries
        size = GaugeMetricFamily("gatewayd_cache_bytes", "Bytes of the answers in the response cache")
        size.add_metric([], float(store.bytes if store is not None else 0))
        yield size


def reload_counter(registry: CollectorRegistry) -> Counter:
    """Reloads by result and trigger: the reloading process's (the supervisor's, with several workers)."""
    return Counter("gatewayd_reloads", "Reloads by result", ["result", "trigger"], registry=registry)


def reload_failed_gauge(registry: CollectorRegistry) -> Gauge:
    return Gauge("gatewayd_last_reload_failed", "1 when the last reload was rejected", ["error"], registry=registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the per-request series by their label values, never dropped (a counter that vanished would reset)
        self._requests: dict[tuple[str, str, str, str], RequestSeries] = {}
        self._models: dict[str, ModelSeries] = {}
        self._usage: dict[str, UsageSeries] = {}  # by deployment name, a name from the config
        # registered in this order, the order /metrics lists them in
        r.register(Family(self._requests_family))
        r.register(Family(self._attempts_family))
        self.failures = Counter("gatewayd_upstream_failures", "Failed upstream attempts by class",
                                ["deployment", "class"], registry=r)
        r.register(Family(self._latency_family))
        r.register(Family(self._ttfb_family))
        r.register(Family(self._tokens_family))
        r.register(Family(self._cost_family))
        self.fallbacks = Counter("gatewayd_fallbacks", "Times a route left a deployment for the next candidate",
                                 ["model", "deployment"], registry=r)
        self.rejections = Counter("gatewayd_admission_rejected", "Requests refused at a limit, by reason "
                                  "(key_rpm, key_tpm, key_concurrency, budget, deployment_rpm, deployment_tpm, "
                                  "deployment_concurrency)", ["reason"], registry=r)
        self.queue_waits = Histogram("gatewayd_queue_wait_seconds", "Time requests waited in a deployment's "
                                     "queue, by whether a slot came", ["deployment", "result"],
                                     buckets=QUEUE_BUCKETS, registry=r)
        self.inflight = Gauge("gatewayd_inflight_requests", "Requests being served", registry=r)
        self.reloads = reload_counter(r)
        self.config = Gauge("gatewayd_config_info", "The serving config version", ["version"], registry=r)
        self.last_reload_error = reload_failed_gauge(r)
        # process_* (CPU, memory, file descriptors, start time) from /proc, read at scrape time; where
        # /proc/stat is hidden (systemd's ProcSubset=pid) the collector yields nothing
        ProcessCollector(registry=r)

    def watch_states(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.registry.register(DeploymentStateCollector(states))

    def watch_cache(self, cache) -> None:
        self.registry.register(CacheCollector(cache))

    def watch_queues(self, lengths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.registry.register(QueueCollector(lengths))

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def queue_wait(self, deployment: str, waited: float, admitted: bool) -> None:
        self.queue_waits.labels(deployment, "admitted" if admitted else "timeout").observe(waited)

    def watch_inflight(self, count: Callable[[], int]) -> None:
        self.inflight.set_function(count)

    def observe(self, record: AccessRecord) -> None:
        model = record.model if record.deployment is not None or record.status in (200, 429, 503, 504) else None
        model = model or "-"
        labels = (model, record.deployment or "-", str(record.status), record.format or "-")
        requests = self._requests.get(labels)
        if requests is None:
            requests = self._requests[labels] = RequestSeries()
        per_model = self._models.get(model)
        if per_model is None:
            per_model = self._models[model] = ModelSeries()
        requests.count += 1
        if record.attempts:
            per_model.attempts += record.attempts
        per_model.latency.observe(record.latency_ms / 1000)
        if record.ttfb_ms is not None:
            per_model.ttfb.observe(record.ttfb_ms / 1000)
        if record.deployment and record.prompt_tokens is not None:
            self._count_usage(record.deployment, record.prompt_tokens, record.completion_tokens or 0, record.cost)

    def _count_usage(self, deployment: str, prompt: int, completion: int, cost: float | None) -> None:
        """Tokens and cost. A negative amount (only a misbehaving upstream's usage has one) is not
        counted: a counter never goes down."""
        usage = self._usage.get(deployment)
        if usage is None:
            usage = self._usage[deployment] = UsageSeries()
        if prompt >= 0:
            usage.prompt += prompt
        if completion >= 0:
            usage.completion += completion
        if cost is not None and cost > 0:
            usage.cost += cost

    def failure(self, deployment: str, failure_class: str) -> None:
        self.failures.labels(deployment, failure_class).inc()

    def fallback(self, model: str, deployment: str) -> None:
        self.fallbacks.labels(model, deployment).inc()

    def set_config(self, version: str) -> None:
        self.config.clear()
        self.config.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _requests_family(self) -> Metric:
        return counter("gatewayd_requests", "Requests answered", ["model", "deployment", "status", "format"],
                       ((labels, series.count, series.created) for labels, series in self._requests.items()))

    def _attempts_family(self) -> Metric:
        return counter("gatewayd_upstream_attempts", "Upstream attempts", ["model"],
                       (((model,), series.attempts, series.created) for model, series in self._models.items()))

    def _latency_family(self) -> Metric:
        return histogram("gatewayd_request_duration_seconds", "Request latency",
                         ((model, series.latency, series.created) for model, series in self._models.items()))

    def _ttfb_family(self) -> Metric:
        return histogram("gatewayd_time_to_first_byte_seconds", "Time to the answer's first byte",
                         ((model, series.ttfb, series.created) for model, series in self._models.items()))

    def _tokens_family(self) -> Metric:
        return counter("gatewayd_tokens", "Tokens by kind", ["deployment", "kind"],
                       (sample for deployment, usage in self._usage.items()
                        for sample in (((deployment, "prompt"), usage.prompt, usage.created),
                                       ((deployment, "completion"), usage.completion, usage.created))))

    def _cost_family(self) -> Metric:
        return counter("gatewayd_cost", "Cost from the models' pricing", ["deployment"],
                       (((deployment,), usage.cost, usage.created) for deployment, usage in self._usage.items()))
