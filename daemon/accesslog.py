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


def emit(record: AccessRecord, log_format: str) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    if log_format == "json":
        fields = {k: v for k, v in asdict(record).items() if v is not None}
        for name, limit in CLIPPED.items():
            if isinstance(fields.get(name), str):
                fields[name] = clip(fields[name], limit)
        fields["ts"] = time.time()
        log.info(orjson.dumps(fields).decode())
        return
    log.info(text_line(record))


class BatchingHandler(logging.StreamHandler):
    """Writes log lines in batches: when `BATCH_LINES` wait, or `interval` after the first.

    The access log is a line per request; one write (one syscall) per line would
    cost more than the routing itself. Lines reach the stream within `interval`
    (0.1 s) and are flushed at shutdown. Outside an event loop it writes at once.
    """

    BATCH_LINES = 256

    def __init__(self, stream, interval: float = 0.1) -> None:
        super().__init__(stream)
        self.interval = interval
        self.pending: list[str] = []
        self.timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record))
        except Exception:  # noqa: BLE001 (logging's contract: never raise from emit)
            self.handleError(record)
            return
        if len(self.pending) >= self.BATCH_LINES:
            self.flush()
        elif self.timer is None:
            try:
                self.timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        self.acquire()
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001
            pass
        finally:
            self.release()
