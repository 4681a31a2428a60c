"""Leases in shared state, and timers on many nodes firing once per tick."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fmesh.broker.memory_state import MemoryState
from fmesh.triggers.clock import ManualClock
from fmesh.triggers.config import TimerTriggerConfig
from fmesh.triggers.lease import Lease
from fmesh.triggers.timer import TimerTrigger

START = 1_700_000_000.0


async def test_one_holder_at_a_time_and_a_lapsed_lease_is_taken_over():
    state, clock = MemoryState(), ManualClock(START)
    a, b = Lease(state, "lease/x", clock, ttl=10), Lease(state, "lease/x", clock, ttl=10)
    assert await a.acquire() and not await b.acquire()
    assert b.other == a.holder
    clock.advance(5)
    assert await a.acquire() and not await b.acquire()  # renewed: still a's
    clock.advance(11)                                     # a stopped renewing
    assert not a.held() and await b.acquire()
    assert not await a.acquire() and a.other == b.holder  # a, back, finds b holds it


async def test_a_released_lease_is_free_at_once():
    state, clock = MemoryState(), ManualClock(START)
    a, b = Lease(state, "lease/x", clock), Lease(state, "lease/x", clock)
    assert await a.acquire()
    await a.release()
    assert await b.acquire()


async def test_two_racing_for_a_lapsed_lease_do_not_both_win():
    state, clock = MemoryState(), ManualClock(START)
    holder = Lease(state, "lease/x", clock, ttl=10)
    await holder.acquire()
    clock.advance(11)
    racers = [Lease(state, "lease/x", clock, ttl=10) for _ in range(5)]
    won = await asyncio.gather(*(r.acquire() for r in racers))
    assert won.count(True) == 1


async def test_an_unreadable_lease_record_is_taken_over():
    state, clock = MemoryState(), ManualClock(START)
    await state.put("lease/x", b"\xff not json")
    assert await Lease(state, "lease/x", clock).acquire()


class Recorder:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, events) -> None:
        self.ids.extend(e.id for e in events)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def run_for(clock: ManualClock, seconds: int) -> None:
    """Move the clock a second at a time, letting every trigger do what falls due."""
    for _ in range(seconds):
        clock.advance(1)
        for _ in range(50):
            await asyncio.sleep(0)


async def test_timers_on_three_nodes_fire_once_per_tick_and_survive_the_holder_dying():
    state, clock, recorder = MemoryState(), ManualClock(START), Recorder()
    config = TimerTriggerConfig(every="30s", catch_up=True)
    nodes = [TimerTrigger("beat", config, recorder, state, clock, shared=True, lease_ttl=10) for _ in range(3)]
    for node in nodes:
        await node.start()
    try:
        await run_for(clock, 95)
        first = [iso(t) for t in range(int(START // 30 + 1) * 30, int(START + 95) + 1, 30)]
        assert recorder.ids == [f"beat-{t}" for t in first]
        standing_by = [n for n in nodes if "standby" in n.status().detail]
        assert len(standing_by) == 2
        [holder] = [n for n in nodes if n not in standing_by]
        holder._task.cancel()  # dies: no clean stop, the lease is not handed over
        await asyncio.gather(holder._task, return_exceptions=True)
        await run_for(clock, 120)
        ticks = range(int(START // 30 + 1) * 30, int(START + 215) + 1, 30)
        assert recorder.ids == [f"beat-{iso(t)}" for t in ticks]  # each once, none lost in the takeover
    finally:
        for node in nodes:
            await node.stop()


async def test_without_catch_up_a_takeover_still_fires_every_tick():
    state, clock, recorder = MemoryState(), ManualClock(START), Recorder()
    config = TimerTriggerConfig(every="5s")  # catch_up off: only ticks missed while all were down are skipped
    nodes = [TimerTrigger("beat", config, recorder, state, clock, shared=True, lease_ttl=10) for _ in range(2)]
    for node in nodes:
        await node.start()
    try:
        await run_for(clock, 20)
        [holder] = [n for n in nodes if "standby" not in n.status().detail]
        holder._task.cancel()
        await asyncio.gather(holder._task, return_exceptions=True)
        await run_for(clock, 40)
        first = int(START // 5 + 1) * 5
        assert recorder.ids == [f"beat-{iso(t)}" for t in range(first, int(START + 60) + 1, 5)]
    finally:
        for node in nodes:
            await node.stop()


class LosesOneAnswer(MemoryState):
    """Writes an update, then fails to say so once (a reply lost on the way)."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = False

    async def update(self, key, value, revision):
        written = await super().update(key, value, revision)
        if self.lose:
            self.lose = False
            from fmesh.errors import StoreError
            raise StoreError("reply lost")
        return written


async def test_a_renewal_whose_answer_was_lost_keeps_the_lease():
    from fmesh.errors import StoreError

    state, clock = LosesOneAnswer(), ManualClock(START)
    lease, other = Lease(state, "lease/x", clock, ttl=10), Lease(state, "lease/x", clock, ttl=10)
    assert await lease.acquire()
    state.lose = True
    try:
        await lease.acquire()
    except StoreError:
        pass
    assert await lease.acquire() and not await other.acquire()


async def test_a_holder_that_lost_its_lease_never_moves_the_last_tick_back():
    state, clock = MemoryState(), ManualClock(START)
    timer = TimerTrigger("beat", TimerTriggerConfig(every="5s"), Recorder(), state, clock, shared=True)
    await timer._record(START + 10)
    await timer._record(START + 5)  # a stale holder, late
    assert (await state.get("trigger/beat/last")).value == iso(START + 10).encode()
