"""Tests for daemon/core/windows.py: window syntax, evaluation, DST behaviour, properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.daemon.core.windows import (
    WindowRange,
    Windows,
    WindowSyntaxError,
    load_zone,
    parse_window,
)

ALL = frozenset(range(7))
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")


def hm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("sat,sun", {SAT, SUN}, None, None),
        ("mon", {MON}, None, None),
        ("mon-fri", {MON, TUE, WED, THU, FRI}, None, None),
        ("fri-mon", {FRI, SAT, SUN, MON}, None, None),
        ("sun-mon", {SUN, MON}, None, None),
        ("mon-sun", ALL, None, None),
        ("wed-wed", {WED}, None, None),
        ("mon,wed-fri", {MON, WED, THU, FRI}, None, None),
        ("09:00-17:00", ALL, hm("09:00"), hm("17:00")),
        ("mon-fri 09:00-17:00", {MON, TUE, WED, THU, FRI}, hm("09:00"), hm("17:00")),
        ("fri 22:00-02:00", {FRI}, hm("22:00"), hm("02:00")),
        ("22:00-24:00", ALL, hm("22:00"), 1440),
        ("00:00-24:00", ALL, 0, 1440),
        # 00:00 as an end is the end of the day, normalised so that end stays in 1..1440.
        ("22:00-00:00", ALL, hm("22:00"), 1440),
        ("sat,sun 10:00-11:30", {SAT, SUN}, hm("10:00"), hm("11:30")),
        ("MON-Fri 09:00-17:00", {MON, TUE, WED, THU, FRI}, hm("09:00"), hm("17:00")),
        ("Sat , SUN", {SAT, SUN}, None, None),
        ("  mon , wed - fri   08:00 - 12:00  ", {MON, WED, THU, FRI}, hm("08:00"), hm("12:00")),
        ("sat,sun\t07:00-08:00", {SAT, SUN}, hm("07:00"), hm("08:00")),
        # One-digit hours are accepted: unambiguous and common in hand-written YAML.
        ("9:00-17:00", ALL, hm("09:00"), hm("17:00")),
        ("mon 7:05-9:30", {MON}, hm("07:05"), hm("09:30")),
        ("23:59-00:01", ALL, hm("23:59"), 1),
    ],
)
def test_parse_forms(text, days, start, end):
    r = parse_window(text)
    assert r == WindowRange(text, frozenset(days), start, end)
    assert r.text == text


def _error(text) -> str:
    with pytest.raises(WindowSyntaxError) as info:
        parse_window(text)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "mon-fry 09:00-17:00",
            (
                "'mon-fry 09:00-17:00': unknown day 'fry' "
                "(days are mon, tue, wed, thu, fri, sat, sun; did you mean 'fri'?)"
            ),
        ),
        (
            "monday",
            (
                "'monday': unknown day 'monday' "
                "(days are mon, tue, wed, thu, fri, sat, sun; did you mean 'mon'?)"
            ),
        ),
        (
            "xyz 09:00-10:00",
            "'xyz 09:00-10:00': unknown day 'xyz' (days are mon, tue, wed, thu, fri, sat, sun)",
        ),
        ("25:00-26:00", "'25:00-26:00': bad start time '25:00' (expected HH:MM, 00:00 to 23:59)"),
        (
            "09:00-25:00",
            (
                "'09:00-25:00': bad end time '25:00' "
                "(expected HH:MM, 00:00 to 23:59, or 24:00 for the end of the day)"
            ),
        ),
        ("24:00-02:00", "'24:00-02:00': bad start time '24:00' (expected HH:MM, 00:00 to 23:59)"),
        (
            "09:60-10:00",
            "'09:60-10:00': bad start time '09:60' (expected HH:MM, 00:00 to 23:59)",
        ),
        (
            "09:0-10:00",
            "'09:0-10:00': bad start time '09:0' (expected HH:MM, 00:00 to 23:59)",
        ),
        (
            "0900-1000",
            "'0900-1000': bad start time '0900' (expected HH:MM, 00:00 to 23:59)",
        ),
        (
            "mon 09:00 17:00",
            (
                "'mon 09:00 17:00': missing '-' between start and end in time range "
                "'09:00 17:00' (expected HH:MM-HH:MM)"
            ),
        ),
        (
            "09:00",
            (
                "'09:00': missing '-' between start and end in time range '09:00' "
                "(expected HH:MM-HH:MM)"
            ),
        ),
        (
            "09:00-10:00-11:00",
            (
                "'09:00-10:00-11:00': too many '-' in time range '09:00-10:00-11:00' "
                "(expected HH:MM-HH:MM)"
            ),
        ),
        ("09:00-", "'09:00-': missing end time (expected HH:MM-HH:MM)"),
        (
            "09:00-09:00",
            (
                "'09:00-09:00': start equals end, which is an empty range "
                "(for whole days give the days alone, e.g. 'sat,sun')"
            ),
        ),
        (
            "sat 00:00-00:00",
            (
                "'sat 00:00-00:00': start equals end, which is an empty range "
                "(for whole days give the days alone, e.g. 'sat,sun')"
            ),
        ),
        (
            "",
            (
                "empty window '' (expected '[days ]HH:MM-HH:MM' or days alone, "
                "e.g. 'mon-fri 09:00-17:00' or 'sat,sun')"
            ),
        ),
        (
            "   ",
            (
                "empty window '   ' (expected '[days ]HH:MM-HH:MM' or days alone, "
                "e.g. 'mon-fri 09:00-17:00' or 'sat,sun')"
            ),
        ),
        ("sat,,sun", "'sat,,sun': empty day name (check for a stray ',' or '-')"),
        ("mon- 09:00-10:00", "'mon- 09:00-10:00': empty day name (check for a stray ',' or '-')"),
        ("mon fri", "'mon fri': days 'mon fri' must be separated by commas, e.g. 'sat,sun'"),
        ("mon09:00-10:00", "'mon09:00-10:00': put a space between the days and the time range"),
    ],
)
def test_parse_errors(text, message):
    assert _error(text) == message


@pytest.mark.parametrize("value", [1320, None])
def test_parse_rejects_non_strings(value):
    assert _error(value) == (
        f"window {value!r} is not a string (quote it; expected '[days ]HH:MM-HH:MM' or days "
        "alone, e.g. 'mon-fri 09:00-17:00' or 'sat,sun')"
    )


def test_load_zone_is_cached_and_suggests():
    assert load_zone("Europe/Berlin") is load_zone("Europe/Berlin")
    assert load_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    with pytest.raises(WindowSyntaxError) as info:
        load_zone("Europe/Berln")
    assert str(info.value) == "unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"
    with pytest.raises(WindowSyntaxError, match=r"^unknown time zone '\.\./etc/passwd'"):
        load_zone("../etc/passwd")
    with pytest.raises(WindowSyntaxError, match="unknown time zone"):
        Windows.build(["09:00-17:00"], [], "Mars/Olympus_Mons")


def test_build_parses_strings_and_keeps_ranges():
    r = parse_window("sat,sun")
    w = Windows.build(["mon-fri 09:00-17:00", r], None, "Europe/Berlin")
    assert w.only == (parse_window("mon-fri 09:00-17:00"), r)
    assert w.except_ == ()
    assert w.timezone == "Europe/Berlin"
    # The cached zone is not part of equality, hash or repr.
    assert w == Windows(w.only, (), "Europe/Berlin")
    assert hash(w) == hash(Windows(w.only, (), "Europe/Berlin"))
    assert "ZoneInfo" not in repr(w)
    with pytest.raises(AttributeError):
        w.timezone = "UTC"  # type: ignore[misc]
    with pytest.raises(WindowSyntaxError, match="unknown day 'fry'"):
        Windows.build(["fry"], [], "UTC")


# --- evaluation ----------------------------------------------------------------------------

# 2026-01-02 is a Friday; the calendar below is used for local wall-clock datetimes.
THU_1, FRI_2, SAT_3, SUN_4 = (date(2026, 1, d) for d in (1, 2, 3, 4))


def at(day: date, clock: str, second: int = 0) -> datetime:
    return datetime.combine(day, time(*map(int, clock.split(":")), second))


def test_half_open_boundaries():
    r = parse_window("09:00-17:00")
    assert not r.contains(at(FRI_2, "08:59", 59))
    assert r.contains(at(FRI_2, "09:00"))
    assert r.contains(at(FRI_2, "16:59", 59))
    assert not r.contains(at(FRI_2, "17:00"))
    whole = parse_window("sat")
    assert whole.contains(at(SAT_3, "00:00"))
    assert whole.contains(at(SAT_3, "23:59", 59))
    assert not whole.contains(at(FRI_2, "23:59", 59))
    assert not whole.contains(at(SUN_4, "00:00"))
    late = parse_window("22:00-24:00")
    assert late.contains(at(FRI_2, "23:59", 59))
    assert not late.contains(at(SAT_3, "00:00"))


def test_crossing_midnight_belongs_to_start_day():
    r = parse_window("fri 22:00-02:00")
    assert not r.contains(at(FRI_2, "21:59"))
    assert r.contains(at(FRI_2, "22:00"))
    assert r.contains(at(SAT_3, "00:00"))
    assert r.contains(at(SAT_3, "01:59", 59))
    assert not r.contains(at(SAT_3, "02:00"))
    assert not r.contains(at(SAT_3, "22:30"))  # Saturday's own evening is not Friday's
    # Friday's early morning would belong to Thursday's range, and there is none.
    assert not r.contains(at(FRI_2, "01:00"))
    assert not r.contains(at(FRI_2, "02:00"))
    assert not r.contains(at(THU_1, "23:00"))


def test_crossing_midnight_wraps_the_week():
    r = parse_window("sun 23:00-01:00")
    monday = date(2026, 1, 5)
    assert r.contains(at(monday, "00:30"))
    assert r.contains(at(SUN_4, "23:30"))
    assert not r.contains(at(SUN_4, "00:30"))


def test_contains_ignores_tzinfo_and_uses_wall_clock():
    r = parse_window("fri 22:00-02:00")
    aware = datetime(2026, 1, 2, 23, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert r.contains(aware)


def test_only_and_except():
    w = Windows.build(["mon-fri 20:00-07:00", "sat,sun"], ["sun 02:00-04:00"], "UTC")
    assert w.is_open(utc(2026, 1, 2, 21, 0))  # Fri evening
    assert w.is_open(utc(2026, 1, 3, 6, 0))  # Sat morning, from Friday's range and from 'sat'
    assert not w.is_open(utc(2026, 1, 6, 12, 0))  # Tue noon
    assert w.is_open(utc(2026, 1, 4, 1, 59))
    assert not w.is_open(utc(2026, 1, 4, 2, 0))  # except wins over 'sat,sun'
    assert not w.is_open(utc(2026, 1, 4, 3, 59))
    assert w.is_open(utc(2026, 1, 4, 4, 0))


def test_no_only_means_always_unless_excepted():
    w = Windows.build([], ["mon-fri 09:00-17:00"], "UTC")
    assert w.is_open(utc(2026, 1, 3, 12, 0))
    assert w.is_open(utc(2026, 1, 2, 17, 0))
    assert not w.is_open(utc(2026, 1, 2, 9, 0))
    assert Windows.build([], [], "UTC").is_open(utc(2026, 1, 2, 9, 0))


def test_naive_instant_is_utc():
    w = Windows.build(["09:00-10:00"], [], "Europe/Berlin")
    assert w.is_open(datetime(2026, 1, 2, 8, 30))  # 09:30 in Berlin (CET, UTC+1)
    assert not w.is_open(datetime(2026, 1, 2, 9, 30))


def test_explain():
    w = Windows.build(["mon-fri 20:00-07:00", "sat,sun"], ["sun 02:00-04:00"], "Europe/Berlin")
    assert w.explain(utc(2026, 6, 2, 10, 0)) == (
        "outside window (only: mon-fri 20:00-07:00, sat,sun; now Tue 12:00 Europe/Berlin)"
    )
    assert w.explain(utc(2026, 6, 7, 0, 30)) == (
        "inside except window 'sun 02:00-04:00' (now Sun 02:30 Europe/Berlin)"
    )
    assert w.explain(utc(2026, 6, 6, 12, 0)) is None
    assert w.is_open(utc(2026, 6, 6, 12, 0))


# --- DST: evaluated on UTC instants minute by minute ---------------------------------------


def open_spans(w: Windows, first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    """The [start, end) UTC spans during which `w` is open, sampled every minute."""
    spans: list[tuple[datetime, datetime]] = []
    t, begun = first, None
    while t <= last:
        if w.is_open(t) and begun is None:
            begun = t
        elif not w.is_open(t) and begun is not None:
            spans.append((begun, t))
            begun = None
        t += timedelta(minutes=1)
    assert begun is None, "sweep must end outside the window"
    return spans


@pytest.mark.parametrize(
    ("zone", "window", "first", "expected"),
    [
        # Berlin spring forward 2026-03-29 01:00 UTC: 02:00 CET -> 03:00 CEST.
        ("Europe/Berlin", "22:00-02:00", utc(2026, 3, 28, 12), [(utc(2026, 3, 28, 21), utc(2026, 3, 29, 1))]),
        ("Europe/Berlin", "sat 22:00-02:00", utc(2026, 3, 28, 12), [(utc(2026, 3, 28, 21), utc(2026, 3, 29, 1))]),
        # 02:00-03:00 local does not exist that night, so the range is one real hour long.
        ("Europe/Berlin", "01:00-03:00", utc(2026, 3, 28, 12), [(utc(2026, 3, 29, 0), utc(2026, 3, 29, 1))]),
        # Berlin fall back 2026-10-25 01:00 UTC: 03:00 CEST -> 02:00 CET.
        ("Europe/Berlin", "22:00-02:00", utc(2026, 10, 24, 12), [(utc(2026, 10, 24, 20), utc(2026, 10, 25, 0))]),
        # The repeated 02:00-03:00 hour is inside both times: three real hours.
        ("Europe/Berlin", "01:00-03:00", utc(2026, 10, 24, 12), [(utc(2026, 10, 24, 23), utc(2026, 10, 25, 2))]),
        # New York spring forward 2026-03-08 07:00 UTC: 02:00 EST -> 03:00 EDT.
        ("America/New_York", "22:00-02:00", utc(2026, 3, 7, 17), [(utc(2026, 3, 8, 3), utc(2026, 3, 8, 7))]),
        ("America/New_York", "01:00-03:00", utc(2026, 3, 7, 17), [(utc(2026, 3, 8, 6), utc(2026, 3, 8, 7))]),
        # New York fall back 2026-11-01 06:00 UTC: 02:00 EDT -> 01:00 EST.
        # 01:00-02:00 local happens twice and is inside both times: five real hours.
        ("America/New_York", "22:00-02:00", utc(2026, 10, 31, 17), [(utc(2026, 11, 1, 2), utc(2026, 11, 1, 7))]),
        ("America/New_York", "sat 22:00-02:00", utc(2026, 10, 31, 17), [(utc(2026, 11, 1, 2), utc(2026, 11, 1, 7))]),
        ("America/New_York", "01:00-03:00", utc(2026, 10, 31, 17), [(utc(2026, 11, 1, 5), utc(2026, 11, 1, 8))]),
    ],
)  # fmt: skip
def test_dst_transitions(zone, window, first, expected):
    w = Windows.build([window], [], zone)
    assert open_spans(w, first, first + timedelta(hours=20)) == expected


def test_dst_except_in_repeated_hour():
    # Only 'except' is given, so the open spans are the complement of the except window.
    w = Windows.build([], ["sun 02:00-02:30"], "Europe/Berlin")
    first = utc(2026, 10, 24, 23)
    minutes = [first + timedelta(minutes=i) for i in range(4 * 60)]
    closed = [t for t in minutes if not w.is_open(t)]
    # 02:00-02:30 local happens as 00:00-00:30 UTC (CEST) and again as 01:00-01:30 UTC (CET).
    expected = [utc(2026, 10, 25, h, m) for h in (0, 1) for m in range(30)]
    assert closed == expected
    assert w.explain(utc(2026, 10, 25, 1, 10)) == (
        "inside except window 'sun 02:00-02:30' (now Sun 02:10 Europe/Berlin)"
    )


# --- properties ----------------------------------------------------------------------------

day_sets = st.frozensets(st.integers(0, 6), min_size=1)
minutes_of_day = st.integers(0, 1439)
instants = st.datetimes(datetime(2000, 1, 1), datetime(2040, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
zones = st.sampled_from(ZONES)


@st.composite
def ranges(draw) -> WindowRange:
    days = draw(day_sets)
    if draw(st.booleans()):
        return WindowRange("", days, None, None)
    start = draw(minutes_of_day)
    end = draw(st.integers(1, 1440).filter(lambda e: e != start))
    return WindowRange("", days, start, end)


def reference_contains(r: WindowRange, local: datetime) -> bool:
    """Build the concrete wall-clock intervals of the local day and the day before."""
    wall = local.replace(tzinfo=None)
    for day in (wall.date() - timedelta(days=1), wall.date()):
        if day.weekday() not in r.days:
            continue
        midnight = datetime.combine(day, time())
        if r.start is None:
            begin, finish = midnight, midnight + timedelta(days=1)
        else:
            length = (r.end - r.start) % 1440 or 1440
            begin = midnight + timedelta(minutes=r.start)
            finish = begin + timedelta(minutes=length)
        if begin <= wall < finish:
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(r=ranges(), instant=instants, zone=zones)
def test_contains_matches_reference(r, instant, zone):
    local = instant.astimezone(ZoneInfo(zone))
    assert r.contains(local) == reference_contains(r, local)


@settings(max_examples=200, deadline=None)
@given(r=ranges(), day=st.dates(date(2026, 1, 1), date(2026, 12, 31)), minute=minutes_of_day)
def test_contains_matches_reference_near_edges(r, day, minute):
    # Uniform instants rarely land on an edge; these probe each range's own boundaries.
    for m in {minute, r.start or 0, (r.start or 0) - 1, r.end or 0, (r.end or 0) - 1}:
        local = datetime.combine(day, time()) + timedelta(minutes=m)
        assert r.contains(local) == reference_contains(r, local)


@settings(max_examples=200, deadline=None)
@given(
    only=st.lists(ranges(), max_size=3),
    except_=st.lists(ranges(), max_size=2),
    zone=zones,
    other=zones,
    instant=instants,
)
def test_is_open_invariant_to_instant_zone(only, except_, zone, other, instant):
    w = Windows.build(only, except_, zone)
    expected = w.is_open(instant)
    assert w.is_open(instant.astimezone(ZoneInfo(other))) == expected
    assert w.is_open(instant.replace(tzinfo=None)) == expected  # naive means UTC
    assert (w.explain(instant) is None) == expected
    local = instant.astimezone(ZoneInfo(zone))
    in_only = not only or any(reference_contains(r, local) for r in only)
    assert expected == (in_only and not any(reference_contains(r, local) for r in except_))


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def day_spec(draw, days: frozenset[int]) -> str:
    """Spell `days` as a comma list, sometimes collapsing runs into (possibly wrapping) ranges."""
    items = []
    for d in sorted(days):
        run_end = d
        while (run_end + 1) % 7 in days and (run_end + 1) % 7 != d and draw(st.booleans()):
            run_end = (run_end + 1) % 7
        items.append(NAMES[d] if run_end == d else f"{NAMES[d]}-{NAMES[run_end]}")
    items = [draw(st.sampled_from([s, s.upper(), s.title()])) for s in items]
    separator = draw(st.sampled_from([",", ", ", " , "]))
    return separator.join(items)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), r=ranges())
def test_parse_round_trips_components(data, r):
    parts = []
    if r.days != ALL or r.start is None or data.draw(st.booleans()):
        parts.append(data.draw(day_spec(r.days)))
    if r.start is not None:
        parts.append(f"{clock(r.start)}-{'24:00' if r.end == 1440 else clock(r.end)}")
    text = data.draw(st.sampled_from([" ", "  ", "\t"])).join(parts)
    parsed = parse_window(text)
    assert (parsed.days, parsed.start, parsed.end) == (r.days, r.start, r.end)
    assert parsed.text == text
