"""The trail in an SQLite file of its own (`trail.db` in the data dir), so that writing it
never waits on the event log's writer, and a full trail never slows deliveries.

One table of rows indexed by event id (and, for the few rows that need it, replies by the
reply's id and events that matched nothing). The id index leads with the row's block of
`BLOCK_ROWS` consecutive rows: ids are random, and an index on the id alone takes each new row
to a page of its own, all rewritten at the next write (about half a write's cost at 100,000
events). A lookup by id seeks once in each block the trail holds.

A row is an arrival, a step, or both: an event's first step, written together with its
arrival, shares its row (for most events, delivered at the first attempt, that is their whole
trail in one row). Rows are plain tuples and lists because the trail's thread makes them while
the event loop waits for the GIL.
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

SCHEMA_VERSION = 7
# Columns for what a query filters on; the rest of a row in `fields`, a JSON array that only
# Python reads. SQLite parses a JSON row whole for each value it takes out of it, so a write
# costs about the square of the values it extracts (18 columns took 3x the CPU of 6).
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, at REAL NOT NULL,
    arrival INTEGER,            -- 1: an event that was routed, 0: one that matched nothing, NULL: a step only
    kind TEXT, detail TEXT,     -- the step's, if the row has one
    fields TEXT NOT NULL);      -- [*ARRIVAL_FIELDS, *STEP_FIELDS]
CREATE INDEX IF NOT EXISTS records_by_id ON records(seq >> 12, id);
CREATE INDEX IF NOT EXISTS records_unrouted ON records(seq) WHERE arrival = 0;
CREATE INDEX IF NOT EXISTS records_by_reply ON records(detail) WHERE kind = 'reply';
"""
ARRIVAL_FIELDS = ("source", "type", "sender", "traceparent", "routed", "path")
STEP_FIELDS = ("subscription", "attempt", "status", "duration_ms", "error", "due", "step_at")
# One statement for a whole write, its rows one JSON array: SQLite reads it without the GIL, where
# an executemany would take the GIL back for every row, each time from the event loop.
INSERT = ("INSERT INTO records (id, at, arrival, kind, detail, fields) SELECT value ->> 0, value ->> 1,"
          " value ->> 2, value ->> 3, value ->> 4, value -> 5 FROM json_each(?)")
INSERT_ROW = "INSERT INTO records (id, at, arrival, kind, detail, fields) VALUES (?, ?, ?, ?, ?, ?)"
ARRIVAL = "SELECT at, id, fields FROM records"
STEP = "SELECT at, id, kind, detail, fields FROM records"
BLOCK_ROWS = 1 << 12  # rows per block of the id index (the `12` in its definition and in BY_ID)
# The blocks from the oldest row to the newest, and the rows with the id in each (one seek per block).
BY_ID = ("WITH RECURSIVE block(n) AS (SELECT (SELECT min(seq) FROM records) >> 12"
         " UNION ALL SELECT n + 1 FROM block WHERE n < (SELECT max(seq) FROM records) >> 12)"
         " {select} WHERE seq >> 12 IN block AND id = ? AND {which} ORDER BY seq")
NO_STEP = (None, None, [None] * len(STEP_FIELDS))
NO_ARRIVAL = (None,) * (len(ARRIVAL_FIELDS) - 1)  # a step's row alone: its event's source only
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
        arrivals = [(a["id"], at, 1 if subs else 0, [a["source"], a["type"], a.get(SENDER, ""), a.get("traceparent"),
                                                     SEPARATOR.join(subs), a.get(PATH)])
                    for at, routed in accepted for a, subs in routed]
        latest = {(row[0], row[3][0]): i for i, row in enumerate(arrivals)}  # the latest arrival of each event
        first: list[tuple | None] = [None] * len(arrivals)
        alone = []
        for at, a, subscription, kind, attempt, status, seconds, error, due, detail in steps:
            step = [subscription, attempt, status, None if seconds is None else round(seconds * 1000, 3),
                    None if error is None else error[:ERROR_CHARS], due]
            i = latest.get((a["id"], a["source"]))
            if i is not None and first[i] is None and arrivals[i][1] <= at:
                first[i] = (kind, detail, [*step, at])
            else:
                alone.append((a["id"], at, None, kind, detail, [a["source"], *NO_ARRIVAL, *step, None]))
        rows = [(event_id, at, arrival, kind, detail, fields + step_fields)
                for (event_id, at, arrival, fields), (kind, detail, step_fields)
                in zip(arrivals, (step or NO_STEP for step in first), strict=True)] + alone
        with self._conn:
            self._conn.execute("BEGIN")
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                try:
                    self._conn.execute(INSERT, (orjson.dumps(chunk),))
                except TypeError:  # a lone surrogate in some id or source: those rows the slow way
                    self._conn.executemany(INSERT_ROW, [_storable_row(row) for row in chunk])

    def arrivals(self, event_id: str) -> list[Arrival]:
        rows = self._conn.execute(BY_ID.format(select=ARRIVAL, which="arrival IS NOT NULL"), (_storable(event_id),))
        return [_arrival(row) for row in rows]

    def steps(self, event_id: str) -> list[Step]:
        rows = self._conn.execute(BY_ID.format(select=STEP, which="kind IS NOT NULL"), (_storable(event_id),))
        return sorted(map(_step, rows), key=lambda step: step.at)

    def parents(self, reply_id: str) -> list[Step]:
        return [_step(row) for row in self._conn.execute(f"{STEP} WHERE detail = ? AND kind = '{Steps.REPLY}'"
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
    at, event_id, fields = row
    source, event_type, sender, traceparent, routed, path = orjson.loads(fields)[:len(ARRIVAL_FIELDS)]
    return Arrival(at, event_id, source, event_type, sender, traceparent,
                   tuple(routed.split(SEPARATOR)) if routed else (), path)


def _step(row: tuple) -> Step:
    at, event_id, kind, detail, fields = row
    values = orjson.loads(fields)
    source = values[0]
    subscription, attempt, status, duration_ms, error, due, step_at = values[len(ARRIVAL_FIELDS):]
    return Step(at if step_at is None else step_at, event_id, source, subscription, kind, attempt, status,
                duration_ms, error, due, detail)


def _storable_row(row: tuple) -> tuple:
    *columns, fields = row
    return (*map(_storable, columns), orjson.dumps(list(map(_storable, fields))).decode())


def _storable(value: object) -> object:
    """Text SQLite can take: a lone surrogate (which JSON lets an event carry) as `\\udc80`."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()
    return value
