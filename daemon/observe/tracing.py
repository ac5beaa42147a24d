"""OpenTelemetry traces over OTLP/HTTP, for `telemetry:`: a server span per `/v1` request and a
client span per upstream attempt, with the GenAI semantic-convention attributes.

OpenTelemetry is imported only when a `Tracing` is built, so a daemon without `telemetry:`
never loads it (it is the optional extra `gatewayd[otel]`). The official SDK does the work:
a `TracerProvider` with a parent-based ratio sampler, W3C trace context read from the client's
`traceparent` and written for each attempt's upstream request (`propagate` hands it to the
adapters, see adapters/base.py), and a `BatchSpanProcessor` whose worker thread exports to the
collector with the official OTLP/HTTP exporter. A request only hands its ended spans to that
queue: a collector that is down or slow costs it nothing. The queue is bounded; a span that
finds it full is dropped and counted (`gatewayd_trace_spans_dropped_total`).
"""

from __future__ import annotations

import threading
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    from gatewayd.daemon.core.graph import Deployment, TelemetrySettings
    from gatewayd.daemon.observe.accesslog import AccessRecord
    from gatewayd.daemon.observe.requests import Attempt, Trail

EXPORT_TIMEOUT = 5.0  # seconds one export to the collector may take, its retries included
EXPORT_EVERY_MS = 500  # how long an ended span waits at most for its batch to leave
BATCH = 512  # spans in one export request
CLOSE_WAIT = 2.0  # seconds the last spans may take to leave at exit, or when telemetry changes
# `gen_ai.provider.name` as the semantic conventions name the providers; other types by their own name
PROVIDER_NAMES = {"azure-openai": "azure.ai.openai", "bedrock": "aws.bedrock", "gemini": "gcp.gemini"}
OTEL_EXTRA = "telemetry: needs OpenTelemetry, the otel extra: pip install 'gatewayd[otel]'"


class TelemetryUnavailable(Exception):
    """`telemetry:` is configured, and the OpenTelemetry packages are not installed."""


class SpanCounts:
    """Spans handed to export, taken by the collector, refused by it, and dropped at a full
    queue: kept by the runtime across the `Tracing`s that reloads build."""

    __slots__ = ("exported", "failed", "dropped")

    def __init__(self) -> None:
        self.exported = 0
        self.failed = 0
        self.dropped = 0


class SpanCountCollector:
    """/metrics: `gatewayd_trace_spans_{exported,failed,dropped}_total`."""

    def __init__(self, counts: SpanCounts) -> None:
        self.counts = counts

    def collect(self):
        counts = self.counts
        for name, value, what in (("exported", counts.exported, "taken by the collector"),
                                  ("failed", counts.failed, "the collector refused or never received"),
                                  ("dropped", counts.dropped, "dropped at a full export queue")):
            yield CounterMetricFamily(f"gatewayd_trace_spans_{name}", f"Spans {what}", value=value)


class Tracing:
    """One `telemetry:` setting at work: its tracer, its export queue and its counts."""

    def __init__(self, settings: TelemetrySettings, counts: SpanCounts,
                 propagate: Callable[[Mapping[str, str] | None], Any]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise TelemetryUnavailable(f"{OTEL_EXTRA} ({exc.name} is missing)") from None
        try:
            version = metadata.version("gatewayd")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            version = "unknown"
        self.settings = settings
        self.counts = counts
        self.propagate = propagate
        self.server_kind, self.client_kind, self.error = SpanKind.SERVER, SpanKind.CLIENT, StatusCode.ERROR
        self.in_context = set_span_in_context
        self.propagator = TraceContextTextMapPropagator()
        self.offset = time.time_ns() - time.monotonic_ns()  # monotonic to the wall clock, in ns

        class CountingExporter(OTLPSpanExporter):
            """The official exporter, counting what the collector took and what it did not."""

            def export(self, spans):
                result = super().export(spans)
                if result is SpanExportResult.SUCCESS:
                    counts.exported += len(spans)
                else:
                    counts.failed += len(spans)
                taken[0] += len(spans)
                return result

        class BoundedBatch(BatchSpanProcessor):
            """The SDK's batch processor, refusing (and counting) a span that finds `max_queue`
            waiting, so none is dropped uncounted: the queue holds at most what was handed over
            and not yet taken by the worker for export."""

            def on_end(self, span) -> None:
                if not span.context.trace_flags.sampled:
                    return
                if handed[0] - taken[0] >= capacity:
                    counts.dropped += 1
                    return
                handed[0] += 1
                super().on_end(span)

        handed, taken, capacity = [0], [0], settings.max_queue  # taken: by the worker thread alone
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name, "service.version": version}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample)), shutdown_on_exit=False)
        self.provider.add_span_processor(BoundedBatch(
            CountingExporter(endpoint=settings.endpoint, timeout=EXPORT_TIMEOUT), max_queue_size=capacity,
            schedule_delay_millis=EXPORT_EVERY_MS, max_export_batch_size=min(BATCH, capacity)))
        self.tracer = self.provider.get_tracer("gatewayd", version)

    def ns(self, monotonic: float) -> int:
        return int(monotonic * 1e9) + self.offset

    def begin(self, started: float, headers, operation: str) -> RequestSpans:
        """A request's spans: its server span, a child of the client's `traceparent` if it sent one."""
        parent = self.propagator.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span(operation, context=parent, kind=self.server_kind,
                                      start_time=self.ns(started))
        return RequestSpans(self, span, operation)

    def close(self) -> threading.Thread:
        """Stop exporting: the spans waiting get CLOSE_WAIT to leave, in a thread of their own,
        so a collector that does not answer holds up no reload and no exit for longer."""
        thread = threading.Thread(target=self.provider.shutdown, name="gatewayd-trace-close", daemon=True)
        thread.start()
        return thread


