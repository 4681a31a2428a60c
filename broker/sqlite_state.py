"""`StateStore` in the event log's SQLite file, written through the log's group commit.

Revisions come from one counter row, so they grow store-wide (as a JetStream KV
bucket's sequence does) and a key deleted and created again never reuses one: a
compare-and-set holding an old revision always loses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fmesh.broker.watchers import Watchers

from fmesh.contracts import Change, Entry
from fmesh.errors import Conflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value BLOB NOT NULL, revision INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS state_clock(revision INTEGER NOT NULL);
INSERT INTO state_clock(revision) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM state_clock);
"""
LIST = "SELECT key, value, revision FROM state WHERE substr(key, 1, ?) = ? ORDER BY key"

Submit = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


def migrate_state(conn: sqlite3.Connection) -> None:
    """Meshes before revisions kept (key, value): give every entry a revision."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(state)")]
    if columns and "revision" not in columns:
        conn.execute("ALTER TABLE state ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")
    conn.executescript(SCHEMA)
    if conn.execute("SELECT count(*) FROM state WHERE revision=0").fetchone()[0]:
        conn.execute("UPDATE state SET revision=rowid")
        conn.execute("UPDATE state_clock SET revision=(SELECT coalesce(max(revision), 0) FROM state)")


def _next_revision(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE state_clock SET revision=revision+1")
    return conn.execute("SELECT revision FROM state_clock").fetchone()[0]


def _write(conn: sqlite3.Connection, key: str, value: bytes) -> int:
    revision = _next_revision(conn)
    conn.execute("INSERT INTO state(key, value, revision) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                 "value=excluded.value, revision=excluded.revision", (key, value, revision))
    return revision


class SqliteState:
    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self._watchers = Watchers()

    async def _written(self, key: str, value: bytes | None, op: Callable[[sqlite3.Connection], int]) -> int:
        revision = await self._submit(op)
        self._watchers.changed(Change(key, value, revision))
        return revision

    async def get(self, key: str) -> Entry | None:
        row = await self._submit(lambda c: c.execute(
            "SELECT value, revision FROM state WHERE key=?", (key,)).fetchone())
        return None if row is None else Entry(key, bytes(row[0]), row[1])

    async def put(self, key: str, value: bytes) -> int:
        return await self._written(key, value, lambda c: _write(c, key, value))

    async def create(self, key: str, value: bytes) -> int:
        def op(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM state WHERE key=?", (key,)).fetchone():
                raise Conflict(f"state {key!r} exists")
            return _write(conn, key, value)

        return await self._written(key, value, op)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT revision FROM state WHERE key=?", (key,)).fetchone()
            if row is None or row[0] != revision:
                raise Conflict(f"state {key!r} is not at revision {revision}")
            return _write(conn, key, value)

        return await self._written(key, value, op)

    async def delete(self, key: str) -> None:
        def op(conn: sqlite3.Connection) -> int | None:
            if conn.execute("DELETE FROM state WHERE key=?", (key,)).rowcount == 0:
                return None
            return _next_revision(conn)

        revision = await self._submit(op)
        if revision is not None:
            self._watchers.changed(Change(key, None, revision))

    async def list(self, prefix: str) -> dict[str, Entry]:
        entries, _ = await self._snapshot(prefix)
        return entries

    async def _snapshot(self, prefix: str) -> tuple[dict[str, Entry], int]:
        def op(conn: sqlite3.Connection) -> tuple[dict[str, Entry], int]:
            rows = conn.execute(LIST, (len(prefix), prefix)).fetchall()
            revision = conn.execute("SELECT revision FROM state_clock").fetchone()[0]
            return {key: Entry(key, bytes(value), rev) for key, value, rev in rows}, revision

        return await self._submit(op)

    def watch(self, prefix: str) -> AsyncIterator[Change]:
        return self._watchers.watch(prefix, self._snapshot)
