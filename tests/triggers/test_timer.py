"""The timer trigger, stepped tick by tick with a hand-driven clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from fmesh.broker.stores import open_store
from fmesh.triggers.clock import ManualClock
from fmesh.triggers.config import TimerTriggerConfig
from fmesh.triggers.timer import TimerTrigger

from fmesh.contracts import Entry, StateStore
from fmesh.errors import StoreError

START = 1_700_000_005.0          # 2023-11-14T22:13:25Z, not on a 30 s boundary
FIRST = 1_700_000_010.0          # the first multiple of 30 s after START


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[StateStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'state.db'}", tmp_path)
    await opened.open()
    yield opened.state
    await opened.close()


@pytest.fixture
async def timers() -> AsyncIterator:
    """`await timers(trigger)` starts it; every trigger is stopped at the end."""
    started: list[TimerTrigger] = []

    async def start(trigger: TimerTrigger) -> TimerTrigger:
        await trigger.start()
        started.append(trigger)
        return trigger

    yield start
    for trigger in started:
        await trigger.stop()


def every(seconds: str = "30s", **extra) -> TimerTriggerConfig:
    return TimerTriggerConfig(every=seconds, **extra)


async def tick(clock: ManualClock) -> float:
    """Move to the time the trigger sleeps until; return once it sleeps again (it fired)."""
    deadline = await clock.next_sleeper()
    clock.set(deadline)
    await clock.next_sleeper()
    return deadline


async def test_an_interval_fires_on_its_multiples_with_deterministic_ids(store, recorder, timers):
    clock = ManualClock(START)
    trigger = await timers(TimerTrigger("beat", every(), recorder, store, clock))
    assert await clock.next_sleeper() == FIRST
    assert recorder.events == []
    assert await tick(clock) == FIRST
    assert await tick(clock) == FIRST + 30
    first, second = recorder.events
    assert first.attributes == {"specversion": "1.0", "id": f"beat-{iso(FIRST)}", "source": "/fmesh/triggers/beat",
                                "type": "dev.fmesh.timer", "time": iso(FIRST)}
    assert first.payload is None and second.id == f"beat-{iso(FIRST + 30)}"
    assert (await store.get("trigger/beat/last")).value == iso(FIRST + 30).encode()
    status = trigger.status()
    assert (status.kind, status.state, status.events_in) == ("timer", "connected", 2)
    assert status.detail["next_tick"] == iso(FIRST + 60)


async def test_cron_ticks_in_its_time_zone_across_daylight_saving(store, recorder, timers):
    start = datetime(2024, 3, 30, 12, tzinfo=UTC).timestamp()
    clock = ManualClock(start)
    config = TimerTriggerConfig(cron="0 3 * * *", timezone="Europe/Berlin")
    await timers(TimerTrigger("nightly", config, recorder, store, clock))
    # 03:00 in Berlin is 02:00Z in winter time, 01:00Z from 31 March (summer time)
    assert await tick(clock) == datetime(2024, 3, 31, 1, tzinfo=UTC).timestamp()
    assert await tick(clock) == datetime(2024, 4, 1, 1, tzinfo=UTC).timestamp()
    assert [e["time"] for e in recorder.events] == ["2024-03-31T01:00:00Z", "2024-04-01T01:00:00Z"]


async def test_the_event_carries_the_configured_attributes_and_data(store, recorder, timers):
    clock = ManualClock(START)
    config = every(type="com.acme.report", source="/reports", subject="daily", data={"kind": "full"},
                   extensions={"team": "ops", "priority": 2})
    await timers(TimerTrigger("report", config, recorder, store, clock))
    await tick(clock)
    (event,) = recorder.events
    assert (event.type, event.source, event["subject"], event["team"], event["priority"]) == (
        "com.acme.report", "/reports", "daily", "ops", 2)
    assert event["datacontenttype"] == "application/json"
    assert json.loads(event.payload) == {"kind": "full"}


async def test_a_restarted_timer_fires_each_tick_once(store, recorder, timers):
    clock = ManualClock(START)
    first = await timers(TimerTrigger("beat", every(), recorder, store, clock))
    await tick(clock)
    await tick(clock)
    await first.stop()
    clock.advance(1)  # restarted a second after the last tick
    await timers(TimerTrigger("beat", every(catch_up=True), recorder, store, clock))
    assert await tick(clock) == FIRST + 60
    assert recorder.ids() == [f"beat-{iso(t)}" for t in (FIRST, FIRST + 30, FIRST + 60)]


class ForgetfulStore:
    """A state store that cannot write: the process 'dies' between publish and store."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.refused = 0

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def put(self, key: str, value: bytes) -> int:
        self.refused += 1
        raise StoreError("disk gone")


