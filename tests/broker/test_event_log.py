"""One suite for every event log: the in-memory twin, SQLite and JetStream must behave the same.

JetStream keeps due times on its server, where no test clock reaches (the clock still
stamps when deliveries are stored and keys seen): there a retry's delay is short and
really waited for (`when_due`), elsewhere the clock is moved past it."""

from __future__ import annotations

import time

import pytest
from fmesh.broker.jetstream import JetStreamEventLog
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.sqlite_log import SqliteEventLog
from jetstream_mesh import JetStreamMesh

from fmesh.contracts import DeadLetter
from fmesh.events import new_event


class Clock:
    """Time that a test moves on, for when deliveries fall due."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "sqlite", "jetstream"])
async def log(request, tmp_path):
    clock = Clock()
    if request.param == "jetstream":
        mesh = JetStreamMesh(request.getfixturevalue("jetstream_server"), tmp_path)
        try:
            store = (await mesh.store()).log
            store.clock = clock
            yield store
        finally:
            await mesh.close()
        return
    store = MemoryEventLog(clock) if request.param == "memory" else SqliteEventLog(tmp_path / "mesh.db", clock=clock)
    await store.open()
    yield store
    await store.close()


def retry_delay(log) -> float:
    """A delay no claim in the test outlasts by accident, short where it is really waited for."""
    return 0.3 if isinstance(log, JetStreamEventLog) else 60.0


async def when_due(log, subscription: str, delay: float, limit: int = 10, ordered: bool = False):
    """The claim once a retry of `delay` seconds is due: the test clock moved past it, or,
    where due times are the server's, a claim that waits for it."""
    if isinstance(log, JetStreamEventLog):
        return await log.claim(subscription, limit, ordered, wait=delay + 5)
    log.clock.advance(delay + 1)
    return await log.claim(subscription, limit, ordered)


async def test_append_fans_out_one_delivery_per_subscription(log):
    event = new_event("t", "/s", {"a": 1})
    await log.append([(event, ["one", "two"])])
    one = await log.claim("one", 10)
    two = await log.claim("two", 10)
    assert [d.event for d in one] == [event]
    assert [d.event for d in two] == [event]
    assert one[0].id != two[0].id


async def test_claimed_deliveries_are_not_handed_out_twice(log):
    await log.append([(new_event("t", "/s"), ["sub"]) for _ in range(5)])
    first = await log.claim("sub", 3)
    second = await log.claim("sub", 10)
    assert len(first) == 3 and len(second) == 2
    assert not {d.id for d in first} & {d.id for d in second}
    assert (await log.claim("sub", 10)) == []


async def test_claim_keeps_publish_order(log):
    events = [new_event("t", "/s", {"i": i}) for i in range(20)]
    await log.append([(e, ["sub"]) for e in events])
    claimed = await log.claim("sub", 100)
    assert [d.event.data["i"] for d in claimed] == list(range(20))


async def test_ack_forgets_and_retry_reschedules_with_the_attempt_counted(log):
    await log.append([(new_event("t", "/s"), ["sub"]), (new_event("t", "/s"), ["sub"])])
    a, b = (await log.claim("sub", 10))
    await log.ack([a.id])
    await log.retry(b, retry_delay(log), "boom")
    assert await log.claim("sub", 10) == []
    again = await when_due(log, "sub", retry_delay(log))
    assert [(d.id, d.attempts, d.last_error) for d in again] == [(b.id, 1, "boom")]
    assert await log.pending("sub") == 1


async def test_dead_letters_are_kept_listed_counted_and_removable(log):
    event = new_event("t", "/s", b"\x00\x01")
    await log.append([(event, ["sub"])])
    delivery = (await log.claim("sub", 1))[0]
    await log.dead_letter(delivery, DeadLetter(0, "sub", event, 3, "gave up", 500, "boom", time.time()))
    assert await log.pending("sub") == 0
    letters = await log.dead_letters("sub")
    assert [(d.event, d.attempts, d.reason, d.status, d.error) for d in letters] == [
        (event, 3, "gave up", 500, "boom")]
    assert await log.count_dead_letters() == {"sub": 1}
    assert await log.dead_letters("other") == []
    moved = await log.replay_dead_letters([letters[0].id, 999999], lambda d: (d.event, ["again"]))
    assert [d.event for d in moved] == [event]
    assert await log.dead_letters() == []
    assert [d.event for d in (await log.claim("again", 10))] == [event]


