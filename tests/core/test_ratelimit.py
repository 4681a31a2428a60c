"""Token buckets and how rates are written."""

from __future__ import annotations

import pytest

from fmesh.errors import RateLimited
from fmesh.ratelimit import TokenBucket, parse_rate, retry_after_header


@pytest.mark.parametrize(("text", "per_second"), [("100/s", 100), ("600/m", 10), ("600/min", 10), ("7200/h", 2),
                                                  ("1/ms", 1000), ("2.5/s", 2.5), (5, 5), ("5", 5)])
def test_rates_are_read_per_second(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["fast", "0/s", "-1/s", "10/day", True, None])
def test_a_bad_rate_says_what_is_expected(text):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_a_bucket_lets_a_burst_through_then_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=4, burst=2, clock=lambda: now[0])
    for _ in range(2):
        bucket.admit("p")
        bucket.take(1)
    with pytest.raises(RateLimited) as refused:
        bucket.admit("p")
    assert refused.value.retry_after == pytest.approx(0.25) and refused.value.who == "p"
    now[0] += 10  # a long pause saves up no more than the burst
    bucket.take(2)
    with pytest.raises(RateLimited):
        bucket.admit("p")


def test_retry_after_is_whole_seconds_at_least_one():
    assert [retry_after_header(s) for s in (0.0, 0.01, 1.0, 1.2)] == [b"1", b"1", b"1", b"2"]


@pytest.mark.parametrize("text", [5e-324, 1e-300, 1e300, "0.0000001/s"])
def test_a_rate_too_small_or_too_large_to_mean_anything_is_refused(text):
    with pytest.raises(ValueError, match="between one per day"):
        parse_rate(text)


def test_retry_after_is_whole_seconds_between_one_and_a_day():
    assert retry_after_header(0.01) == b"1" and retry_after_header(2.2) == b"3"
    assert retry_after_header(1e300) == b"86400" and retry_after_header(float("inf")) == b"86400"