async def test_a_crash_between_publish_and_store_repeats_the_same_id(store, recorder, timers, eventually):
    clock = ManualClock(START)
    await store.put("trigger/beat/last", iso(START - 5).encode())
    forgetful = ForgetfulStore(store)
    crashed = await timers(TimerTrigger("beat", every(catch_up=True), recorder, forgetful, clock))
    clock.set(await clock.next_sleeper())
    await eventually(lambda: forgetful.refused >= 1, what="a refused state write")
    assert crashed.status().state == "retrying"
    await crashed.stop()
    await timers(TimerTrigger("beat", every(catch_up=True), recorder, store, clock))
    await clock.next_sleeper()
    assert recorder.ids() == [f"beat-{iso(FIRST)}", f"beat-{iso(FIRST)}"]  # same id: deduplicable


async def test_ticks_missed_while_down_are_skipped(store, recorder, timers):
    clock = ManualClock(START)
    first = await timers(TimerTrigger("beat", every(), recorder, store, clock))
    await tick(clock)
    await first.stop()
    clock.advance(5 * 30)
    trigger = await timers(TimerTrigger("beat", every(), recorder, store, clock))
    assert await clock.next_sleeper() == FIRST + 6 * 30
    assert recorder.ids() == [f"beat-{iso(FIRST)}"]
    assert trigger.status().detail["skipped"] == 5


async def test_catch_up_fires_each_missed_tick_once_oldest_first(store, recorder, timers):
    clock = ManualClock(START)
    first = await timers(TimerTrigger("beat", every(catch_up=True), recorder, store, clock))
    await tick(clock)
    await first.stop()
    clock.advance(5 * 30)
    await timers(TimerTrigger("beat", every(catch_up=True), recorder, store, clock))
    assert await clock.next_sleeper() == FIRST + 6 * 30
    assert recorder.ids() == [f"beat-{iso(FIRST + n * 30)}" for n in range(6)]


async def test_catch_up_is_bounded_to_the_latest_ticks(store, recorder, timers):
    clock = ManualClock(START)
    await store.put("trigger/beat/last", iso(FIRST).encode())
    clock.set(FIRST + 10 * 30 + 1)
    await timers(TimerTrigger("beat", every(catch_up=True, max_catch_up=3), recorder, store, clock))
    await clock.next_sleeper()
    assert recorder.ids() == [f"beat-{iso(FIRST + n * 30)}" for n in (8, 9, 10)]


async def test_a_refused_publish_is_retried_and_the_tick_fires_once(store, recorder, timers):
    clock = ManualClock(START)
    recorder.refusals = 2
    trigger = await timers(TimerTrigger("beat", every(), recorder, store, clock))
    await tick(clock)
    assert recorder.refused == 2 and recorder.ids() == [f"beat-{iso(FIRST)}"]
    assert trigger.status().state == "connected"
    assert "event log" in trigger.status().last_error


async def test_the_first_start_fires_nothing_from_the_past(store, recorder, timers):
    clock = ManualClock(FIRST)  # exactly on a tick: that tick is not fired late
    await timers(TimerTrigger("beat", every(catch_up=True), recorder, store, clock))
    assert await clock.next_sleeper() == FIRST + 30
    assert recorder.events == []


class BrokenOnceStore:
    """A state store with a bug on its first read."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.reads = 0

    async def get(self, key: str) -> Entry | None:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("unexpected bug")
        return await self.inner.get(key)

    async def put(self, key: str, value: bytes) -> int:
        return await self.inner.put(key, value)


async def test_a_bug_is_reported_and_the_trigger_starts_again(store, recorder, timers, caplog):
    clock = ManualClock(START)
    broken = BrokenOnceStore(store)
    trigger = await timers(TimerTrigger("beat", every(), recorder, broken, clock))
    assert await tick(clock) == FIRST
    assert recorder.ids() == [f"beat-{iso(FIRST)}"]
    assert "unexpected RuntimeError: unexpected bug" in trigger.status().last_error
    assert "timer trigger beat failed" in caplog.text