async def dead_letters_of(log, count: int) -> list[DeadLetter]:
    for i in range(count):
        event = new_event("t", "/s", {"i": i})
        await log.append([(event, ["sub"])])
        delivery = (await log.claim("sub", 1))[0]
        await log.dead_letter(delivery, DeadLetter(0, "sub", event, 1, "gave up", None, None, time.time()))
    return await log.dead_letters("sub")


async def test_replay_is_all_or_nothing_when_it_fails_midway(log):
    from fmesh.errors import StoreError

    letters = await dead_letters_of(log, 3)

    def fails_on_the_second(letter):
        if letter.id == letters[1].id:
            raise StoreError("disk full")
        return letter.event, ["again"]

    with pytest.raises(StoreError):
        await log.replay_dead_letters([d.id for d in letters], fails_on_the_second)
    assert [d.id for d in await log.dead_letters()] == [d.id for d in letters]
    assert await log.pending("again") == 0


async def test_replay_keeps_a_letter_that_no_subscription_takes(log):
    letters = await dead_letters_of(log, 2)
    moved = await log.replay_dead_letters([d.id for d in letters],
                                          lambda d: (d.event, ["again"] if d.id == letters[0].id else []))
    assert [d.id for d in moved] == [letters[0].id]
    assert [d.id for d in await log.dead_letters()] == [letters[1].id]


async def test_dead_letter_ids_are_never_reused_after_purge_or_replay(log):
    first = await dead_letters_of(log, 2)
    await log.purge_dead_letters()
    second = await dead_letters_of(log, 1)
    await log.replay_dead_letters([second[0].id], lambda d: (d.event, ["again"]))
    third = await dead_letters_of(log, 1)
    ids = [d.id for d in first + second + third]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


async def test_delivery_ids_are_never_reused_after_an_ack(log):
    await log.append([(new_event("t", "/s"), ["sub"])])
    [old] = (await log.claim("sub", 1))
    await log.ack([old.id])
    await log.append([(new_event("t", "/s"), ["sub"])])
    [new] = (await log.claim("sub", 1))
    assert new.id != old.id
    await log.ack([old.id])  # a late, repeated ack of the old one must not remove the new one
    assert await log.pending("sub") == 1


async def test_redirect_hands_a_delivery_to_another_subscription(log):
    await log.append([(new_event("t", "/s"), ["from"])])
    delivery = (await log.claim("from", 1))[0]
    changed = new_event("t", "/s", {"why": "failed"})
    await log.redirect(delivery.id, "to", changed)
    moved = (await log.claim("to", 10))
    assert [(d.event, d.attempts) for d in moved] == [(changed, 0)]
    assert await log.pending("from") == 0


async def test_drop_subscription_forgets_its_pending_deliveries(log):
    await log.append([(new_event("t", "/s"), ["a", "b"])])
    await log.drop_subscription("a")
    assert await log.pending("a") == 0 and await log.pending("b") == 1


async def test_sqlite_keeps_deliveries_and_retry_state_across_reopen(tmp_path):
    path = tmp_path / "mesh.db"
    log = SqliteEventLog(path)
    await log.open()
    await log.append([(new_event("t", "/s", {"n": 1}), ["sub"]), (new_event("t", "/s", {"n": 2}), ["sub"])])
    first, second = (await log.claim("sub", 10))
    await log.retry(second, 30, "try later")
    await log.close()  # `first` stays claimed at close: a new process must see it again

    reopened = SqliteEventLog(path)
    await reopened.open()
    claimed = await reopened.claim("sub", 10)
    assert [d.id for d in claimed] == [first.id]
    reopened.clock = lambda: time.time() + 31
    later = await reopened.claim("sub", 10)
    assert [(d.id, d.attempts, d.last_error) for d in later] == [(second.id, 1, "try later")]
    await reopened.close()


async def test_sqlite_groups_concurrent_appends_and_keeps_them_all(tmp_path):
    import asyncio

    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    events = [new_event("t", "/s", {"i": i}) for i in range(500)]
    await asyncio.gather(*(log.append([(e, ["sub"])]) for e in events))
    assert await log.pending("sub") == 500
    await log.close()


async def test_sqlite_reports_an_unusable_path(tmp_path):
    from fmesh.errors import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = SqliteEventLog(blocker / "mesh.db")
    with pytest.raises((StoreError, OSError)):
        await log.open()


