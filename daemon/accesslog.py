"""One access-log line per request, as text or JSON (`server.log_format`).

Only an app key's name is ever logged, never the key; tokens and cost come
from the upstream's usage and the model's `pricing`.

Values a client chose (the model it asked for, error messages quoting it) are
clipped, and in text lines quoted as JSON strings when they hold anything but
plain printable ASCII, so one request is always exactly one line that no
client can forge or flood.
"""

from __future__ import annotations

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
    parts = [f"{record.method} {record.path} {record.status}"]
    for name in ("model", "deployment", "attempts", "latency_ms", "ttfb_ms", "prompt_tokens",
                 "completion_tokens", "cost", "key", "config", "error"):
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.6f}" if name == "cost" else f"{value:.1f}"
        elif isinstance(value, str):
            value = clip(value, CLIPPED.get(name, 256))
            value = json.dumps(value) if name == "error" else text_value(value)
        parts.append(f"{name}={value}")
    log.info(" ".join(parts))
