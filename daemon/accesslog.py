"""One access-log line per request, as text or JSON (`server.log_format`).

Only an app key's name is ever logged, never the key; tokens and cost come
from the upstream's usage and the model's `pricing`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import orjson

log = logging.getLogger("gatewayd.access")


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


def emit(record: AccessRecord, log_format: str) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    if log_format == "json":
        fields = {k: v for k, v in asdict(record).items() if v is not None}
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
        elif name == "error":
            value = '"' + str(value).replace('"', "'") + '"'
        parts.append(f"{name}={value}")
    log.info(" ".join(parts))