async def test_ordered_claims_hand_out_one_delivery_per_key_in_publish_order(log):
    events = [new_event("t", "/s", {"i": i}, partitionkey=f"k{i % 2}") for i in range(6)]
    events.append(new_event("t", "/s", {"i": "free"}))  # no key: never waits
    await log.append([(e, ["sub"]) for e in events])
    first = (await log.claim("sub", 10, ordered=True))
    assert [d.event.data["i"] for d in first] == [0, 1, "free"]
    assert (await log.claim("sub", 10, ordered=True)) == []
    await log.ack([first[0].id])  # k0's head done: its next one may go
    second = (await log.claim("sub", 10, ordered=True))
    assert [d.event.data["i"] for d in second] == [2]
    await log.retry(first[1], retry_delay(log), "later")  # a retrying head holds its key back
    assert (await log.claim("sub", 10, ordered=True)) == []
    retried = await when_due(log, "sub", retry_delay(log), ordered=True)
    assert [d.event.data["i"] for d in retried] == [1]


async def test_released_deliveries_can_be_claimed_again_without_an_attempt(log):
    await log.append([(new_event("t", "/s"), ["sub"])])
    [delivery] = (await log.claim("sub", 1))
    await log.release([delivery.id])
    [again] = (await log.claim("sub", 1))
    assert (again.id, again.attempts) == (delivery.id, 0)


async def test_sqlite_a_failing_operation_fails_alone_in_its_group(tmp_path):
    import asyncio

    from fmesh.errors import StoreError

    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()

    def broken(conn):
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(
        *(log.append([(new_event("t", "/s"), ["sub"])]) for _ in range(20)),
        log.submit(broken),
        *(log.append([(new_event("t", "/s"), ["sub"])]) for _ in range(20)),
        return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], StoreError) and "no_such_table" in str(failures[0])
    assert await log.pending("sub") == 40
    await log.close()


async def test_sqlite_hands_out_an_undecodable_row_marked_instead_of_failing_the_claim(tmp_path):
    import sqlite3

    path = tmp_path / "mesh.db"
    log = SqliteEventLog(path)
    await log.open()
    good = new_event("t", "/s", {"ok": True})
    await log.append([(good, ["sub"])])
    # Behind the log's back, as an older mesh or a corrupted page would leave them.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("INSERT INTO deliveries(subscription, attributes, payload, due_at) VALUES (?,?,?,0)",
                ("sub", b'{"specversion":"1.0","id":"x","source":"/s","type":"t","subject":"\\ud800"}', None))
    raw.execute("INSERT INTO deliveries(subscription, attributes, payload, due_at) VALUES (?,?,?,0)",
                ("sub", b"\xff not json", b"data"))
    raw.close()
    claimed = sorted((await log.claim("sub", 10)), key=lambda d: d.id)
    assert [d.undecodable is None for d in claimed] == [True, False, False]
    assert claimed[0].event == good
    salvaged, stub = claimed[1], claimed[2]
    assert salvaged.event.id == "x" and "surrogate" in salvaged.undecodable
    assert stub.event.type == "dev.fmesh.undecodable" and stub.event.payload.startswith(b"\xff not json")
    await log.close()


async def test_sqlite_migrates_tables_that_reused_ids(tmp_path):
    import sqlite3

    from fmesh.broker.sqlite_log import SCHEMA

    path = tmp_path / "mesh.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(SCHEMA.replace(" AUTOINCREMENT", ""))
    old.execute("INSERT INTO deliveries(subscription, attributes, due_at) VALUES ('sub', ?, 0)",
                (b'{"specversion":"1.0","id":"kept","source":"/s","type":"t"}',))
    old.close()
    log = SqliteEventLog(path)
    await log.open()
    [kept] = (await log.claim("sub", 10))
    assert kept.event.id == "kept"
    await log.ack([kept.id])
    await log.append([(new_event("t", "/s"), ["sub"])])
    [new] = (await log.claim("sub", 10))
    assert new.id > kept.id
    await log.close()


async def test_append_unique_drops_a_key_seen_within_the_window(log):
    first, again, other = new_event("t", "/s"), new_event("t", "/s"), new_event("t", "/s")
    stored = await log.append_unique([(first, ["sub"]), (other, ["sub"])], ["a", None], window=600)
    assert stored == [True, True]
    stored = await log.append_unique([(again, ["sub"]), (other, ["sub"])], ["a", None], window=600)
    assert stored == [False, True]  # the key was seen; an event without a key always goes in
    assert await log.pending("sub") == 3
    log.clock.advance(1)
    assert await log.append_unique([(again, ["sub"])], ["a"], window=0.5) == [True]  # outside the window


