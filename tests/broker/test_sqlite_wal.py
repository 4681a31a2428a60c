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


async def write_steadily(tmp_path, monkeypatch, count: int = 3000) -> list[int]:
    """Append `count` events one by one with checkpoints going on; the WAL file's size after each."""
    monkeypatch.setattr(sqlite_log, "WAL_LIMIT", LIMIT)
    monkeypatch.setattr(sqlite_log, "WAL_FILE_LIMIT", 4 * LIMIT)
    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY", 0.05)  # checkpoints while the writes go on
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    sizes = []
    try:
        for _ in range(count):
            await log.append([(new_event(type="wal.test", source="/t", data=b"x" * 1024), ["sub"])])
            sizes.append(os.stat(tmp_path / "mesh.db-wal").st_size)
        assert await log.pending("sub") == count
    finally:
        await log.close()
    return sizes


async def test_the_wal_stays_bounded_under_steady_writes(tmp_path, monkeypatch):
    sizes = await write_steadily(tmp_path, monkeypatch)
    # A RESTART that finds the writer busy waits for the next round: on a loaded machine a few
    # rounds may pass. Unbounded, the WAL reaches 30-60 MiB here.
    assert max(sizes) < 16 * LIMIT, f"the WAL grew to {max(sizes)} bytes"


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