class RequestSpans:
    """The spans of one request: the server span, and a client span per attempt."""

    __slots__ = ("tracing", "span", "context", "operation", "trying", "answered")

    def __init__(self, tracing: Tracing, span, operation: str) -> None:
        self.tracing = tracing
        self.span = span
        self.context = tracing.in_context(span)
        self.operation = operation
        self.trying: dict[str, str] = {}  # the attempt's upstream model and provider, as attributes
        self.answered: dict[str, str] | None = None  # the same of the attempt that answered

    def attempt_started(self, noted: Attempt, deployment: Deployment) -> None:
        """A client span for the attempt, and its trace context for the upstream request."""
        tracing = self.tracing
        provider = deployment.provider
        self.trying = {"gen_ai.response.model": deployment.model,
                       "gen_ai.provider.name": PROVIDER_NAMES.get(provider.type, provider.type)}
        span = tracing.tracer.start_span(
            f"{self.operation} {deployment.model}", context=self.context, kind=tracing.client_kind,
            start_time=tracing.ns(noted.began), attributes={
                "gen_ai.operation.name": self.operation, "gen_ai.request.model": deployment.model,
                "gen_ai.provider.name": self.trying["gen_ai.provider.name"],
                "gatewayd.deployment": deployment.name, "server.address": provider.base_url})
        noted.span = span
        carrier: dict[str, str] = {}
        tracing.propagator.inject(carrier, context=tracing.in_context(span))
        tracing.propagate(carrier)

    def attempt_answered(self, noted: Attempt) -> None:
        """The attempt answered: its span ends with the request, which knows the tokens."""
        self.tracing.propagate(None)
        self.answered = self.trying
        noted.span.set_attribute("http.response.status_code", 200)

    def attempt_failed(self, noted: Attempt) -> None:
        tracing = self.tracing
        tracing.propagate(None)
        span = noted.span
        attributes: dict[str, Any] = {"error.type": noted.failure}
        if noted.status is not None:
            attributes["http.response.status_code"] = noted.status
        if noted.then is not None:
            attributes["gatewayd.then"] = noted.then
        span.set_attributes(attributes)
        span.set_status(tracing.error, noted.failure)
        span.end(end_time=tracing.ns(noted.began + noted.duration))

    def finish(self, trail: Trail, record: AccessRecord) -> None:
        """The request ended: the answering attempt's span and the server span end with what
        the request learnt (the model that answered, tokens, the status)."""
        tracing = self.tracing
        end = tracing.ns(trail.began) + int(record.latency_ms * 1e6)
        usage: dict[str, Any] = {}
        if record.prompt_tokens is not None:
            usage["gen_ai.usage.input_tokens"] = record.prompt_tokens
            usage["gen_ai.usage.output_tokens"] = record.completion_tokens or 0
        for noted in trail.attempts:
            span = noted.span
            if span is None or noted.failure is not None:  # ended already, as it failed
                continue
            if noted.duration is None:  # the request was cancelled during this attempt
                span.set_status(tracing.error, "cancelled")
            else:
                span.set_attributes({**usage, "gen_ai.response.model": self.answered["gen_ai.response.model"]})
                if record.error is not None:  # a stream that failed after its first byte
                    span.set_status(tracing.error, "stream_failed")
            span.end(end_time=end)
        span = self.span
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation, "http.request.method": record.method,
            "url.path": record.path, "http.response.status_code": record.status,
            "gatewayd.request_id": record.request_id or "", "gatewayd.attempts": record.attempts,
            "gatewayd.config": record.config or "", **usage}
        if record.model is not None:
            attributes["gen_ai.request.model"] = record.model
            span.update_name(f"{self.operation} {record.model}")
        if self.answered is not None:
            attributes.update(self.answered)
        for name, value in (("gatewayd.deployment", record.deployment), ("gatewayd.key", record.key),
                            ("gatewayd.cache", record.cache), ("gatewayd.format", record.format)):
            if value is not None:
                attributes[name] = value
        if trail.code is not None:
            attributes["error.type"] = trail.code
        span.set_attributes(attributes)
        if record.status >= 500 or (record.status == 200 and record.error is not None):
            span.set_status(tracing.error, trail.code or "stream_failed")
        span.end(end_time=end)
