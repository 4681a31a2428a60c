"""What the SQLite log writes per event, and what it no longer writes: claims are kept in
memory (a claim lasts as long as the process, so writing it to the file cost a transaction
and two WAL pages per event and bought nothing), and only keyed deliveries are indexed by
key. Checked: nothing of a claim reaches the file, a claim made in a transaction that rolls
back is undone with it, and ordered claims still find keys through an index."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from fmesh.broker.inflight import InFlight
from fmesh.broker.sqlite_log import ORDERED_CLAIM, SCHEMA, SqliteEventLog

from fmesh.errors import StoreError
from fmesh.events import new_event


@pytest.fixture
async def log(tmp_path):
    store = SqliteEventLog(tmp_path / "mesh.db")
    await store.open()
    yield store
    await store.close()


def event(i: int):
    return new_event(type="claims.test", source="/t", data={"i": i})


async def test_claiming_and_releasing_write_nothing_to_the_file(log, tmp_path):
    await log.append([(event(i), ["sub"]) for i in range(5)])
    observer = sqlite3.connect(tmp_path / "mesh.db")
    try:
        # data_version changes when another connection commits a change to the file.
        version = observer.execute("PRAGMA data_version").fetchone()[0]
        claimed = await log.claim("sub", 3)
        await log.release([d.id for d in claimed[:1]])
        assert observer.execute("PRAGMA data_version").fetchone()[0] == version
        assert len(claimed) == 3
        await log.ack([claimed[1].id])
        assert observer.execute("PRAGMA data_version").fetchone()[0] != version  # an ack does write
    finally:
        observer.close()


async def test_claims_are_honoured_without_the_file(log):
    await log.append([(event(i), ["sub"]) for i in range(4)])
    first = await log.claim("sub", 2)
    rest = await log.claim("sub", 10)
    assert [d.event.data["i"] for d in first + rest] == [0, 1, 2, 3]
    await log.release([first[0].id])
    await log.retry(first[1], 0, "failed")
    again = await log.claim("sub", 10)
    assert sorted(d.event.data["i"] for d in again) == [0, 1]


async def test_a_claim_in_a_group_that_fails_is_undone_with_it(log):
    """One failing operation makes its group run again one by one: the claim's first run was
    rolled back, so its second run must hand out the same deliveries, not skip them as taken."""
    await log.append([(event(i), ["sub"]) for i in range(2)])

    def fails(conn: sqlite3.Connection) -> None:
        raise sqlite3.IntegrityError("this operation fails")

    # The claim reaches the writer first, the failing operation right after, in the same turn.
    claiming = asyncio.ensure_future(log.claim("sub", 10))
    await asyncio.sleep(0)
    failing = asyncio.ensure_future(log.submit(fails))
    claimed = await claiming
    with pytest.raises(StoreError, match="this operation fails"):
        await failing
    assert [d.event.data["i"] for d in claimed] == [0, 1]
    assert await log.claim("sub", 10) == []



class RollbackFails:
    """The log's connection, except that ROLLBACK fails (an I/O error at the worst moment)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args):
        if sql == "ROLLBACK":
            self._conn.execute(sql)
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


async def test_a_claim_is_undone_even_when_the_rollback_fails(log):
    await log.append([(event(i), ["sub"]) for i in range(2)])
    real, log._conn = log._conn, RollbackFails(log._conn)

    def fails(conn: sqlite3.Connection) -> None:
        raise sqlite3.IntegrityError("this operation fails")

    try:
        claiming = asyncio.ensure_future(log.claim("sub", 10))
        await asyncio.sleep(0)
        failing = asyncio.ensure_future(log.submit(fails))
        for outcome in await asyncio.gather(claiming, failing, return_exceptions=True):
            assert isinstance(outcome, StoreError)  # the whole group failed: nothing was handed out
    finally:
        log._conn = real
    assert [d.event.data["i"] for d in await log.claim("sub", 10)] == [0, 1]

def test_in_flight_rolls_back_takes_and_drops():
    inflight = InFlight()
    inflight.take("a", [1, 2])
    inflight.commit()
    inflight.drop([1, 99])
    inflight.take("b", [3])
    inflight.drop_subscription("a")
    assert len(inflight) == 1
    inflight.rollback()
    assert inflight.of("a") == {1, 2} and inflight.of("b") == set()
    assert len(inflight) == 2


async def test_an_older_log_gets_the_key_index_of_keyed_deliveries_only(tmp_path):
    path = tmp_path / "mesh.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(SCHEMA.replace(
        "deliveries_keyed ON deliveries(subscription, okey, id) WHERE okey IS NOT NULL",
        "deliveries_key ON deliveries(subscription, okey, id)"))
    old.close()
    log = SqliteEventLog(path)
    await log.open()
    await log.close()
    check = sqlite3.connect(path)
    indexes = dict(check.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='deliveries'"))
    check.close()
    assert "deliveries_key" not in indexes
    assert indexes["deliveries_keyed"].endswith("WHERE okey IS NOT NULL")


def test_ordered_claims_look_keys_up_in_the_index():
    """The partial index serves the ordered claim only if SQLite sees that `e.okey = d.okey`
    implies `okey IS NOT NULL`; without it each claim would scan the subscription's rows."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + ORDERED_CLAIM, ("sub", 0.0, 10)))
    conn.close()
    assert "USING COVERING INDEX deliveries_keyed" in plan, plan
