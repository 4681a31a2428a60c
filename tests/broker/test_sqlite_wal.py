"""The SQLite event log's WAL stays bounded under steady writes. The background checkpoint
(PASSIVE, so that it never blocks the writer) copies the WAL into the database, but with
writes coming all the time the WAL is never wholly copied when a transaction begins, so
SQLite never starts it over: it grew by the megabyte per second (200 MiB in 3 minutes of
a 30 events/s soak) until the disk was full."""

from __future__ import annotations

import os

import fmesh.broker.sqlite_log as sqlite_log
from fmesh.broker.sqlite_log import SqliteEventLog

from fmesh.events import new_event

LIMIT = 1024 * 1024


async def test_the_wal_stays_bounded_under_steady_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_log, "WAL_LIMIT", LIMIT, raising=False)
    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY", 0.05)  # checkpoints while the writes go on
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    wal = tmp_path / "mesh.db-wal"
    largest = 0
    try:
        for _ in range(3000):
            await log.append([(new_event(type="wal.test", source="/t", data=b"x" * 1024), ["sub"])])
            largest = max(largest, os.stat(wal).st_size)
        assert await log.pending("sub") == 3000
    finally:
        await log.close()
    # A TRUNCATE that finds the writer busy waits for the next round: on a loaded machine a few
    # rounds may pass. Unbounded, the WAL reaches 30-60 MiB here.
    assert largest < 16 * LIMIT, f"the WAL grew to {largest} bytes"
