"""The embedded default event log: one SQLite file in WAL mode, written by one thread.

Every operation runs on a single writer thread. Whatever piles up while a transaction
commits goes into the next one (group commit), so many concurrent publishes cost one
commit, not one each. `synchronous=NORMAL` in WAL mode survives a killed process; set
`sync="full"` to also survive power loss.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmesh.contracts import Claimed, DeadLetter, Delivery
from fmesh.errors import StoreError
from fmesh.events import Event, from_record, ordering_key, to_record

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries(
    id INTEGER PRIMARY KEY,
    subscription TEXT NOT NULL,
    attributes BLOB NOT NULL,
    payload BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    okey TEXT                      -- the partitionkey, for ordered subscriptions
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(subscription, claimed, due_at);
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(subscription, okey, id);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY,
    subscription TEXT NOT NULL,
    attributes BLOB NOT NULL,
    payload BLOB,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    failed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_sub ON dead_letters(subscription);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

CLAIM = ("SELECT id, attributes, payload, attempts, last_error FROM deliveries "
         "WHERE subscription=? AND claimed=0 AND due_at<=? ORDER BY due_at, id LIMIT ?")
# Ordered: only the oldest stored delivery of each key may go; while it is in flight or
# waiting to retry, the ones behind it wait too. Deliveries without a key never wait.
ORDERED_CLAIM = ("SELECT id, attributes, payload, attempts, last_error FROM deliveries AS d "
                 "WHERE subscription=? AND claimed=0 AND due_at<=? AND (okey IS NULL OR NOT EXISTS ("
                 "SELECT 1 FROM deliveries AS e WHERE e.subscription=d.subscription AND e.okey=d.okey "
                 "AND e.id<d.id)) ORDER BY due_at, id LIMIT ?")

Operation = Callable[[sqlite3.Connection], Any]
MAX_GROUP = 512


class SqliteEventLog:
    """`EventLog` on SQLite; see the module docstring for how writes are grouped."""

    def __init__(self, path: str | Path, sync: str = "normal") -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._sync = sync
        self._queue: queue.SimpleQueue[tuple[Operation, asyncio.Future, asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(target=self._run, args=(ready, asyncio.get_running_loop()),
                                        name="fmesh-sqlite", daemon=True)
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # -- the writer thread -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
        conn.executescript(SCHEMA)
        # Claims belong to the process that made them; a new process starts with none.
        conn.execute("UPDATE deliveries SET claimed=0 WHERE claimed=1")
        return conn

    def _run(self, ready: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread's loop. Nothing may escape it: a dead writer would hang every caller."""
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            error = StoreError(f"cannot open event log {self.path}: {exc}")
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while (group := self._next_group()) is not None:
                self._commit(conn, group)
        finally:
            conn.close()

    def _next_group(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            group.append(item)
        return group

    def _commit(self, conn: sqlite3.Connection, group: list) -> None:
        """Run the group in one transaction; if any operation fails, run each on its own,
        so one bad operation fails alone and the others still commit."""
        try:
            results = self._transaction(conn, group)
        except _OperationFailed:
            results = [result for item in group for result in self._alone(conn, item)]
        self._settle_all(results)

    def _transaction(self, conn: sqlite3.Connection, group: list) -> list[tuple]:
        conn.execute("BEGIN IMMEDIATE")
        results = []
        try:
            for op, future, loop in group:
                results.append((future, loop, _run(op, conn), None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _OperationFailed from exc
        return results

    def _alone(self, conn: sqlite3.Connection, item: tuple) -> list[tuple]:
        op, future, loop = item
        try:
            return self._transaction(conn, [item])
        except _OperationFailed as failed:
            exc = failed.__cause__
            error = StoreError(f"event log {self.path}: {exc}") if isinstance(exc, sqlite3.Error) else exc
            return [(future, loop, None, error)]

    @staticmethod
    def _settle_all(results: list[tuple]) -> None:
        """Hand results back to each caller's loop: one wake-up per loop, not per operation."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for future, loop, value, error in results:
            by_loop.setdefault(loop, []).append((future, value, error))
        for loop, settled in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle_many, settled)

    async def _submit(self, op: Operation) -> Any:
        if self._thread is None:
            raise StoreError(f"event log {self.path} is not open")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((op, future, loop))
        return await future

    # -- the EventLog operations ----------------------------------------------------------

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        now = time.time()
        rows = []
        for event, subscriptions in routed:
            attributes, payload = to_record(event)
            key = ordering_key(event)
            rows.extend((sub, attributes, payload, now, key) for sub in subscriptions)
        if rows:
            await self._submit(lambda c: c.executemany(
                "INSERT INTO deliveries(subscription, attributes, payload, due_at, okey) VALUES (?,?,?,?,?)",
                rows))

    async def claim(self, subscription: str, limit: int, now: float, ordered: bool = False) -> Claimed:
        def op(conn: sqlite3.Connection) -> Claimed:
            rows = conn.execute(ORDERED_CLAIM if ordered else CLAIM, (subscription, now, limit)).fetchall()
            if rows:
                conn.executemany("UPDATE deliveries SET claimed=1 WHERE id=?", [(r[0],) for r in rows])
            # Rows already due but not returned are past the limit or waiting behind their
            # key: the next wake-up worth scheduling is the next row that falls due later.
            nxt = conn.execute(
                "SELECT min(due_at) FROM deliveries WHERE subscription=? AND claimed=0 AND due_at>?",
                (subscription, now)).fetchone()[0]
            deliveries = [Delivery(r[0], subscription, from_record(r[1], r[2]), r[3], r[4]) for r in rows]
            return Claimed(deliveries, nxt)

        return await self._submit(op)

    async def ack(self, delivery_ids: Sequence[int]) -> None:
        ids = [(i,) for i in delivery_ids]
        await self._submit(lambda c: c.executemany("DELETE FROM deliveries WHERE id=?", ids))

    async def release(self, delivery_ids: Sequence[int]) -> None:
        ids = [(i,) for i in delivery_ids]
        if ids:
            await self._submit(lambda c: c.executemany("UPDATE deliveries SET claimed=0 WHERE id=?", ids))

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> None:
        await self._submit(lambda c: c.execute(
            "UPDATE deliveries SET claimed=0, attempts=attempts+1, due_at=?, last_error=? WHERE id=?",
            (due_at, error, delivery.id)))

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        attributes, payload = to_record(letter.event)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries WHERE id=?", (delivery.id,))
            conn.execute(
                "INSERT INTO dead_letters(subscription, attributes, payload, attempts, reason, status,"
                " error, failed_at) VALUES (?,?,?,?,?,?,?,?)",
                (letter.subscription, attributes, payload, letter.attempts, letter.reason,
                 letter.status, letter.error, letter.failed_at))

        await self._submit(op)

    async def redirect(self, delivery_id: int, subscription: str, event: Event) -> None:
        attributes, payload = to_record(event)
        await self._submit(lambda c: c.execute(
            "UPDATE deliveries SET subscription=?, attributes=?, payload=?, attempts=0, claimed=0,"
            " due_at=?, last_error=NULL, okey=? WHERE id=?",
            (subscription, attributes, payload, time.time(), ordering_key(event), delivery_id)))

    async def dead_letters(self, subscription: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        where, args = ("WHERE subscription=?", (subscription,)) if subscription else ("", ())
        rows = await self._submit(lambda c: c.execute(
            "SELECT id, subscription, attributes, payload, attempts, reason, status, error, failed_at "
            f"FROM dead_letters {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall())
        return [_dead_letter(r) for r in rows]

    async def remove_dead_letters(self, ids: Sequence[int]) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            found = []
            for i in ids:
                row = conn.execute(
                    "SELECT id, subscription, attributes, payload, attempts, reason, status, error, "
                    "failed_at FROM dead_letters WHERE id=?", (i,)).fetchone()
                if row:
                    found.append(_dead_letter(row))
                    conn.execute("DELETE FROM dead_letters WHERE id=?", (i,))
            return found

        return await self._submit(op)

    async def purge_dead_letters(self, subscription: str | None = None, before: float | None = None) -> int:
        where, args = _dead_letter_filter(subscription, before)
        return await self._submit(lambda c: c.execute(f"DELETE FROM dead_letters {where}", args).rowcount)

    async def count_dead_letters(self) -> dict[str, int]:
        rows = await self._submit(lambda c: c.execute(
            "SELECT subscription, count(*) FROM dead_letters GROUP BY subscription").fetchall())
        return dict(rows)

    async def pending(self, subscription: str) -> int:
        return await self._submit(lambda c: c.execute(
            "SELECT count(*) FROM deliveries WHERE subscription=?", (subscription,)).fetchone()[0])

    async def drop_subscription(self, subscription: str) -> None:
        await self._submit(lambda c: c.execute(
            "DELETE FROM deliveries WHERE subscription=?", (subscription,)))

    async def put_state(self, key: str, value: bytes) -> None:
        await self._submit(lambda c: c.execute(
            "INSERT INTO state(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value)))

    async def get_state(self, key: str) -> bytes | None:
        row = await self._submit(lambda c: c.execute(
            "SELECT value FROM state WHERE key=?", (key,)).fetchone())
        return row[0] if row else None

    async def delete_state(self, key: str) -> None:
        await self._submit(lambda c: c.execute("DELETE FROM state WHERE key=?", (key,)))

    async def list_state(self, prefix: str) -> dict[str, bytes]:
        rows = await self._submit(lambda c: c.execute(
            "SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix)).fetchall())
        return dict(rows)


def _dead_letter_filter(subscription: str | None, before: float | None) -> tuple[str, tuple]:
    clauses, args = [], []
    if subscription is not None:
        clauses.append("subscription=?")
        args.append(subscription)
    if before is not None:
        clauses.append("failed_at<?")
        args.append(before)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _dead_letter(row: tuple) -> DeadLetter:
    return DeadLetter(row[0], row[1], from_record(row[2], row[3]), row[4], row[5], row[6], row[7], row[8])


class _OperationFailed(Exception):
    """An operation of a group failed; the cause is the operation's own error."""


def _run(op: Operation, conn: sqlite3.Connection) -> Any:
    value = op(conn)
    if isinstance(value, sqlite3.Cursor):
        # A cursor must never reach the event loop's thread: finalizing it there while
        # this thread uses the connection is API misuse.
        value.close()
        return None
    return value


def _settle_many(settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, value, error in settled:
        _settle(future, value, error)


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
