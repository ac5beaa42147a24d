"""A small OpenTelemetry collector on 127.0.0.1: OTLP/HTTP's `POST /v1/traces`, each body an
`ExportTraceServiceRequest` in protobuf (gzip'd when Content-Encoding says so), decoded with
`opentelemetry-proto` and kept as plain `Span`s; answered, as a collector does, with an
`ExportTraceServiceResponse`.

`hold()` makes every export wait until `release()` (a collector that is slow or stuck), each
wait bounded by `HOLD_BOUND` so no test can hang on it.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

HOLD_BOUND = 20.0  # seconds a held export waits at most
SERVER, CLIENT = 2, 3  # Span.SpanKind: SPAN_KIND_SERVER, SPAN_KIND_CLIENT
STATUS_ERROR = 2  # Status.StatusCode: STATUS_CODE_ERROR


def plain(value: AnyValue):
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root span
    attributes: dict
    status: int
    resource: dict
    start: int  # ns since the epoch
    end: int


class Collector:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0  # export requests received
        self.held = 0  # export requests waiting now
        self.content_types: set[str] = set()
        self._release = asyncio.Event()
        self._release.set()
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.traces)
        self.url = ""

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        self.content_types.add(request.content_type)
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if not self._release.is_set():
            self.held += 1
            try:
                await asyncio.wait_for(self._release.wait(), HOLD_BOUND)
            finally:
                self.held -= 1
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Span(
                        span.name, span.kind, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        {a.key: plain(a.value) for a in span.attributes}, span.status.code, resource,
                        span.start_time_unix_nano, span.end_time_unix_nano))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def of_kind(self, kind: int) -> list[Span]:
        return [span for span in self.spans if span.kind == kind]
