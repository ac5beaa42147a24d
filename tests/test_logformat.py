"""The daemon's log lines (daemon/observe/logformat.py): text as always, or one JSON object per line,
following a format read per record, and in order with the batched access lines."""

from __future__ import annotations

import io
import logging
import sys
import threading
from datetime import datetime, timedelta

import orjson
import pytest

from gatewayd.daemon.observe.accesslog import AccessLog, AccessRecord
from gatewayd.daemon.observe.logformat import JsonFormatter, LineHandler, configure_logging, iso_utc


def record(msg: str = "gatewayd serving on %s", *args, name: str = "gatewayd", level: int = logging.INFO,
           exc_info=None, **extra) -> logging.LogRecord:
    if not args and "%s" in msg:
        args = ("127.0.0.1:8080",)
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info, extra=extra)


def failed() -> tuple:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        return sys.exc_info()


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


def test_iso_utc_is_iso_8601_utc_to_the_millisecond():
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1712345678.123456) == "2024-04-05T19:34:38.123Z"
    assert iso_utc(1712345678.9994) == "2024-04-05T19:34:38.999Z"
    assert iso_utc(1712345679.0) == "2024-04-05T19:34:39.000Z"  # the next second, worked out anew
    parsed = datetime.fromisoformat(iso_utc(1712345678.5))
    assert parsed.utcoffset() == timedelta(0) and parsed.timestamp() == 1712345678.5


def test_a_json_line_has_ts_level_event_msg_and_the_extra_fields():
    line = JsonFormatter().format(record(event="start", listen="127.0.0.1:8080", version="abc"))
    assert "\n" not in line
    fields = orjson.loads(line)
    assert list(fields)[:4] == ["ts", "level", "event", "msg"]
    assert datetime.fromisoformat(fields["ts"]).utcoffset() == timedelta(0)
    assert fields["level"] == "info" and fields["event"] == "start"
    assert fields["msg"] == "gatewayd serving on 127.0.0.1:8080"
    assert fields["listen"] == "127.0.0.1:8080" and fields["version"] == "abc"
    assert "logger" not in fields  # gatewayd's own records do not name it


def test_a_record_without_an_event_gets_the_default_and_another_logger_is_named():
    fields = orjson.loads(JsonFormatter().format(record("Error handling request", name="aiohttp.server",
                                                        level=logging.ERROR)))
    assert fields["event"] == "log"
    assert fields["level"] == "error"
    assert fields["logger"] == "aiohttp.server"


def test_an_exception_is_one_field_not_lines_of_its_own():
    line = JsonFormatter().format(record("reload failed unexpectedly", exc_info=failed(), event="reload_error"))
    assert "\n" not in line
    fields = orjson.loads(line)
    assert fields["event"] == "reload_error"
    assert fields["exc"].startswith("Traceback (most recent call last):")
    assert fields["exc"].endswith("ValueError: boom\nsecond line")


def test_a_message_with_line_breaks_stays_one_json_line():
    line = JsonFormatter().format(record("error: %s", "a.yaml:1:1: bad\r\nline"))
    assert "\n" not in line and "\r" not in line
    assert orjson.loads(line)["msg"] == "error: a.yaml:1:1: bad\r\nline"


def test_an_extra_json_cannot_write_becomes_text():
    fields = orjson.loads(JsonFormatter().format(record(event="x", odd={1, 2}, huge=2**70)))
    assert fields["huge"] == str(2**70)
    assert isinstance(fields["odd"], str)


def test_text_lines_are_the_message_alone_with_a_traceback_after(stream):
    handler = LineHandler(stream)
    handler.handle(record(event="start"))
    handler.handle(record("boom", exc_info=failed()))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "gatewayd serving on 127.0.0.1:8080"
    assert lines[1] == "boom"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2:] == ["ValueError: boom", "second line"]


def test_the_format_is_read_for_every_record(stream):
    chosen = ["text"]
    handler = LineHandler(stream, lambda: chosen[0])
    handler.handle(record(event="start"))
    chosen[0] = "json"  # a reload switched it
    handler.handle(record("reload accepted", event="reload"))
    chosen[0] = "text"
    handler.handle(record("stopped", event="stopped"))
    first, second, third = stream.getvalue().splitlines()
    assert first == "gatewayd serving on 127.0.0.1:8080"
    assert orjson.loads(second)["event"] == "reload"
    assert third == "stopped"


def access_record(status: int) -> AccessRecord:
    return AccessRecord("POST", "/v1/chat/completions", status, attempts=1)


async def test_waiting_access_lines_are_written_before_a_log_line(stream):
    access = AccessLog(interval=60)  # nothing reaches the stream on its own during the test
    access.write_to(stream)
    handler = LineHandler(stream, lambda: "json")
    handler.follow(lambda: "json", access.flush_before_log_line)
    access.emit(access_record(200), "json")
    access.emit(access_record(502), "json")
    assert stream.getvalue() == ""  # batched
    handler.handle(record("cooldown: m until …", event="cooldown_start"))
    access.emit(access_record(503), "json")
    access.flush()
    events = [(line["event"], line.get("status")) for line in map(orjson.loads, stream.getvalue().splitlines())]
    assert events == [("access", 200), ("access", 502), ("cooldown_start", None), ("access", 503)]


async def test_a_log_line_from_another_thread_leaves_the_waiting_access_lines_alone(stream):
    access = AccessLog(interval=60)
    access.write_to(stream)
    handler = LineHandler(stream, lambda: "json")
    handler.follow(lambda: "json", access.flush_before_log_line)
    access.emit(access_record(200), "json")
    worker = threading.Thread(target=handler.handle, args=(record("from a thread", event="elsewhere"),))
    worker.start()
    worker.join(10)
    access.flush()
    events = [line["event"] for line in map(orjson.loads, stream.getvalue().splitlines())]
    assert events == ["elsewhere", "access"]  # written alone; the access line kept and written once


@pytest.fixture
def logging_restored():
    """configure_logging changes process-wide logging: put everything back afterwards."""
    root, own = logging.getLogger(), logging.getLogger("gatewayd")
    saved = (root.handlers[:], root.level, own.handlers[:], own.level, own.propagate)
    yield
    root.handlers[:], own.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    own.setLevel(saved[3])
    own.propagate = saved[4]
    logging.captureWarnings(False)


def test_other_libraries_warnings_follow_the_format_too(stream, logging_restored):
    handler = configure_logging(stream)
    handler.follow(lambda: "json")
    logging.getLogger("gatewayd").info("gatewayd serving on %s", "x", extra={"event": "start"})
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=failed())
    logging.getLogger("aiohttp.access").info("an aiohttp access line")  # below WARNING: not written
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line.get("logger")) for line in lines] == [("start", None), ("log", "aiohttp.server")]
    assert lines[1]["exc"].startswith("Traceback")
