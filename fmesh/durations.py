"""Durations as people write them in manifests: `200ms`, `5s`, `1m30s`, `2h`, ISO-8601 `PT1S`."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIMPLE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`; a bare number means seconds. Raises ValueError saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):  # YAML also reads dates, lists...
        raise ValueError(f"expected a duration such as 200ms, 5s or PT1S, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    text = value.strip()
    if text == "0":  # zero needs no unit (`--trail-retention 0`)
        return 0.0
    iso = _ISO.match(text.upper())
    if iso and text.upper() not in ("P", "PT"):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return sum(parts.get(k, 0.0) * mult for k, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)))
    pieces = _SIMPLE.findall(text)
    if pieces and "".join(a + b for a, b in pieces) == text:
        return sum(float(amount) * _UNITS[unit] for amount, unit in pieces)
    raise ValueError(f"expected a duration such as 200ms, 5s, 1m30s or PT1S, got {value!r}")


def format_duration(seconds: float) -> str:
    """`seconds` the way people write it: 90 → 1m30s, 86400 → 1d, 0.2 → 200ms."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts, left = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)
