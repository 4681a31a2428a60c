"""The event trail's parts: both stores (one suite), the recorder, the path view, the live feed."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.trail import recorder as recorder_module
from fmesh.broker.trail.live import Listener
from fmesh.broker.trail.memory import MemoryTrail
from fmesh.broker.trail.recorder import TrailRecorder
from fmesh.broker.trail.sqlite import ARRIVAL, BLOCK_ROWS, BY_ID, SqliteTrail
from fmesh.broker.trail.store import Arrival, Step
from fmesh.broker.trail.view import Trace

from fmesh.contracts import Steps
from fmesh.events import MAX_HOPS, SENDER, Event


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    trail = MemoryTrail() if request.param == "memory" else SqliteTrail(tmp_path / "trail.db")
    yield trail
    trail.close()


def event(event_id: str, event_type: str = "t", **extensions) -> Event:
    return Event({"specversion": "1.0", "id": event_id, "source": "/s", "type": event_type, SENDER: "admin",
                  **extensions}, b"")


def arrival(event_id: str, at: float = 100.0, routed: tuple[str, ...] = ("function:a",)) -> Arrival:
    return Arrival(at, event_id, "/s", "t", "admin", None, routed)


def accepted(event_id: str, at: float = 100.0, routed: tuple[str, ...] = ("function:a",)) -> tuple:
    return at, [(event(event_id).attributes, routed)]


def noted(event_id: str, kind: str, at: float = 101.0, attempt: int = 0, status: int | None = None,
          seconds: float | None = None, error: str | None = None, due: float | None = None,
          detail: str | None = None, subscription: str = "function:a") -> tuple:
    return at, event(event_id).attributes, subscription, kind, attempt, status, seconds, error, due, detail


def test_a_store_gives_back_what_it_was_given(store):
    store.write([accepted("e1"), accepted("e2", routed=()), accepted("e3", routed=("a", "b"))],
                [noted("e1", Steps.RETRYING, attempt=1, status=500, seconds=0.0025, error="boom" * 200, due=200.0),
                 noted("e1", Steps.REPLY, detail="r1"), noted("e1", Steps.DELIVERED, attempt=2)])
    store.write([], [noted("e3", Steps.DELIVERED, at=102.0, subscription="a")])  # a later write: a row of its own
    assert store.arrivals("e1") == [arrival("e1")]
    assert store.arrivals("e3")[0].routed == ("a", "b")
    assert [s.kind for s in store.steps("e1")] == ["retrying", "reply", "delivered"]
    assert store.steps("e1")[0] == Step(101.0, "e1", "/s", "function:a", Steps.RETRYING, 1, 500, 2.5,
                                        ("boom" * 200)[:500], 200.0)
    assert [(s.subscription, s.kind) for s in store.steps("e3")] == [("a", "delivered")]
    assert [(s.id, s.source, s.subscription) for s in store.parents("r1")] == [("e1", "/s", "function:a")]
    assert [a.id for a in store.recent(10, unrouted=True)] == ["e2"]
    assert [a.id for a in store.recent(2, unrouted=False)] == ["e3", "e2"]
    assert store.arrivals("nope") == [] and store.steps("nope") == [] and store.parents("e1") == []


def test_an_id_that_is_not_valid_unicode_is_kept_too(store):
    store.write([accepted("bad\udc80id"), accepted("fine")], [noted("bad\udc80id", Steps.DELIVERED)])
    assert store.arrivals("bad\udc80id") and store.steps("bad\udc80id") and store.arrivals("fine")


def test_retention_by_age_and_by_count(store):
    store.write([accepted(f"e{i}", at=float(i)) for i in range(10)],
                [noted(f"e{i}", Steps.DELIVERED, at=float(i)) for i in range(10)])
    store.prune(before=3.0, keep=100)
    assert [i for i in range(10) if store.arrivals(f"e{i}")] == list(range(3, 10))
    store.prune(before=0.0, keep=2)
    assert [i for i in range(10) if store.arrivals(f"e{i}")] == [8, 9]
    assert store.steps("e9") and not store.steps("e0")
    store.prune(before=0.0, keep=0)
    assert not store.arrivals("e9")


def test_the_sqlite_trail_survives_reopening(tmp_path):
    first = SqliteTrail(tmp_path / "trail.db")
    first.write([accepted("e1")], [noted("e1", Steps.DELIVERED)])
    first.close()
    again = SqliteTrail(tmp_path / "trail.db")
    assert again.arrivals("e1") == [arrival("e1")] and len(again.steps("e1")) == 1
    again.close()


def test_an_event_is_found_in_every_block_of_the_id_index(tmp_path):
    trail = SqliteTrail(tmp_path / "trail.db")
    rows = 3 * BLOCK_ROWS + 10
    trail.write([accepted(f"e{i}", at=float(i)) for i in range(rows)], [])  # e0 also comes back in the last block
    trail.write([accepted("e0", at=float(rows))], [noted("e0", Steps.DELIVERED, at=float(rows))])
    assert [a.at for a in trail.arrivals("e0")] == [0.0, float(rows)] and len(trail.steps("e0")) == 1
    assert trail.arrivals(f"e{2 * BLOCK_ROWS + 5}")
    trail.prune(before=float(BLOCK_ROWS + 7), keep=10 * rows)  # the oldest blocks go, lookups start later
    assert [a.at for a in trail.arrivals("e0")] == [float(rows)] and not trail.arrivals("e1")
    plan = " ".join(row[-1] for row in trail._conn.execute(
        "EXPLAIN QUERY PLAN " + BY_ID.format(select=ARRIVAL, which="arrival IS NOT NULL"), ("e0",)))
    assert "USING INDEX records_by_id" in plan and "SCAN records" not in plan
    trail.close()


def test_a_write_rewrites_few_pages_of_a_large_trail(tmp_path):
    """Random ids spread over an index on the id alone rewrite a page per new row; blocks keep a
    write's index entries together. Counted in WAL frames, with checkpoints stopped."""
    trail = SqliteTrail(tmp_path / "trail.db")
    ids = iter(uuid.uuid4().hex for _ in range(30_500))
    for _ in range(30):
        trail.write([accepted(next(ids)) for _ in range(1000)], [])
    trail._conn.execute("PRAGMA wal_autocheckpoint=0")
    trail._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    trail.write([accepted(next(ids)) for _ in range(500)], [])
    frames = trail._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert frames < 120, f"{frames} pages written for 500 rows"
    trail.close()


