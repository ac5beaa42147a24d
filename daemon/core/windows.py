"""Time windows: when a model may be used, e.g. cheap night-time deployments.

A model's `windows: {only: [...], except: [...], timezone: ...}` is parsed once,
at config load, into immutable `Windows` values, so that `Windows.is_open` (run
on every request) costs one time zone conversion and a few integer comparisons.

A window string is `[days ]HH:MM-HH:MM` or days alone (`sat,sun`). Ranges are
half-open and compared on local wall-clock time, so `22:00-02:00` means those
clock readings on either side of a DST change. A range whose end is not after
its start crosses midnight and belongs to the day it starts on. Hours may be
written with one digit (`9:00`): it is unambiguous and common in hand-written
YAML. Syntax errors are `WindowSyntaxError`s whose message is a full sentence
meant for the operator, naming the offending string and, for typos, a guess.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from gatewayd.daemon.core.problems import quoted

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_INDEX = {name: i for i, name in enumerate(DAY_NAMES)}
_ALL_DAYS = frozenset(range(7))
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_FORMAT_HINT = (
    "expected '[days ]HH:MM-HH:MM' or days alone, e.g. 'mon-fri 09:00-17:00' or 'sat,sun'"
)


class WindowSyntaxError(ValueError):
    """A window or time zone that cannot be parsed; the message is a complete sentence."""


@dataclass(frozen=True, slots=True)
class WindowRange:
    text: str
    days: frozenset[int]
    start: int | None
    end: int | None

    def contains(self, local: datetime) -> bool:
        """Whether wall-clock `local` (in the window's zone) is inside; tzinfo and fold are ignored."""
        return self._hit(local.weekday(), local.hour * 60 + local.minute)

    def _hit(self, weekday: int, minute: int) -> bool:
        start, end, days = self.start, self.end, self.days
        if start is None:
            return weekday in days
        if start < end:
            return start <= minute < end and weekday in days
        # Crosses midnight: the early-morning part belongs to the previous day's range.
        if minute >= start:
            return weekday in days
        return minute < end and (weekday - 1) % 7 in days


def _fail(text: str, problem: str) -> WindowSyntaxError:
    return WindowSyntaxError(f"{text!r}: {problem}")


def _parse_day(text: str, name: str) -> int:
    key = name.strip().lower()
    if key in _DAY_INDEX:
        return _DAY_INDEX[key]
    if not key:
        raise _fail(text, "empty day name (check for a stray ',' or '-')")
    if any(c.isspace() for c in key):
        raise _fail(text, f"days {name.strip()!r} must be separated by commas, e.g. 'sat,sun'")
    guess = difflib.get_close_matches(key, DAY_NAMES, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    raise _fail(text, f"unknown day {name.strip()!r} (days are {', '.join(DAY_NAMES)}{hint})")


def _parse_days(text: str, spec: str) -> frozenset[int]:
    days: set[int] = set()
    for item in spec.split(","):
        first, dash, last = item.partition("-")
        a = _parse_day(text, first)
        if not dash:
            days.add(a)
            continue
        b = _parse_day(text, last)
        # A range may wrap past Sunday: fri-mon is fri, sat, sun, mon.
        days.update((a + k) % 7 for k in range((b - a) % 7 + 1))
    return frozenset(days)


def _parse_time(text: str, value: str, what: str) -> int:
    value = value.strip()
    if not value:
        raise _fail(text, f"missing {what} time (expected HH:MM-HH:MM)")
    m = _TIME.fullmatch(value)
    hours, minutes = (int(m[1]), int(m[2])) if m else (99, 99)
    if (hours, minutes) == (24, 0) and what == "end":
        return 1440
    if hours > 23 or minutes > 59:
        allowed = "00:00 to 23:59" + (", or 24:00 for the end of the day" if what == "end" else "")
        raise _fail(text, f"bad {what} time {value!r} (expected HH:MM, {allowed})")
    return hours * 60 + minutes


def parse_window(text: str) -> WindowRange:
    """Parse `[days ]HH:MM-HH:MM` or days alone; raises WindowSyntaxError."""
    if not isinstance(text, str):
        # YAML 1.1 reads an unquoted `22:00` as the number 1320.
        raise WindowSyntaxError(f"window {text!r} is not a string (quote it; {_FORMAT_HINT})")
    if not text.strip():
        raise WindowSyntaxError(f"empty window {text!r} ({_FORMAT_HINT})")
    # Day names have no digits, so the first digit starts the time part.
    digit = re.search(r"[0-9]", text)
    days_part, time_part = (text[: digit.start()], text[digit.start() :]) if digit else (text, "")
    if days_part.strip() and time_part and not days_part[-1].isspace():
        raise _fail(text, "put a space between the days and the time range")
    days = _parse_days(text, days_part) if days_part.strip() else _ALL_DAYS
    if not time_part:
        return WindowRange(text, days, None, None)
    pieces = time_part.split("-")
    if len(pieces) != 2:
        problem = "missing '-' between start and end" if len(pieces) == 1 else "too many '-'"
        raise _fail(text, f"{problem} in time range {time_part.strip()!r} (expected HH:MM-HH:MM)")
    start = _parse_time(text, pieces[0], "start")
    end = _parse_time(text, pieces[1], "end")
    if start == end:
        raise _fail(
            text,
            "start equals end, which is an empty range "
            "(for whole days give the days alone, e.g. 'sat,sun')",
        )
    # 00:00 as an end means the end of the day: keeps `end` in 1..1440 and the range same-day.
    return WindowRange(text, days, start, end or 1440)


@functools.cache
def load_zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name, cached; raises WindowSyntaxError with a suggestion."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        pass
    guess = difflib.get_close_matches(str(name), sorted(available_timezones()), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    raise WindowSyntaxError(f"unknown time zone {quoted(name)}{hint}") from None


@dataclass(frozen=True, slots=True)
class Windows:
    only: tuple[WindowRange, ...]
    except_: tuple[WindowRange, ...]
    timezone: str
    _zone: ZoneInfo = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", load_zone(self.timezone))

    @classmethod
    def build(cls, only=(), except_=(), timezone: str = "UTC") -> Windows:
        """From window strings (or parsed ranges); raises WindowSyntaxError."""

        def ranges(items) -> tuple[WindowRange, ...]:
            return tuple(r if isinstance(r, WindowRange) else parse_window(r) for r in items or ())

        return cls(ranges(only), ranges(except_), timezone)

    def _local(self, instant: datetime) -> datetime:
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return instant.astimezone(self._zone)

    def is_open(self, instant: datetime) -> bool:
        """Whether the model may be used at `instant` (aware; naive means UTC)."""
        local = self._local(instant)
        weekday, minute = local.weekday(), local.hour * 60 + local.minute
        for r in self.except_:
            if r._hit(weekday, minute):
                return False
        if not self.only:
            return True
        return any(r._hit(weekday, minute) for r in self.only)

    def explain(self, instant: datetime) -> str | None:
        """None when open, else a short reason naming the window and the local time."""
        local = self._local(instant)
        now = f"now {DAY_NAMES[local.weekday()].title()} {local:%H:%M} {self.timezone}"
        for r in self.except_:
            if r.contains(local):
                return f"inside except window {r.text!r} ({now})"
        if not self.only or any(r.contains(local) for r in self.only):
            return None
        return f"outside window (only: {', '.join(r.text for r in self.only)}; {now})"