async def test_forget_seen_forgets_the_keys_seen_before_a_time(log):
    if isinstance(log, JetStreamEventLog):
        pytest.skip("JetStream's seen keys age out of their bucket by themselves: forget_seen is a no-op")
    event = new_event("t", "/s")
    assert await log.append_unique([(event, ["sub"])], ["a"], window=600) == [True]
    assert await log.forget_seen(log.clock() + 1) == 1
    assert await log.append_unique([(event, ["sub"])], ["a"], window=600) == [True]


async def test_backlog_counts_and_dates_the_oldest_delivery(log):
    assert await log.backlog("sub") == (0, None)
    before = log.clock()
    await log.append([(new_event("t", "/s"), ["sub"])])
    log.clock.advance(5)
    await log.append([(new_event("t", "/s"), ["sub"])])
    count, oldest = await log.backlog("sub")
    assert count == 2 and oldest == before
    [first, _] = (await log.claim("sub", 10))
    assert first.stored_at == oldest
    await log.retry(first, 60, "later")  # a retry does not make it younger
    assert (await log.backlog("sub"))[1] == oldest


async def test_sqlite_remembers_seen_keys_across_reopen(tmp_path):
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    assert await log.append_unique([(new_event("t", "/s"), ["sub"])], ["/s\x00e1"], 600) == [True]
    await log.close()
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    assert await log.append_unique([(new_event("t", "/s"), ["sub"])], ["/s\x00e1"], 600) == [False]
    await log.close()


async def test_sqlite_a_database_locked_by_another_process_fails_fast_and_recovers(tmp_path):
    import asyncio
    import sqlite3

    from fmesh.errors import StoreError

    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    other = sqlite3.connect(tmp_path / "mesh.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the database
    started = time.monotonic()
    results = await asyncio.gather(*(log.append([(new_event("t", "/s"), ["sub"])]) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) and "locked" in str(r) for r in results), results
    assert time.monotonic() - started < 3  # a bounded wait, then an answer: never a hang
    other.execute("COMMIT")
    other.close()
    await log.append([(new_event("t", "/s"), ["sub"])])
    assert await log.pending("sub") == 1
    await log.close()


async def test_sqlite_one_event_log_has_one_owner(tmp_path):
    from fmesh.errors import StoreError

    first = SqliteEventLog(tmp_path / "mesh.db")
    await first.open()
    second = SqliteEventLog(tmp_path / "mesh.db")
    with pytest.raises(StoreError, match="in use by another process"):
        await second.open()
    await first.close()
    await second.open()  # free again once the first has let go
    await second.close()


async def test_sqlite_forgets_seen_keys_in_chunks(tmp_path, monkeypatch):
    from fmesh.broker import sqlite_log

    monkeypatch.setattr(sqlite_log, "FORGET_CHUNK", 7)
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    events = [new_event("t", "/s") for _ in range(30)]
    await log.append_unique([(e, []) for e in events], [e.id for e in events], 600)
    assert await log.forget_seen(time.time() + 1) == 30
    assert await log.append_unique([(events[0], ["sub"])], [events[0].id], 600) == [True]
    await log.close()


async def test_a_claim_waits_for_an_append_and_returns_at_once(log):
    import asyncio

    started = time.monotonic()
    waiting = asyncio.create_task(log.claim("sub", 10, wait=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    event = new_event("t", "/s")
    await log.append([(event, ["sub"])])
    claimed = await asyncio.wait_for(waiting, 2)
    assert [d.event for d in claimed] == [event] and time.monotonic() - started < 2


async def test_a_claim_with_nothing_due_waits_no_longer_than_asked(log):
    started = time.monotonic()
    assert await log.claim("sub", 10, wait=0.2) == []
    assert 0.15 < time.monotonic() - started < 2


@pytest.fixture(params=["sqlite", "jetstream"])
async def real_time_log(request, tmp_path):
    """A log on real time (no test clock): a retry falls due while a claim waits."""
    if request.param == "jetstream":
        mesh = JetStreamMesh(request.getfixturevalue("jetstream_server"), tmp_path)
        try:
            yield (await mesh.store()).log
        finally:
            await mesh.close()
        return
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    yield log
    await log.close()


async def test_a_waiting_claim_sees_a_retry_fall_due(real_time_log):
    log = real_time_log
    await log.append([(new_event("t", "/s"), ["sub"])])
    [delivery] = await log.claim("sub", 1)
    await log.retry(delivery, 0.3, "later")
    started = time.monotonic()
    [again] = await log.claim("sub", 1, wait=10)
    assert again.attempts == 1 and 0.2 < time.monotonic() - started < 3
