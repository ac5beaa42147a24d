"""Durations and sizes as the config language writes them (`250ms`, `1m30s`, `8MiB`).

The schema's patterns have already accepted the text; these only convert.
"""

from __future__ import annotations

import re

DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
              "GB": 1000**3, "GiB": 1024**3}


def seconds(value: str | int | float) -> float:
    """A duration in seconds: `250ms` -> 0.25, `1m30s` -> 90.0, 5 -> 5.0."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = DURATION_PART.findall(value.replace(" ", ""))
    if not parts:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def size_bytes(value: str | int) -> int:
    """A size in bytes: `8MiB` -> 8388608, 1024 -> 1024."""
    if isinstance(value, int):
        return value
    match = SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def format_seconds(value: float) -> str:
    if value >= 1 and float(value).is_integer():
        return f"{int(value)}s"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