async def test_the_path_of_an_event_with_retries_and_a_reply_routed_on():
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    greeting, reply = event("e1"), event("r1", "t.reply", **{SENDER: "function:a"})
    recorder.accepted([(greeting, ["function:a", "subscription:audit"])])
    recorder.step(greeting, "function:a", Steps.RETRYING, 1, 503, 0.002, "busy", time.time() + 1)
    recorder.step(greeting, "function:a", Steps.REPLY, 2, detail="r1")
    recorder.accepted([(reply, ["function:b"])])
    recorder.step(greeting, "function:a", Steps.DELIVERED, 2, duration=0.004)
    recorder.step(reply, "function:b", Steps.DEAD_LETTERED, 1, 400, error="bad")

    [entry] = await recorder.trace("e1")
    assert entry["outcome"] == {"function:a": "delivered", "subscription:audit": "pending"}
    assert [s["duration_ms"] for s in entry["steps"]] == [2.0, None, 4.0]
    [nested] = entry["replies"]
    assert nested["id"] == "r1" and nested["parent"] == {"id": "e1", "source": "/s"}
    assert nested["outcome"] == {"function:b": "dead-lettered"}
    assert await recorder.trace("nope") == []
    await recorder.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_a_reply_the_mesh_did_not_store_shows_under_its_parent_and_says_why(store):
    recorder = TrailRecorder(store, retention=3600, max_events=100)
    parent = event("e1")
    cut = event("r1", "t.reply", **{SENDER: "function:a"})
    looped = event("r2", "t.reply", **{SENDER: "function:a"})
    recorder.accepted([(parent, ["function:a"])])
    recorder.step(parent, "function:a", Steps.DELIVERED, 1, duration=0.001)
    recorder.step(cut, "function:a", Steps.DEAD_LETTERED, 0, error="reply hop limit 16 reached")
    recorder.step(parent, "function:a", Steps.REPLY, 1, error="reply hop limit 16 reached", detail="r1")
    recorder.step(looped, "", Steps.LOOPED, detail="this mesh is on its path already: dropped")
    recorder.step(parent, "function:a", Steps.REPLY, 1, detail="r2")

    [entry] = await recorder.trace("e1")
    assert entry["stored"] is True
    first, second = entry["replies"]
    assert (first["id"], first["stored"], first["parent"]) == ("r1", False, {"id": "e1", "source": "/s"})
    assert first["outcome"] == {"function:a": "dead-lettered"} and "hop limit" in first["steps"][0]["error"]
    assert (second["id"], second["stored"]) == ("r2", False)
    assert [s["kind"] for s in second["steps"]] == ["looped"]
    [alone] = await recorder.trace("r1")   # looked up itself, it names its parent
    assert alone["stored"] is False and alone["parent"]["id"] == "e1"
    await recorder.close()


async def test_an_event_whose_arrival_was_pruned_is_not_called_unstored():
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    recorder.step(event("e1"), "function:a", Steps.DELIVERED, 1)
    [entry] = await recorder.trace("e1")
    assert entry["at"] is None and entry["stored"] is None and entry["parent"] is None
    await recorder.close()


