"""One access-log line per request, as text or JSON (`server.log_format`).

Only an app key's name is ever logged, never the key; tokens and cost come
from the upstream's usage and the model's `pricing`.

Values a client chose (the model it asked for, error messages quoting it) are
clipped, and in text lines quoted as JSON strings when they hold anything but
plain printable ASCII, so one request is always exactly one line that no
client can forge or flood.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass

import orjson

log = logging.getLogger("gatewayd.access")

CLIPPED = {"model": 256, "error": 2000}  # longest kept, in characters, of fields a client can fill


@dataclass(slots=True)
class AccessRecord:
    method: str
    path: str
    status: int = 0
    model: str | None = None  # what the client asked for
    deployment: str | None = None  # what answered
    attempts: int = 0
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    key: str | None = None  # the app key's name
    error: str | None = None
    config: str | None = None


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit]}...[truncated {len(value) - limit} characters]"


def text_value(value: str) -> str:
    """A bare word when safe, else a JSON string (quotes, backslashes, control and non-ASCII escaped)."""
    if value and value.isascii() and value.isprintable() and not any(c in value for c in ' "\\'):
        return value
    return json.dumps(value)


def text_line(r: AccessRecord) -> str:
    """`METHOD PATH STATUS name=value ...`, every field that is set, in a fixed order.

    Written field by field rather than by reflection: this runs once per request.
    Names of deployments, keys and versions come from the config, whose names are
    plain words; only what a client chose goes through `text_value`.
    """
    line = f"{r.method} {r.path} {r.status}"
    if r.model is not None:
        line += f" model={text_value(clip(r.model, CLIPPED['model']))}"
    if r.deployment is not None:
        line += f" deployment={r.deployment}"
    line += f" attempts={r.attempts} latency_ms={r.latency_ms:.1f}"
    if r.ttfb_ms is not None:
        line += f" ttfb_ms={r.ttfb_ms:.1f}"
    if r.prompt_tokens is not None:
        line += f" prompt_tokens={r.prompt_tokens}"
    if r.completion_tokens is not None:
        line += f" completion_tokens={r.completion_tokens}"
    if r.cost is not None:
        line += f" cost={r.cost:.6f}"
    if r.key is not None:
        line += f" key={text_value(r.key)}"
    if r.config is not None:
        line += f" config={r.config}"
    if r.error is not None:
        line += f" error={json.dumps(clip(r.error, CLIPPED['error']))}"
    return line


def json_line(record: AccessRecord) -> str:
    fields = {k: v for k, v in asdict(record).items() if v is not None}
    for name, limit in CLIPPED.items():
        if isinstance(fields.get(name), str):
            fields[name] = clip(fields[name], limit)
    fields["ts"] = time.time()
    return orjson.dumps(fields).decode()


class AccessLog:
    """Where access lines go, owned by the Runtime.

    By default each line is a record of the `gatewayd.access` logger, so an
    embedding program (or a test) sees them through `logging`. The daemon calls
    `write_to(stderr)`: lines then skip logging's per-record machinery and are
    written in batches — when `BATCH_LINES` wait, or `interval` after the first
    — since one write per line would cost more than routing the request. They
    reach the stream within `interval` (0.1 s); `flush()` runs at shutdown.
    """

    BATCH_LINES = 256

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._stream = None
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write_to(self, stream) -> None:
        self._stream = stream

    def emit(self, record: AccessRecord, log_format: str) -> None:
        if self._stream is None:
            if log.isEnabledFor(logging.INFO):
                log.info(json_line(record) if log_format == "json" else text_line(record))
            return
        self._pending.append(json_line(record) if log_format == "json" else text_line(record))
        if len(self._pending) >= self.BATCH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._stream is None:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break serving
            pass
