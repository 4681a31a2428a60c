"""A node's counts in the state store: written when they change, read back at start, and a
stored value that is not a snapshot of counts ignored with one warning."""

from __future__ import annotations

import json

from fmesh.broker.memory_state import MemoryState
from fmesh.broker.tallies import Tallies
from fmesh.deploy.counters import CounterKeeper, counters_key

from fmesh.contracts import Steps
from fmesh.events import SENDER, Event

EVENT = Event({"specversion": "1.0", "id": "e-1", "source": "/t", "type": "t", SENDER: "admin"}, b"")


async def test_counts_written_by_one_keeper_are_read_back_by_the_next():
    state = MemoryState()
    first = CounterKeeper(Tallies(), state, "node-a")
    await first.load()
    first.tallies.accepted([(EVENT, [])])
    first.tallies.step(EVENT, "function:a", Steps.DELIVERED, 1, duration=0.01)
    await first.save()
    revision = (await state.get(counters_key("node-a"))).revision
    await first.save()   # nothing changed: nothing written
    assert (await state.get(counters_key("node-a"))).revision == revision

    second = CounterKeeper(Tallies(), state, "node-a")
    await second.load()
    assert second.tallies.unrouted == 1 and second.tallies.of("function:a").delivered == 1
    other = CounterKeeper(Tallies(), state, "node-b")   # each node keeps its own
    await other.load()
    assert other.tallies.unrouted == 0


async def test_a_corrupt_stored_value_is_ignored_with_one_warning_and_replaced(caplog):
    state = MemoryState()
    for value in (b"\xff{not json", json.dumps({"version": 1, "unrouted": "many"}).encode()):
        await state.put(counters_key("node-a"), value)
        keeper = CounterKeeper(Tallies(), state, "node-a")
        await keeper.load()
        [warning] = [r.getMessage() for r in caplog.records]
        caplog.clear()
        assert "counters/node-a in the store is not a snapshot of counts" in warning
        assert keeper.tallies.unrouted == 0
    keeper.tallies.accepted([(EVENT, [])])
    await keeper.save()
    assert json.loads((await state.get(counters_key("node-a"))).value)["unrouted"] == 1
