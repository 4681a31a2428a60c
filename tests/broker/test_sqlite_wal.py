"""The SQLite event log's WAL stays bounded under steady writes. The background checkpoint
(PASSIVE, so that it never blocks the writer) copies the WAL into the database, but with
writes coming all the time the WAL is never wholly copied when a transaction begins, so
SQLite never starts it over: it grew by the megabyte per second (200 MiB in 3 minutes of
a 30 events/s soak) until the disk was full."""

from __future__ import annotations

import os
import sqlite3

import fmesh.broker.sqlite_log as sqlite_log
from fmesh.broker.sqlite_log import SqliteEventLog

from fmesh.events import new_event

LIMIT = 1024 * 1024


async def write_steadily(tmp_path, monkeypatch, count: int = 3000, every: float = 0.05) -> list[int]:
    """Append `count` events one by one with checkpoints every `every` seconds; the WAL
    file's size after each."""
    monkeypatch.setattr(sqlite_log, "WAL_LIMIT", LIMIT)
    monkeypatch.setattr(sqlite_log, "WAL_FILE_LIMIT", 4 * LIMIT)
    monkeypatch.setattr(sqlite_log, "WAL_HARD_LIMIT", 8 * LIMIT)
    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY", every)
    monkeypatch.setattr(sqlite_log, "WAL_LOOK_EVERY", 0)  # a look per group: the bound holds to one group's slack
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    try:
        sizes = [await append_one(log, tmp_path / "mesh.db-wal") for _ in range(count)]
        assert await log.pending("sub") == count
    finally:
        await log.close()
    return sizes


async def append_one(log: SqliteEventLog, wal) -> int:
    await log.append([(new_event(type="wal.test", source="/t", data=b"x" * 1024), ["sub"])])
    return os.stat(wal).st_size


# One group's frames (an event of 1 KiB and its index pages) on top of the hard limit.
GROUP_SLACK = 64 * 1024


async def test_the_wal_stays_bounded_under_steady_writes(tmp_path, monkeypatch):
    sizes = await write_steadily(tmp_path, monkeypatch)
    # Unbounded, the WAL reaches 30-60 MiB here.
    assert max(sizes) <= 8 * LIMIT + GROUP_SLACK, f"the WAL grew to {max(sizes)} bytes"


async def test_the_writer_bounds_the_wal_when_the_checkpointer_falls_behind(tmp_path, monkeypatch):
    """A starved checkpointer thread or a slow fsync (in CI, the WAL reached 19 MiB here with
    checkpoints due every 50 ms): the writer starts the WAL over itself past the hard limit."""
    sizes = await write_steadily(tmp_path, monkeypatch, every=3600)  # the checkpointer never comes round
    assert max(sizes) <= 8 * LIMIT + GROUP_SLACK, f"the WAL grew to {max(sizes)} bytes"
    assert sizes[-1] <= 8 * LIMIT


async def test_a_writer_that_cannot_start_the_wal_over_tries_again_only_after_more_growth(tmp_path, monkeypatch):
    """A reader holding an old snapshot makes every RESTART wait for it, then fail: the
    writer must not wait on each group for one."""
    monkeypatch.setattr(sqlite_log, "WAL_FILE_LIMIT", LIMIT)
    monkeypatch.setattr(sqlite_log, "WAL_HARD_LIMIT", 2 * LIMIT)
    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY", 3600)
    monkeypatch.setattr(sqlite_log, "WAL_LOOK_EVERY", 0)
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    restarts = []
    real_restart = log._restart_wal
    monkeypatch.setattr(log, "_restart_wal", lambda: restarts.append(1) or real_restart())
    reader = sqlite3.connect(tmp_path / "mesh.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM deliveries").fetchone()  # holds its snapshot
        sizes = [await append_one(log, tmp_path / "mesh.db-wal") for _ in range(600)]
        grown = (max(sizes) - 2 * LIMIT) // LIMIT
        assert 1 <= len(restarts) <= grown + 1, f"{len(restarts)} RESTARTs, the WAL {grown} MiB past the limit"
    finally:
        reader.close()
        await log.close()


async def test_the_wal_starts_over_in_place_rather_than_being_truncated(tmp_path, monkeypatch):
    """Once the WAL has grown past the limit, later frames reuse its blocks: a truncated WAL
    makes each new frame a block to allocate, which on ext4 waits for the checkpoint's fsync."""
    sizes = await write_steadily(tmp_path, monkeypatch)
    grown = next(i for i, size in enumerate(sizes) if size > LIMIT)
    assert min(sizes[grown:]) > LIMIT, f"the WAL was cut to {min(sizes[grown:])} bytes after growing past the limit"


async def open_quiet_log(tmp_path, monkeypatch) -> SqliteEventLog:
    """A log whose checkpointer never comes round: the test says when the WAL starts over."""
    monkeypatch.setattr(sqlite_log, "WAL_LIMIT", LIMIT)
    monkeypatch.setattr(sqlite_log, "WAL_FILE_LIMIT", 2 * LIMIT)
    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY", 3600)
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    return log


async def append_until_the_wal_is(log: SqliteEventLog, size: int, wal) -> None:
    while os.stat(wal).st_size <= size:
        await log.append([(new_event(type="wal.test", source="/t", data=b"x" * 4096), ["sub"])])


async def test_a_wal_that_grew_past_the_file_limit_is_cut_back_to_it_when_it_starts_over(tmp_path, monkeypatch):
    log = await open_quiet_log(tmp_path, monkeypatch)
    wal = tmp_path / "mesh.db-wal"
    try:
        await append_until_the_wal_is(log, 3 * LIMIT, wal)
        with sqlite3.connect(tmp_path / "mesh.db") as other:  # what the checkpointer would do
            assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0
        await log.append([(new_event(type="wal.test", source="/t"), ["sub"])])
        assert os.stat(wal).st_size <= 2 * LIMIT
    finally:
        await log.close()


async def test_the_writer_starts_the_wal_over_itself_when_the_checkpointer_could_not(tmp_path, monkeypatch):
    log = await open_quiet_log(tmp_path, monkeypatch)
    wal = tmp_path / "mesh.db-wal"
    try:
        await append_until_the_wal_is(log, LIMIT, wal)
        log._checkpointer.restart_failed = True  # its RESTART found the writer busy
        await log.append([(new_event(type="wal.test", source="/t"), ["sub"])])
        assert log._checkpointer.restart_failed is False
        with sqlite3.connect(tmp_path / "mesh.db") as other:
            _, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert 0 < frames < 16, f"the WAL did not start over: {frames} frames"
    finally:
        await log.close()


async def test_the_writer_looks_at_the_wal_size_once_per_interval_not_per_group(tmp_path, monkeypatch):
    """A stat per group cost 1 % of the mesh's loop at 5,500 events/s."""
    log = await open_quiet_log(tmp_path, monkeypatch)
    monkeypatch.setattr(sqlite_log, "WAL_LOOK_EVERY", 3600)
    looks = []
    real_size = log._wal_size
    monkeypatch.setattr(log, "_wal_size", lambda: looks.append(1) or real_size())
    try:
        for _ in range(50):
            await log.append([(new_event(type="wal.test", source="/t"), ["sub"])])
        assert len(looks) == 1
        log._checkpointer.restart_failed = True  # what the checkpointer asks for is done at the next group
        await log.append([(new_event(type="wal.test", source="/t"), ["sub"])])
        assert len(looks) == 2 and log._checkpointer.restart_failed is False
    finally:
        await log.close()
