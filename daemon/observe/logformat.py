"""How the daemon's lines look on stderr: text or JSON, as `server.log_format` says.

Once a config is loaded, every line the daemon writes follows the serving
graph's `server.log_format`, read again for each line, so a reload that changes
it switches the very next line: log records through `LineHandler` here, access
lines through `AccessLog` (accesslog.py), which takes its timestamps from here.

A JSON line is one object:

    {"ts": "2026-11-22T03:00:34.120Z", "level": "info", "event": "start", "msg": "gatewayd serving on …", …}

`ts` is ISO 8601 in UTC to the millisecond, `level` the lower-case level name,
`event` a stable name that call sites pass as `extra={"event": "…"}` (`log`
when a record has none), `msg` the message as text lines show it; the record's
other `extra` fields follow, and `logger` names a logger other than gatewayd's
(aiohttp, asyncio). An exception logged with it is the field `exc`, its
traceback as one string, never lines of its own.

A text line is the message alone, a traceback on the lines after it.

Lines from before a config is loaded (a failed first start's errors) are text:
no format has been chosen yet.

Ordering: access lines wait in a batch (up to 0.1 s) while log records are
written at once, so before it writes, `LineHandler` has the waiting access lines
written first (`before_write`): the stream keeps the order things happened in.
Each line, or batch of whole lines, is one `write` call on the one stderr
object, whose buffered writer holds its lock for the whole call: no line is ever
split or mixed with another.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Callable, TextIO

import orjson

DEFAULT_EVENT = "log"
OWN_LOGGER = "gatewayd"

# What every LogRecord carries; anything else on a record came in through `extra=`.
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}
LEADING_FIELDS = ("ts", "level", "event", "msg")
MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


@functools.lru_cache(maxsize=4)
def utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_utc(seconds: float) -> str:
    """`seconds` since the epoch as ISO 8601 UTC with milliseconds: `2026-11-22T03:00:34.120Z`.

    The access log stamps every request, so nothing is formatted per line: the
    date and time of day are worked out once per second, the milliseconds are
    looked up (cheaper than formatting them).
    """
    second = int(seconds)
    return utc_second(second) + MILLISECONDS[int((seconds - second) * 1000)]


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line (the module docstring lists the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": iso_utc(record.created), "level": record.levelname.lower(),
                "event": getattr(record, "event", None) or DEFAULT_EVENT, "msg": record.getMessage()}
        name = record.name
        if name != OWN_LOGGER and not name.startswith(OWN_LOGGER + "."):
            line["logger"] = name
        for field, value in record.__dict__.items():
            if field not in RECORD_ATTRIBUTES and field not in line:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # an extra orjson cannot write even with `default` (an int past 64 bits)
            return orjson.dumps({k: v if k in LEADING_FIELDS else str(v) for k, v in line.items()}).decode()


class LineHandler(logging.Handler):
    """Writes each record as one line to `stream`, in the format `log_format()` names now.

    `log_format` and `before_write` are set by the server as it starts: the serving
    graph's `server.log_format`, and the access log's flush (see the module docstring).
    """

    def __init__(self, stream: TextIO, log_format: Callable[[], str] = lambda: "text") -> None:
        super().__init__()
        self.stream = stream
        self.log_format = log_format
        self.before_write: Callable[[], None] | None = None
        self.text = logging.Formatter("%(message)s")
        self.formatters = {"text": self.text, "json": JsonFormatter()}

    def follow(self, log_format: Callable[[], str], before_write: Callable[[], None] | None = None) -> None:
        self.log_format = log_format
        self.before_write = before_write

    def format(self, record: logging.LogRecord) -> str:
        return self.formatters.get(self.log_format(), self.text).format(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self.before_write is not None:
                self.before_write()
            self.stream.write(line + "\n")
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:
            if hasattr(self.stream, "flush"):
                self.stream.flush()


def configure_logging(stream: TextIO | None = None) -> LineHandler:
    """gatewayd's records (INFO and up) and other libraries' warnings, all as lines on `stream`.

    Other libraries (aiohttp, asyncio, Python's warnings) would otherwise print
    plain text through logging's last-resort handler; here they follow
    `server.log_format` too.
    """
    handler = LineHandler(stream or sys.stderr)
    own = logging.getLogger(OWN_LOGGER)
    own.handlers[:] = [handler]
    own.setLevel(logging.INFO)
    own.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler
