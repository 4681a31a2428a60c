"""The SQLite event log on a disk that fills up: the group that could not be written fails,
and only that group, with a StoreError that names the full disk (the ingress's 503); what
was stored before stays; the connection stays usable; writes work again once there is room."""

from __future__ import annotations

import asyncio

import pytest
from fmesh.broker.sqlite_log import SqliteEventLog
from fmesh.broker.sqlite_state import SqliteState
from small_disk import small_disk

from fmesh.errors import StoreError
from fmesh.events import new_event

PAYLOAD = b"x" * 4000


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "small", "1m") as disk:
        yield disk


@pytest.fixture
async def log(disk):
    store = SqliteEventLog(disk.path / "mesh.db")
    await store.open()
    yield store
    await store.close()


def routed(n: int) -> list:
    return [(new_event(type="full.test", source="/t", data=PAYLOAD), ["sub"]) for _ in range(n)]


async def fill_until_refused(log: SqliteEventLog) -> StoreError:
    """Append until the log's own room (free pages, the WAL) is gone too: the refusal."""
    for _ in range(1000):
        try:
            await log.append(routed(2))
        except StoreError as exc:
            return exc
    raise AssertionError("the event log never ran out of room")


async def test_a_full_disk_fails_each_publisher_of_the_batch_with_a_store_error_naming_it(log, disk):
    await log.append(routed(10))
    disk.fill()
    first = await fill_until_refused(log)
    stored = await log.pending("sub")
    batch = await asyncio.gather(*(log.append(routed(1)) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(result, StoreError) for result in batch), batch
    for error in (first, *batch):
        assert "disk full" in str(error) and "no space left on device" in str(error), error
        assert str(log.path) not in str(error), "a publisher is not told the server's paths"
    assert not log._conn.in_transaction, "a failed transaction is rolled back"
    assert await log.pending("sub") == stored >= 10, "what was stored before stays"

    disk.free()
    await log.append(routed(3))
    assert await log.pending("sub") == stored + 3
    claimed = await log.claim("sub", 5)
    await log.ack([d.id for d in claimed])
    assert await log.pending("sub") == stored - 2


async def test_acks_and_state_writes_fail_while_full_and_work_again_after(log, disk):
    state = SqliteState(log.submit)
    await log.append(routed(5))
    claimed = await log.claim("sub", 5)
    disk.fill()
    await fill_until_refused(log)
    with pytest.raises(StoreError, match="disk full"):
        # Big enough that the WAL has no room for it, whatever was freed before.
        await state.put("nodes/n1", b"h" * 200_000)
    disk.free()
    await log.ack([d.id for d in claimed])
    assert await state.put("nodes/n1", b"heartbeat") > 0
    assert (await state.get("nodes/n1")).value == b"heartbeat"


async def test_closing_on_a_full_disk_keeps_the_wal_for_the_next_open(disk):
    log = SqliteEventLog(disk.path / "mesh.db")
    await log.open()
    await log.append(routed(10))
    disk.fill()
    await fill_until_refused(log)
    stored = await log.pending("sub")
    await log.close()  # its checkpoint cannot grow the database file: no raise, the WAL stays
    disk.free()
    again = SqliteEventLog(disk.path / "mesh.db")
    await again.open()
    try:
        assert await again.pending("sub") == stored
    finally:
        await again.close()
