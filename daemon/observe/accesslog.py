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
import threading
import time
from dataclasses import dataclass

import orjson

from gatewayd.daemon.observe.logformat import iso_utc

log = logging.getLogger("gatewayd.access")

MODEL_LIMIT = 256  # longest kept, in characters, of the model a client asked for
ERROR_LIMIT = 2000  # and of an error message, which may quote it


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
    format: str | None = None  # the client's wire format (openai, anthropic, responses), for the API's paths
    cache: str | None = None  # hit, miss or skip, on an alias with a response cache
    request_id: str | None = None  # x-request-id: the client's, or the gateway's own


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit]}...[truncated {len(value) - limit} characters]"


TEXT_VALUES_KEPT = 1024
TEXT_VALUES_UP_TO = 128  # at most MODEL_LIMIT: a remembered model name is one clipping leaves alone


class TextValues:
    """Values as a text line writes them: a bare word when safe, else a JSON string (quotes,
    backslashes, control and non-ASCII escaped), remembered per value.

    The same few model and key names come back on nearly every request, so the checks (and
    json.dumps for the odd one) run once per name, not once per line. Clients choose model
    names, so the memo is bounded: only values up to TEXT_VALUES_UP_TO characters are kept,
    and it is emptied when TEXT_VALUES_KEPT are held. Each AccessLog owns one.
    """

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        known = self.known.get(value)
        if known is not None:
            return known
        if (value and value.isascii() and value.isprintable()
                and " " not in value and '"' not in value and "\\" not in value):
            written = value
        else:
            written = json.dumps(value)
        if type(value) is str and len(value) <= TEXT_VALUES_UP_TO:
            if len(self.known) >= TEXT_VALUES_KEPT:
                self.known.clear()
            self.known[value] = written
        return written


def text_line(r: AccessRecord, values: TextValues) -> str:
    """`METHOD PATH STATUS name=value ...`, every field that is set, in a fixed order.

    Written field by field rather than by reflection: this runs once per request.
    One f-string, each optional field in it either empty or ` name=value`, builds
    the line without intermediate lines; a known model or key name is one dict
    lookup (the memo `values` keeps) without a call. Names of deployments,
    keys and versions come from the config, whose names are plain words; only
    what a client chose goes through `values`, the model clipped first.
    """
    model, deployment, ttfb, prompt, completion, cost, key, config, error, format_, cache, request_id = (
        r.model, r.deployment, r.ttfb_ms, r.prompt_tokens, r.completion_tokens, r.cost, r.key, r.config, r.error,
        r.format, r.cache, r.request_id)
    # a request id is printable ASCII without spaces, quotes or backslashes (daemon/http/requestid.py):
    # it goes in as it is
    known = values.known.get
    return (
        f"{r.method} {r.path} {r.status}"
        f"{'' if model is None else f' model={known(model) or values(clip(model, MODEL_LIMIT))}'}"
        f"{'' if deployment is None else f' deployment={deployment}'}"
        f" attempts={r.attempts} latency_ms={r.latency_ms:.1f}"
        f"{'' if ttfb is None else f' ttfb_ms={ttfb:.1f}'}"
        f"{'' if prompt is None else f' prompt_tokens={prompt}'}"
        f"{'' if completion is None else f' completion_tokens={completion}'}"
        f"{'' if cost is None else f' cost={cost:.6f}'}"
        f"{'' if key is None else f' key={known(key) or values(key)}'}"
        f"{'' if config is None else f' config={config}'}"
        f"{'' if format_ is None else f' format={format_}'}"
        f"{'' if cache is None else f' cache={cache}'}"
        f"{'' if request_id is None else ' request_id='}{request_id or ''}"  # no string of its own: it is on every line
        f"{'' if error is None else f' error={json.dumps(clip(error, ERROR_LIMIT))}'}"
    )


def json_line(r: AccessRecord) -> str:
    """`ts`, `level`, `event` and `msg` as every JSON line of the daemon starts (logformat.py),
    then every field that is set, in declaration order.

    Field by field too: `dataclasses.asdict` deep-copies the record, which cost
    over ten times what the rest of the line does, and a loop of `getattr` over
    the field names twice. Model and error are clipped as in text lines.
    """
    # method, path, status, attempts and latency are always set (none is Optional)
    method, path, status = r.method, r.path, r.status
    fields = {"ts": iso_utc(time.time()), "level": "info", "event": "access", "msg": f"{method} {path} {status}",
              "method": method, "path": path, "status": status}
    if (model := r.model) is not None:
        fields["model"] = clip(model, MODEL_LIMIT) if isinstance(model, str) else model
    if r.deployment is not None:
        fields["deployment"] = r.deployment
    fields["attempts"] = r.attempts
    fields["latency_ms"] = r.latency_ms
    if r.ttfb_ms is not None:
        fields["ttfb_ms"] = r.ttfb_ms
    if r.prompt_tokens is not None:
        fields["prompt_tokens"] = r.prompt_tokens
    if r.completion_tokens is not None:
        fields["completion_tokens"] = r.completion_tokens
    if r.cost is not None:
        fields["cost"] = r.cost
    if r.key is not None:
        fields["key"] = r.key
    if (error := r.error) is not None:
        fields["error"] = clip(error, ERROR_LIMIT) if isinstance(error, str) else error
    if r.config is not None:
        fields["config"] = r.config
    if r.format is not None:
        fields["format"] = r.format
    if r.cache is not None:
        fields["cache"] = r.cache
    if r.request_id is not None:
        fields["request_id"] = r.request_id
    return orjson.dumps(fields).decode()


class AccessLog:
    """Where access lines go, owned by the Runtime.

    By default each line is a record of the `gatewayd.access` logger, so an
    embedding program (or a test) sees them through `logging`. The daemon calls
    `write_to(stderr)`: lines then skip logging's per-record machinery and are
    written in batches — when `BATCH_LINES` wait, or `interval` after the first
    — since one write per line would cost more than routing the request. They
    reach the stream within `interval` (0.1 s); `flush()` runs at shutdown, and
    `flush_before_log_line()` before each log record the daemon writes.
    """

    BATCH_LINES = 256

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._stream = None
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writer: int | None = None  # the thread that emits (the event loop's)
        self._text_values = TextValues()

    def write_to(self, stream) -> None:
        self._stream = stream
        self._writer = threading.get_ident()

    def flush_before_log_line(self) -> None:
        """Write the waiting lines now, so a log line written next follows them on the stream
        as it followed them in time. Only from the emitting thread: `emit` appends without a
        lock, so from another thread (whose records are rare) the log line goes out alone."""
        if self._pending and threading.get_ident() == self._writer:
            self.flush()

    def emit(self, record: AccessRecord, log_format: str) -> None:
        if self._stream is None:
            if log.isEnabledFor(logging.INFO):
                log.info(json_line(record) if log_format == "json" else text_line(record, self._text_values))
            return
        self._pending.append(json_line(record) if log_format == "json" else text_line(record, self._text_values))
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