def test_a_reply_loop_is_shown_to_the_reply_that_was_cut():
    """The view follows a whole chain of `MAX_HOPS` replies, and the one dead-lettered after it."""
    store = MemoryTrail()
    ids = [f"e{n}" for n in range(MAX_HOPS + 2)]
    replies = [event(i, **{SENDER: "function:a"}).attributes for i in ids[:-1]]
    store.write([(100.0 + n, [(attributes, ["function:a"])]) for n, attributes in enumerate(replies)],
                [*(noted(i, Steps.REPLY, at=100.5 + n, detail=ids[n + 1]) for n, i in enumerate(ids[:-1])),
                 noted(ids[-1], Steps.DEAD_LETTERED, at=200.0, error="reply hop limit 16 reached")])
    [entry] = Trace(store).of("e0")
    depth = 0
    while entry["replies"]:
        [entry] = entry["replies"]
        depth += 1
    assert depth == MAX_HOPS + 1 and entry["id"] == ids[-1] and entry["stored"] is False


async def test_an_event_sent_twice_keeps_two_paths():
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    recorder.accepted([(event("e1"), ["function:a"])])
    recorder.step(event("e1"), "function:a", Steps.DELIVERED, 1)
    await asyncio.sleep(0.01)  # the second arrival must be later than the first's step (the clock moves)
    recorder.accepted([(event("e1"), ["function:a"])])
    first, second = await recorder.trace("e1")
    assert len(first["steps"]) == 1 and first["outcome"] == {"function:a": "delivered"}
    assert second["steps"] == [] and second["outcome"] == {"function:a": "pending"}
    await recorder.close()


class BrokenStore(MemoryTrail):
    def write(self, arrivals, steps):
        raise OSError(28, "No space left on device")


async def test_a_failing_store_costs_the_trail_not_the_events(caplog):
    recorder = TrailRecorder(BrokenStore(), retention=3600, max_events=100)
    recorder.accepted([(event("e1"), ["function:a"]), (event("e2"), [])])
    await recorder.flush()  # does not raise
    await recorder.flush()
    assert recorder.dropped == 2
    assert caplog.text.count("the event trail could not be written") == 1  # said once, not per batch
    await recorder.close()


async def test_what_waits_to_be_written_is_bounded(monkeypatch):
    monkeypatch.setattr(recorder_module, "MAX_PENDING", 5)
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    for i in range(8):
        recorder.accepted([(event(f"e{i}"), ["function:a"])])
    await recorder.flush()
    assert recorder.dropped == 3 and not await recorder.trace("e0") and await recorder.trace("e7")
    await recorder.close()


async def test_the_broker_tells_the_trail_what_it_routed_and_what_it_dropped():
    broker = Broker(MemoryEventLog(), mesh_id="here")
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    broker.observers.append(recorder)
    broker.subscribe("function:a", compile_shorthand({"type": "t"}))
    await broker.publish([event("e1"), event("e2", "other")])
    bridged = event("b1", fmeshpath="there")
    await broker.publish([bridged])
    await broker.publish([bridged])  # the sender's retry: a duplicate
    await broker.publish([event("b2", fmeshpath="there,here")])  # a loop
    assert (await recorder.trace("e1"))[0]["routed"] == ["function:a"]
    assert (await recorder.recent(10, unrouted=True))[0]["id"] == "e2"
    [b1] = await recorder.trace("b1")
    assert b1["path"] == "there" and [s["kind"] for s in b1["steps"]] == ["duplicate"]
    [b2] = await recorder.trace("b2")
    assert b2["at"] is None and [s["kind"] for s in b2["steps"]] == ["looped"]
    await recorder.close()


async def test_watchers_see_records_as_they_happen_and_a_slow_one_misses_some(monkeypatch):
    recorder = TrailRecorder(MemoryTrail(), retention=3600, max_events=100)
    listener = recorder.live.listen()
    recorder.accepted([(event("e1"), ["function:a"])])
    recorder.step(event("e1"), "function:a", Steps.DELIVERED, 1)
    first, second = await listener.next(1), await listener.next(1)
    assert (first.kind, first.what.id) == ("accepted", "e1") and second.what.kind == "delivered"
    assert await listener.next(0.01) is None  # nothing more: a keep-alive is due
    for i in range(listener.queue.maxsize + 3):
        recorder.step(event(f"x{i}"), "function:a", Steps.DELIVERED, 1)
    assert listener.missed == 3
    recorder.live.forget(listener)
    assert not recorder.live.listening
    await recorder.close()


async def test_a_watcher_that_goes_away_mid_wait_leaves_no_task_pending():
    """A client leaving /v1/events/stream cancelled `next` inside its wait, and its two
    waits were left pending: "Task was destroyed but it is pending!" in the mesh's log."""
    listener = Listener()
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(listener.next(timeout=30))
    await asyncio.sleep(0)  # into the wait
    assert len(asyncio.all_tasks() - before) == 3  # it and its two waits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(3):  # the cancelled waits finish within a few turns
        await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
