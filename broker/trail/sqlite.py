"""The trail in an SQLite file of its own (`trail.db` in the data dir), so that writing it
never waits on the event log's writer, and a full trail never slows deliveries."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from fmesh.broker.trail.memory import STEPS_PER_ARRIVAL
from fmesh.broker.trail.store import Arrival, Step

SCHEMA = """
CREATE TABLE IF NOT EXISTS arrivals (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
    sender TEXT NOT NULL, traceparent TEXT, routed TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS arrivals_by_id ON arrivals(id);
CREATE INDEX IF NOT EXISTS arrivals_unrouted ON arrivals(seq) WHERE routed = '';
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL,
    subscription TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL, status INTEGER,
    duration_ms REAL, error TEXT, due REAL, detail TEXT);
CREATE INDEX IF NOT EXISTS steps_by_id ON steps(id);
CREATE INDEX IF NOT EXISTS steps_by_reply ON steps(detail) WHERE kind = 'reply';
"""
ROUTED_SEPARATOR = "\n"  # subscription names hold no newline (fmesh.names)


class SqliteTrail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # a trail may lose its last moments to a crash, not its file
        self._conn.executescript(SCHEMA)

    def write(self, arrivals: Sequence[Arrival], steps: Sequence[Step]) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO arrivals (at, id, source, type, sender, traceparent, routed) VALUES (?,?,?,?,?,?,?)",
                [(a.at, a.id, a.source, a.type, a.sender, a.traceparent, ROUTED_SEPARATOR.join(a.routed))
                 for a in arrivals])
            self._conn.executemany(
                "INSERT INTO steps (at, id, source, subscription, kind, attempt, status, duration_ms, error, due,"
                " detail) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(s.at, s.id, s.source, s.subscription, s.kind, s.attempt, s.status, s.duration_ms, s.error,
                  s.due, s.detail) for s in steps])

    def arrivals(self, event_id: str) -> list[Arrival]:
        rows = self._conn.execute("SELECT at, id, source, type, sender, traceparent, routed FROM arrivals"
                                  " WHERE id = ? ORDER BY seq", (event_id,))
        return [_arrival(row) for row in rows]

    def steps(self, event_id: str) -> list[Step]:
        return self._steps("WHERE id = ?", event_id)

    def parents(self, reply_id: str) -> list[Step]:
        return self._steps("WHERE detail = ? AND kind = 'reply'", reply_id)

    def _steps(self, where: str, value: str) -> list[Step]:
        rows = self._conn.execute("SELECT at, id, source, subscription, kind, attempt, status, duration_ms, error,"
                                  f" due, detail FROM steps {where} ORDER BY seq", (value,))
        return [Step(*row) for row in rows]

    def unrouted(self, limit: int) -> list[Arrival]:
        rows = self._conn.execute("SELECT at, id, source, type, sender, traceparent, routed FROM arrivals"
                                  " WHERE routed = '' ORDER BY seq DESC LIMIT ?", (limit,))
        return [_arrival(row) for row in rows]

    def prune(self, before: float, keep: int) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            for table, kept in (("arrivals", keep), ("steps", keep * STEPS_PER_ARRIVAL)):
                newest = self._conn.execute(f"SELECT max(seq) FROM {table}").fetchone()[0] or 0
                self._conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (newest - kept,))
                # rows are written in time order (near enough): everything up to the last old row goes
                self._conn.execute(f"DELETE FROM {table} WHERE seq <= (SELECT coalesce(max(seq), 0) FROM {table}"
                                   " WHERE at < ?)", (before,))

    def close(self) -> None:
        self._conn.close()


def _arrival(row: tuple) -> Arrival:
    at, event_id, source, event_type, sender, traceparent, routed = row
    return Arrival(at, event_id, source, event_type, sender, traceparent,
                   tuple(routed.split(ROUTED_SEPARATOR)) if routed else ())
