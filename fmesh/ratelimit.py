"""Token buckets: `rate: 100/s, burst: 200` for a principal at the ingress or a webhook trigger.

A bucket holds up to `burst` tokens and refills at `rate` per second. A request is let in
while the bucket has a whole token; it then takes one token per event it carries, and a
batch larger than what is left takes the bucket below zero, so that the requests after it
wait until the average is back at `rate` (a batch is never refused for its size alone).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from fmesh.errors import RateLimited

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(ms|s|m|min|h))?\s*$")
_PER = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


MIN_RATE = 1 / 86400.0
MAX_RATE = 10_000_000.0
MAX_RETRY_AFTER = 86400


def parse_rate(value: object) -> float:
    """Events per second in `100/s`, `600/m`, `5000/h` (or a plain number per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, per = float(value), 1.0
    else:
        match = _RATE.match(str(value)) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"expected a rate such as 100/s, 600/m or 5000/h, got {value!r}")
        number, per = float(match.group(1)), _PER[match.group(2) or ""]
    if not MIN_RATE <= number / per <= MAX_RATE:
        raise ValueError(f"a rate must be between one per day and {MAX_RATE:,.0f}/s, got {value!r}")
    return number / per


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; starts full."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def admit(self, who: str) -> None:
        """Refuse (RateLimited, with the seconds until a whole token) unless one is there."""
        tokens = self._refill()
        if tokens < 1.0:
            raise RateLimited(who, (1.0 - tokens) / self.rate)

    def take(self, count: int) -> None:
        """Spend `count` tokens, going below zero if need be."""
        self._refill()
        self._tokens -= count


def retry_after_header(seconds: float) -> bytes:
    """`Retry-After` in whole seconds, at least 1 (HTTP allows no fractions), at most a day."""
    return str(max(1, min(MAX_RETRY_AFTER, math.ceil(min(seconds, MAX_RETRY_AFTER))))).encode()
