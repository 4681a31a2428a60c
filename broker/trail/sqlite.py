"""The trail in an SQLite file of its own (`trail.db` in the data dir), so that writing it
never waits on the event log's writer, and a full trail never slows deliveries.

One table of flat rows indexed by event id (and, for the few rows that need it, replies by
the reply's id and events that matched nothing). A row is an arrival, a step, or both: an
event's first step, written together with its arrival, shares its row (for most events,
delivered at the first attempt, that is their whole trail in one row). Rows are plain
tuples because the trail's thread makes them while the event loop waits for the GIL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import orjson
from fmesh.broker.trail.store import ERROR_CHARS, Accepted, Arrival, Noted, Step

from fmesh.contracts import Steps
from fmesh.events import SENDER
from fmesh.meshpath import PATH

SCHEMA_VERSION = 5
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, at REAL NOT NULL, source TEXT NOT NULL,
    arrival INTEGER,            -- 1: an event that was routed, 0: one that matched nothing, NULL: a step only
    type TEXT, sender TEXT, traceparent TEXT, routed TEXT, path TEXT,                 -- arrivals
    subscription TEXT, kind TEXT, attempt INTEGER, status INTEGER, duration_ms REAL,  -- steps
    error TEXT, due REAL, detail TEXT, step_at REAL);                                 -- a step in an arrival's row
CREATE INDEX IF NOT EXISTS records_by_id ON records(id);
CREATE INDEX IF NOT EXISTS records_unrouted ON records(seq) WHERE arrival = 0;
CREATE INDEX IF NOT EXISTS records_by_reply ON records(detail) WHERE kind = 'reply';
"""
COLUMNS = ("id", "at", "source", "arrival", "type", "sender", "traceparent", "routed", "path", "subscription", "kind",
           "attempt", "status", "duration_ms", "error", "due", "detail", "step_at")
# One statement for a whole write, its rows one JSON array: SQLite reads it without the GIL, where
# an executemany would take the GIL back for every row, each time from the event loop.
INSERT = (f"INSERT INTO records ({', '.join(COLUMNS)}) SELECT "
          + ", ".join(f"value ->> {i}" for i in range(len(COLUMNS))) + " FROM json_each(?)")
INSERT_ROW = f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
ARRIVAL = "SELECT at, id, source, type, sender, traceparent, routed, path FROM records"
STEP = ("SELECT coalesce(step_at, at), id, source, subscription, kind, attempt, status, duration_ms, error, due,"
        " detail FROM records")
NO_STEP = (None,) * 9
CHUNK = 500       # rows per statement: SQLite parses each JSON array whole, so a burst's write goes in pieces
SEPARATOR = "\n"  # between routed subscriptions: names hold no newline (fmesh.names)


class SqliteTrail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # a trail may lose its last moments to a crash, not its file
        if self._conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # a trail is not migrated
            self._conn.executescript(f"DROP TABLE IF EXISTS records; PRAGMA user_version = {SCHEMA_VERSION};")
        self._conn.executescript(SCHEMA)

    def write(self, accepted: Sequence[Accepted], steps: Sequence[Noted]) -> None:
        arrivals = [(a["id"], at, a["source"], 1 if subs else 0, a["type"], a.get(SENDER, ""), a.get("traceparent"),
                     SEPARATOR.join(subs), a.get(PATH)) for at, routed in accepted for a, subs in routed]
        latest = {(row[0], row[2]): i for i, row in enumerate(arrivals)}  # the latest arrival of each event
        first: list[tuple | None] = [None] * len(arrivals)
        alone = []
        for at, a, subscription, kind, attempt, status, seconds, error, due, detail in steps:
            step = (subscription, kind, attempt, status, None if seconds is None else round(seconds * 1000, 3),
                    None if error is None else error[:ERROR_CHARS], due, detail, at)
            i = latest.get((a["id"], a["source"]))
            if i is not None and first[i] is None and arrivals[i][1] <= at:
                first[i] = step
            else:
                alone.append((a["id"], at, a["source"], None, None, None, None, None, None, *step[:-1], None))
        rows = [row + (step or NO_STEP) for row, step in zip(arrivals, first, strict=True)] + alone
        with self._conn:
            self._conn.execute("BEGIN")
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                try:
                    self._conn.execute(INSERT, (orjson.dumps(chunk),))
                except TypeError:  # a lone surrogate in some id or source: those rows the slow way
                    self._conn.executemany(INSERT_ROW, [tuple(map(_storable, row)) for row in chunk])

    def arrivals(self, event_id: str) -> list[Arrival]:
        rows = self._conn.execute(f"{ARRIVAL} WHERE id = ? AND arrival IS NOT NULL ORDER BY seq",
                                  (_storable(event_id),))
        return [_arrival(row) for row in rows]

    def steps(self, event_id: str) -> list[Step]:
        rows = self._conn.execute(f"{STEP} WHERE id = ? AND kind IS NOT NULL ORDER BY seq", (_storable(event_id),))
        return sorted((Step(*row) for row in rows), key=lambda step: step.at)

    def parents(self, reply_id: str) -> list[Step]:
        return [Step(*row) for row in self._conn.execute(f"{STEP} WHERE detail = ? AND kind = '{Steps.REPLY}'"
                                                         " ORDER BY seq", (_storable(reply_id),))]

    def recent(self, limit: int, unrouted: bool) -> list[Arrival]:
        which = "arrival = 0" if unrouted else "arrival IS NOT NULL"
        rows = self._conn.execute(f"{ARRIVAL} WHERE {which} ORDER BY seq DESC LIMIT ?", (limit,))
        return [_arrival(row) for row in rows]

    def prune(self, before: float, keep: int) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            if keep <= 0:
                self._conn.execute("DELETE FROM records")
                return
            oldest_kept = self._conn.execute("SELECT seq FROM records WHERE arrival IS NOT NULL ORDER BY seq DESC"
                                             " LIMIT 1 OFFSET ?", (keep - 1,)).fetchone()
            if oldest_kept is not None:
                self._conn.execute("DELETE FROM records WHERE seq < ?", oldest_kept)
            # a scan, in SQLite (without the GIL), every PRUNE_EVERY: cheaper than an index on `at` per insert
            self._conn.execute("DELETE FROM records WHERE at < ?", (before,))

    def close(self) -> None:
        self._conn.close()


def _arrival(row: tuple) -> Arrival:
    at, event_id, source, event_type, sender, traceparent, routed, path = row
    return Arrival(at, event_id, source, event_type, sender, traceparent,
                   tuple(routed.split(SEPARATOR)) if routed else (), path)


def _storable(value: object) -> object:
    """Text SQLite can take: a lone surrogate (which JSON lets an event carry) as `\\udc80`."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()
    return value
