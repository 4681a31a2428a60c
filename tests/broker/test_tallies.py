"""The counting observer: what it counts for each thing the broker and sidecars tell it."""

from __future__ import annotations

import json

import pytest
from fmesh.broker.tallies import LATENCY_BUCKETS, Tallies

from fmesh.contracts import Steps
from fmesh.events import SENDER, Event
from fmesh.meshpath import PATH


def event(sender: str = "admin", **more: str) -> Event:
    return Event({"specversion": "1.0", "id": "e-1", "source": "/t", "type": "t", SENDER: sender, **more}, b"")


def test_events_in_count_per_sender_and_those_that_matched_nothing():
    tallies = Tallies()
    tallies.accepted([(event(), ["function:a"]), (event("trigger:orders"), []), (event(), [])])
    tallies.accepted([(event("function:a"), ["function:b"])])
    assert tallies.events_in == {"admin": 2, "trigger:orders": 1, "function:a": 1}
    assert tallies.unrouted == 2


def test_each_kind_of_step_counts_where_the_status_shows_it():
    tallies = Tallies()
    steps = [(Steps.RETRYING, 1, 0.02), (Steps.DELIVERED, 2, 0.004), (Steps.REPLY, 2, None),
             (Steps.DEAD_LETTERED, 1, 0.5), (Steps.REDIRECTED, 3, 0.1), (Steps.REPLAYED, 0, None),
             (Steps.DEAD_LETTERED, 0, None)]   # the last: a reply over the hop limit, no attempt failed
    for kind, attempt, took in steps:
        tallies.step(event(), "function:a", kind, attempt, duration=took)
    tallies.step(event(), "function:a", Steps.REPLY, 1, error="reply hop limit 16 reached")  # not published
    counts = tallies.of("function:a")
    assert (counts.delivered, counts.failed, counts.retried) == (1, 3, 1)
    assert (counts.dead_lettered, counts.redirected, counts.replies, counts.replayed) == (2, 1, 1, 1)
    assert counts.latency.count == 4
    assert counts.latency.sum == pytest.approx(0.624)
    assert tallies.of("function:b").delivered == 0


def test_the_latency_histogram_puts_each_attempt_in_the_first_bucket_that_holds_it():
    tallies = Tallies()
    for took in (0.001, 0.0011, 100.0):
        tallies.step(event(), "bridge:eu", Steps.DELIVERED, 1, duration=took)
    buckets = dict(tallies.of("bridge:eu").latency.cumulative())
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 2
    assert buckets[repr(LATENCY_BUCKETS[-1])] == 2 and buckets["+Inf"] == 3


def test_latency_percentiles_come_from_the_recent_attempts():
    tallies = Tallies()
    assert tallies.of("function:a").latency_ms() is None
    for ms in range(1, 101):
        tallies.step(event(), "function:a", Steps.DELIVERED, 1, duration=ms / 1000)
    assert tallies.of("function:a").latency_ms() == {"p50": 50.0, "p99": 99.0}
    for _ in range(1000):   # the window is bounded: old attempts leave it
        tallies.step(event(), "function:a", Steps.DELIVERED, 1, duration=0.5)
    assert tallies.of("function:a").latency_ms() == {"p50": 500.0, "p99": 500.0}


def test_bridged_events_count_as_received_duplicate_or_looped():
    tallies = Tallies()
    tallies.accepted([(event("peer:eu", **{PATH: "eu"}), ["function:a"]), (event(), ["function:a"])])
    tallies.step(event("peer:eu", **{PATH: "eu"}), "", Steps.DUPLICATE, detail="dropped")
    tallies.step(event("peer:eu", **{PATH: "us"}), "", Steps.LOOPED, detail="dropped")
    assert tallies.bridged == {"received": 2, "duplicates": 1, "looped": 1}
    assert tallies.subscriptions == {"function:a": tallies.of("function:a")}  # the broker's steps name none


def test_a_snapshot_restores_into_the_same_counts_and_adds_to_what_is_there():
    tallies = Tallies()
    tallies.accepted([(event(), [])])
    tallies.step(event(), "function:a", Steps.DELIVERED, 1, duration=0.01)
    tallies.cold_start("a", 0.2)
    saved = json.loads(json.dumps(tallies.snapshot()))
    again = Tallies()
    again.restore(saved)
    assert again.snapshot() == tallies.snapshot()
    again.restore(saved)
    assert again.unrouted == 2 and again.of("function:a").delivered == 2
    assert again.of("function:a").latency.count == 2 and again.cold_starts["a"].count == 2


@pytest.mark.parametrize("saved", [
    [], {"version": 99}, {"version": 1, "unrouted": -1}, {"version": 1, "events_in": {"admin": "3"}},
    {"version": 1, "unrouted": 1, "subscriptions": {"function:a": {"delivered": True}}},
    {"version": 1, "subscriptions": {"function:a": {"latency": {"bounds": list(LATENCY_BUCKETS), "counts": [1],
                                                                "sum": 0.1}}}},
])
def test_a_snapshot_that_is_not_one_adds_nothing(saved):
    tallies = Tallies()
    with pytest.raises(ValueError):
        tallies.restore(saved)
    assert tallies.unrouted == 0 and tallies.subscriptions == {}


def test_a_histogram_kept_with_other_buckets_is_left_out_and_its_counters_kept():
    saved = {"version": 1, "subscriptions": {"function:a": {"delivered": 3, "latency": {
        "bounds": [1.0], "counts": [1, 2], "sum": 4.0}}}}
    tallies = Tallies()
    tallies.restore(saved)
    assert tallies.of("function:a").delivered == 3 and tallies.of("function:a").latency.count == 0


def test_a_deleted_subscription_counts_from_zero_again():
    tallies = Tallies()
    tallies.step(event(), "function:a", Steps.DELIVERED, 1)
    tallies.cold_start("a", 0.1)
    tallies.forget("function:a")
    assert tallies.of("function:a").delivered == 0 and "a" not in tallies.cold_starts
