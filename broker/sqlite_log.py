"""The embedded default event log: one SQLite file in WAL mode.

Operations run on the event loop's own thread, batched: whatever is asked for during one
turn of the loop goes into one transaction at the end of that turn (group commit), so
many concurrent publishes cost one commit, not one each, and no thread hand-off sits
on the hot path. A WAL commit without fsync takes microseconds; the slow part of WAL,
the checkpoint, runs on a background thread with its own connection and never blocks
writers. `synchronous=NORMAL` in WAL mode survives a killed process; `sync="full"` also
survives power loss (and then each commit waits for the disk).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fmesh.broker.arrivals import Arrivals
from fmesh.broker.inflight import InFlight
from fmesh.broker.log import Requeue
from fmesh.broker.sqlite_state import migrate_state

from fmesh import meshlog
from fmesh.contracts import DeadLetter, Delivery
from fmesh.errors import StoreError
from fmesh.events import Event, from_record_or_stub, ordering_key, to_record

log = meshlog.get("fmesh.broker")

# Seconds between background WAL checkpoints. Often, so that each has little to copy and
# fsync: the events in flight while one syncs are the slow ones (the writer's appends seem
# to wait on the disk meanwhile, though they are not synced themselves).
# At 2,400 events/s a 1 s round fsynced for ~20 ms, and a fifth to a third of the events
# over 2 ms were in flight during one (latency p99 3.0-3.9 ms, max 18-24 ms); 0.2 s rounds
# take 6-8 ms (p99 2.4-2.8, max 6-7) at the same ingress rate; at 2,880/s against the peer,
# the p99 ratio went from 1.25 to 1.13 (medians of 4 paired runs). Idle, a round copies nothing.
CHECKPOINT_EVERY = 0.2
BUSY_TIMEOUT = 0.5      # seconds to wait for a database another process has locked
FORGET_CHUNK = 5000     # seen keys deleted per writer turn
WAL_LIMIT = 16 * 1024 * 1024  # bytes of frames past which the checkpointer starts the WAL over (see Checkpointer)
WAL_FILE_LIMIT = 4 * WAL_LIMIT  # the WAL file is cut back to this when it starts over (journal_size_limit)
WAL_HARD_LIMIT = 2 * WAL_FILE_LIMIT  # past this the writer starts the WAL over itself (see _keep_up_with_the_wal)
WAL_LOOK_EVERY = 0.005  # seconds between two looks at the WAL's size: a stat per group was 1 % of the loop
SQLITE_IOERR, SQLITE_FULL = 10, 13  # primary result codes (sqlite3.Error.sqlite_errorcode & 0xff)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT NOT NULL,
    attributes BLOB NOT NULL,
    payload BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    okey TEXT,                     -- the partitionkey, for ordered subscriptions
    stored_at REAL                 -- when it was stored, for a delivery policy's ttl
);
-- AUTOINCREMENT: an id is never given twice, so a late ack cannot remove a newer
-- delivery, and a script that replays dead letters by id cannot hit a different one.
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(subscription, claimed, due_at);
-- Only keyed deliveries are indexed by key (ordered claims look there): most events have no
-- partitionkey, and each would cost an index page written at its append and at its ack.
CREATE INDEX IF NOT EXISTS deliveries_keyed ON deliveries(subscription, okey, id) WHERE okey IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
-- Events seen from bridges, by source and id, for dropping the duplicates of a retry.
CREATE TABLE IF NOT EXISTS seen(key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen(at);
"""

# Claims are kept in memory (InFlight), not in the `claimed` column (always 0 since): a claim
# reads ids (from the index alone, unless ordered), skips those in flight, and reads only
# the rows it takes in full. So it walks the ids in flight too: a sidecar has at most its
# concurrency in flight.
CLAIM = ("SELECT id FROM deliveries WHERE subscription=? AND claimed=0 AND due_at<=? "
         "ORDER BY due_at, id LIMIT ?")
# Ordered: only the oldest stored delivery of each key may go; while it is in flight or
# waiting to retry, the ones behind it wait too. Deliveries without a key never wait.
ORDERED_CLAIM = ("SELECT id FROM deliveries AS d "
                 "WHERE subscription=? AND claimed=0 AND due_at<=? AND (okey IS NULL OR NOT EXISTS ("
                 "SELECT 1 FROM deliveries AS e WHERE e.subscription=d.subscription AND e.okey=d.okey "
                 "AND e.id<d.id)) ORDER BY due_at, id LIMIT ?")
CLAIMED_ROWS = "SELECT id, attributes, payload, attempts, last_error, stored_at FROM deliveries WHERE id IN ({})"
ROWS_PER_READ = 500  # ids per IN (...): well under SQLite's limit on bound parameters

# Rows are (subscription, attributes, payload, now, okey): stored at the time it is first due.
INSERT = ("INSERT INTO deliveries(subscription, attributes, payload, due_at, okey, stored_at) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?4)")
SEEN = ("INSERT INTO seen(key, at) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET at=excluded.at "
        "WHERE seen.at < ?3")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the tables of an older mesh up to this schema."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(deliveries)")]
    if columns and "stored_at" not in columns:
        conn.execute("ALTER TABLE deliveries ADD COLUMN stored_at REAL")
        conn.execute("UPDATE deliveries SET stored_at=due_at")
    conn.execute("DROP INDEX IF EXISTS deliveries_key")  # became deliveries_keyed, keyed rows only
    migrate_ids(conn)


def migrate_ids(conn: sqlite3.Connection) -> None:
    """Meshes before AUTOINCREMENT reused the highest id after a delete: rebuild those tables."""
    for table in ("deliveries", "dead_letters"):
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        if row is None or "AUTOINCREMENT" in row[0]:
            continue
        indexes = conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? "
                               "AND sql IS NOT NULL", (table,)).fetchall()
        drops = "".join(f"DROP INDEX {name};" for (name,) in indexes)
        conn.executescript(f"BEGIN IMMEDIATE; ALTER TABLE {table} RENAME TO {table}_old; {drops} {SCHEMA}"
                           f"INSERT INTO {table} SELECT * FROM {table}_old; DROP TABLE {table}_old; COMMIT;")


class Append:
    """Rows to insert; the writer merges every Append of a group into one executemany."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def __call__(self, conn: sqlite3.Connection) -> None:
        conn.executemany(INSERT, self.rows)


Operation = Callable[[sqlite3.Connection], Any]


class SqliteEventLog:
    """`EventLog` on SQLite; see the module docstring for how writes are grouped."""

    def __init__(self, path: str | Path, sync: str = "normal", clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock              # when deliveries fall due (tests move it)
        self._arrivals = Arrivals()
        self.url = f"sqlite:///{self.path}"
        self.claim_ttl = None  # a claim lasts as long as this process
        self.max_record_bytes = None
        self._sync = sync
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Operation, asyncio.Future]] = []
        self._checkpointer: Checkpointer | None = None
        self._owner: int | None = None   # the lock file that makes this process the log's one writer
        self._inflight = InFlight()      # the claims: they last as long as this process
        self._wal_bound = WAL_HARD_LIMIT  # see _keep_up_with_the_wal
        self._wal_looked_at = float("-inf")  # monotonic time of the last look at its size
        self._wal_path = f"{path}-wal"

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._owner = own(self.path)
            self._conn = self._connect()
            self._inflight = InFlight()
        except (sqlite3.Error, OSError) as exc:
            self._disown()
            raise StoreError(f"cannot open event log {self.path}: {exc}") from exc
        self._checkpointer = Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._pending:
            self._flush()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a full disk: the WAL stays, and the next open replays it
                log.warning("event log closed without a checkpoint", error=str(self._store_error(exc)))
            self._conn.close()
            self._conn = None
        self._disown()

    def _disown(self) -> None:
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    def _connect(self) -> sqlite3.Connection:
        # Waiting for a lock blocks the event loop: wait briefly, then fail (StoreError), and
        # the caller retries or answers 503. Only another process can hold it for long.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer does it, off the loop
        conn.execute(f"PRAGMA journal_size_limit={WAL_FILE_LIMIT}")
        migrate(conn)
        conn.executescript(SCHEMA)
        migrate_state(conn)
        # Claims belong to the process that made them; a new process starts with none. (Since
        # claims are kept in memory the column stays 0; a log written before may still hold 1s.)
        conn.execute("UPDATE deliveries SET claimed=0 WHERE claimed=1")
        return conn

    # -- group commit on the loop ----------------------------------------------------------

    async def submit(self, op: Operation) -> Any:
        if self._conn is None:
            raise StoreError(f"event log {self.path} is not open")
        future = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((op, future))
        return await future

    def _flush(self) -> None:
        group, self._pending = self._pending, []
        try:
            self._write(group)
        except BaseException as exc:  # noqa: BLE001 - whoever waits must hear; nobody may wait for ever
            error = exc if isinstance(exc, StoreError) else self._store_error(exc)
            for _, future in group:
                _settle(future, None, error)

    def _store_error(self, exc: BaseException) -> StoreError:
        """What the publisher hears (the ingress's 503): a full disk is named as one. Not the
        path: a publisher has no business knowing the server's files."""
        if isinstance(exc, sqlite3.Error) and disk_full(exc, self.path):
            return StoreError(f"disk full, no space left on device for the event log ({exc})")
        if isinstance(exc, sqlite3.Error) and (limit := file_size_limit_reached(exc, self.path)):
            return StoreError(f"the event log reached the file size limit of {limit} bytes "
                              f"(RLIMIT_FSIZE, `ulimit -f`) ({exc})")
        return StoreError(f"the event log failed: {exc}")

    def _restart_wal(self) -> bool | None:
        """Start the WAL over between two groups, when the checkpointer could not: under writes
        that never pause, its RESTART can find the writer busy round after round. Here, on the
        writer's own connection, nobody is writing. A checkpoint of the checkpointer's own still
        under way would make it fail at once (SQLite's checkpoint lock takes no busy handler):
        it waits for that round first. True: started over; False: tried, and a reader (or a
        full disk) was in the way; None: not tried, the round took too long."""
        assert self._conn is not None and self._checkpointer is not None
        if not self._checkpointer.round.acquire(timeout=BUSY_TIMEOUT):
            return None  # a round that long is stuck on the disk: the next group asks again
        self._checkpointer.restart_failed = False  # tried now: the checkpointer's next round asks again
        try:
            # A reader in the way fails it at once, rather than after the loop waited for it.
            self._conn.execute("PRAGMA busy_timeout=0")
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            busy = 1
        finally:
            self._checkpointer.round.release()
            self._conn.execute(f"PRAGMA busy_timeout={round(BUSY_TIMEOUT * 1000)}")
        return not busy

    def _keep_up_with_the_wal(self) -> None:
        """Before a group: start the WAL over if the checkpointer asked, or if it grew past its
        bound (WAL_HARD_LIMIT): a starved checkpointer thread or a slow fsync fell behind. The
        loop then waits for that checkpoint: a stall now and then, rather than a WAL that fills
        the disk. A RESTART that a reader's old snapshot made fail is tried again only once the
        WAL has grown by another WAL_FILE_LIMIT, not at the next group: each try fails on that
        reader's snapshot, and copies what it can. The size is looked at every WAL_LOOK_EVERY:
        what a writer adds in that time is nothing beside the bound."""
        assert self._checkpointer is not None
        now = time.monotonic()
        if now - self._wal_looked_at < WAL_LOOK_EVERY and not self._checkpointer.restart_failed:
            return
        self._wal_looked_at = now
        size = self._wal_size()
        if size <= WAL_HARD_LIMIT:
            self._wal_bound = WAL_HARD_LIMIT  # it started over, whoever did it
        overgrown = size > self._wal_bound
        if not (overgrown or self._checkpointer.restart_failed):
            return
        if overgrown:
            log.warning("the WAL grew past its bound, the writer starts it over (a slow disk?)",
                        wal_bytes=size, bound=self._wal_bound)
        if self._restart_wal() is False and overgrown:
            self._wal_bound = size + WAL_FILE_LIMIT

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _write(self, group: list) -> None:
        if self._conn is None:
            raise StoreError(f"event log {self.path} is closed")
        if self._checkpointer is not None:
            self._keep_up_with_the_wal()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # busy (another process holds the database) or broken: all fail
            raise self._store_error(exc) from exc
        try:
            results = self._transaction(self._conn, group, begun=True)
        except _OperationFailed:
            results = [result for item in group for result in self._alone(self._conn, item)]
        for future, value, error in results:
            _settle(future, value, error)

    def _transaction(self, conn: sqlite3.Connection, group: list, begun: bool = False) -> list[tuple]:
        """Run the group in one transaction; if any operation fails, raise _OperationFailed
        (and `_flush` runs each on its own, so one bad operation fails alone)."""
        results = []
        try:
            if not begun:
                conn.execute("BEGIN IMMEDIATE")
            # All appends of the group go in as one INSERT batch: publishing is the hot path.
            rows = [row for op, _ in group if isinstance(op, Append) for row in op.rows]
            handed = {}
            if rows:
                conn.executemany(INSERT, rows)
                handed = self._take_for_waiting_claims(conn, rows) if self._arrivals.takers else handed
            for op, future in group:
                results.append((future, None if isinstance(op, Append) else _run(op, conn), None))
            conn.execute("COMMIT")
        except BaseException as exc:
            self._inflight.rollback()  # first: a ROLLBACK that fails too must not leave the claims changed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _OperationFailed from exc
        self._inflight.commit()
        for subscription, deliveries in handed.items():
            self._hand(subscription, deliveries)
        return results

    def _hand(self, subscription: str, deliveries: list[Delivery]) -> None:
        """Hand what was claimed for the waiting claim over, but only what is still claimed (a
        drop of the subscription in the same group unclaimed it); should that claim be gone,
        what it would have had is unclaimed again, for the next claim to find."""
        claimed = self._inflight.of(subscription)
        deliveries = [d for d in deliveries if d.id in claimed]
        if deliveries and not self._arrivals.hand(subscription, deliveries):
            self._inflight.drop([d.id for d in deliveries])
            self._inflight.commit()  # between two transactions: nothing else is journaled

    def _take_for_waiting_claims(self, conn: sqlite3.Connection, rows: list[tuple]) -> dict[str, list[Delivery]]:
        """Claim fresh rows for the claims waiting with nothing to do (Arrivals.takers), in the
        transaction that stores them, so that a rollback undoes it; they are handed over once
        it commits. The rows of one executemany get consecutive ids (AUTOINCREMENT, one writer)."""
        takers = self._arrivals.takers
        first = conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
        handed: dict[str, list[Delivery]] = {}
        for offset, (subscription, attributes, payload, now, _) in enumerate(rows):
            taker = takers.get(subscription)
            if taker is not None:
                taking = handed.setdefault(subscription, [])
                if len(taking) < taker.limit:
                    taking.append(_delivery((first + offset, attributes, payload, 0, None, now), subscription))
        for subscription, deliveries in handed.items():
            self._inflight.take(subscription, [d.id for d in deliveries])
        return handed

    def _alone(self, conn: sqlite3.Connection, item: tuple) -> list[tuple]:
        op, future = item
        try:
            return self._transaction(conn, [item])
        except _OperationFailed as failed:
            exc = failed.__cause__
            error = self._store_error(exc) if isinstance(exc, sqlite3.Error) else exc
            return [(future, None, error)]

    # -- the EventLog operations ----------------------------------------------------------

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        now = self.clock()
        rows = []
        for event, subscriptions in routed:
            attributes, payload = to_record(event)
            key = ordering_key(event)
            rows.extend((sub, attributes, payload, now, key) for sub in subscriptions)
        if rows:
            await self.submit(Append(rows))
            self._arrivals.wake({row[0] for row in rows})

    async def append_unique(self, routed: Sequence[tuple[Event, Sequence[str]]], keys: Sequence[str | None],
                            window: float) -> list[bool]:
        now = self.clock()

        def op(conn: sqlite3.Connection) -> list[bool]:
            fresh = [key is None or conn.execute(SEEN, (key, now, now - window)).rowcount == 1 for key in keys]
            rows = [(sub, *to_record(event), now, ordering_key(event))
                    for (event, subscriptions), new in zip(routed, fresh, strict=True) if new
                    for sub in subscriptions]
            conn.executemany(INSERT, rows)
            return fresh

        fresh = await self.submit(op)
        self._arrivals.wake({sub for _, subscriptions in routed for sub in subscriptions})
        return fresh

    async def forget_seen(self, before: float) -> int:
        # In chunks, each its own turn of the writer: a window's worth of keys at a high rate
        # is millions of rows, and deleting them at once would stall the event loop.
        forgotten = 0
        while True:
            count = await self.submit(lambda c: c.execute(
                "DELETE FROM seen WHERE key IN (SELECT key FROM seen WHERE at<? LIMIT ?)",
                (before, FORGET_CHUNK)).rowcount)
            forgotten += count
            if count < FORGET_CHUNK:
                return forgotten

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        return await self.submit(lambda c: tuple(c.execute(
            "SELECT count(*), min(stored_at) FROM deliveries WHERE subscription=?", (subscription,)).fetchone()))

    async def claim(self, subscription: str, limit: int, ordered: bool = False, wait: float = 0.0) -> list[Delivery]:
        def now() -> Awaitable[tuple[list[Delivery], float | None]]:
            return self._claim_now(subscription, limit, ordered)

        return await self._arrivals.claim(subscription, now, self.release, wait, self.clock, limit, ordered)

    async def _claim_now(self, subscription: str, limit: int, ordered: bool) -> tuple[list[Delivery], float | None]:
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[list[Delivery], float | None]:
            taken = self._inflight.of(subscription)
            ids = [i for (i,) in conn.execute(ORDERED_CLAIM if ordered else CLAIM,
                                              (subscription, now, limit + len(taken)))
                   if i not in taken][:limit]
            self._inflight.take(subscription, ids)
            # Rows already due but not returned are past the limit or waiting behind their
            # key: the next wake-up worth scheduling is the next row that falls due later.
            nxt = conn.execute(
                "SELECT min(due_at) FROM deliveries WHERE subscription=? AND claimed=0 AND due_at>?",
                (subscription, now)).fetchone()[0]
            return [_delivery(r, subscription) for r in _rows(conn, ids)], nxt

        return await self.submit(op)

    async def ack(self, delivery_ids: Sequence[int]) -> None:
        delivery_ids = list(delivery_ids)  # as they are now: the op runs later
        ids = [(i,) for i in delivery_ids]

        def op(conn: sqlite3.Connection) -> set[str]:
            conn.executemany("DELETE FROM deliveries WHERE id=?", ids)
            settled = self._inflight.subscriptions(delivery_ids)
            self._inflight.drop(delivery_ids)
            return settled

        self._arrivals.settled(await self.submit(op))

    async def release(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:  # in memory only, but in the writer's order, after what came before
            ids = list(delivery_ids)
            await self.submit(lambda c: self._inflight.drop(ids))
            self._arrivals.wake_all()

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE deliveries SET attempts=attempts+1, due_at=?, last_error=? WHERE id=?",
                         (self.clock() + delay, error, delivery.id))
            self._inflight.drop([delivery.id])

        await self.submit(op)
        self._arrivals.wake_all()  # a claim waiting on this subscription must see the new due time

    async def extend(self, delivery_ids: Sequence[int]) -> None:
        pass  # a claim here lasts until it is acked, retried or released (or the process ends)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        attributes, payload = to_record(letter.event)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries WHERE id=?", (delivery.id,))
            self._inflight.drop([delivery.id])
            conn.execute(
                "INSERT INTO dead_letters(subscription, attributes, payload, attempts, reason, status,"
                " error, failed_at) VALUES (?,?,?,?,?,?,?,?)",
                (letter.subscription, attributes, payload, letter.attempts, letter.reason,
                 letter.status, letter.error, letter.failed_at))

        await self.submit(op)
        self._arrivals.settled([delivery.subscription])

    async def redirect(self, delivery_id: int, subscription: str, event: Event) -> None:
        attributes, payload = to_record(event)
        now = self.clock()
        def op(conn: sqlite3.Connection) -> set[str]:
            conn.execute("UPDATE deliveries SET subscription=?, attributes=?, payload=?, attempts=0,"
                         " due_at=?, last_error=NULL, okey=?, stored_at=due_at WHERE id=?",
                         (subscription, attributes, payload, now, ordering_key(event), delivery_id))
            moved_from = self._inflight.subscriptions([delivery_id])
            self._inflight.drop([delivery_id])
            return moved_from

        self._arrivals.settled(await self.submit(op))
        self._arrivals.wake([subscription])

    async def dead_letters(self, subscription: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        where, args = ("WHERE subscription=?", (subscription,)) if subscription else ("", ())
        rows = await self.submit(lambda c: c.execute(
            "SELECT id, subscription, attributes, payload, attempts, reason, status, error, failed_at "
            f"FROM dead_letters {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall())
        return [_dead_letter(r) for r in rows]

    async def replay_dead_letters(self, ids: Sequence[int], requeue: Requeue) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            moved, now = [], self.clock()
            for i in dict.fromkeys(ids):
                row = conn.execute(
                    "SELECT id, subscription, attributes, payload, attempts, reason, status, error, "
                    "failed_at FROM dead_letters WHERE id=?", (i,)).fetchone()
                if row is None:
                    continue
                letter = _dead_letter(row)
                event, subscriptions = requeue(letter)
                if not subscriptions:
                    continue
                attributes, payload = to_record(event)
                conn.executemany(INSERT, [(sub, attributes, payload, now, ordering_key(event))
                                          for sub in subscriptions])
                conn.execute("DELETE FROM dead_letters WHERE id=?", (i,))
                moved.append(letter)
            return moved

        moved = await self.submit(op)
        self._arrivals.wake_all()
        return moved

    async def purge_dead_letters(self, subscription: str | None = None, before: float | None = None) -> int:
        where, args = _dead_letter_filter(subscription, before)
        return await self.submit(lambda c: c.execute(f"DELETE FROM dead_letters {where}", args).rowcount)

    async def count_dead_letters(self) -> dict[str, int]:
        rows = await self.submit(lambda c: c.execute(
            "SELECT subscription, count(*) FROM dead_letters GROUP BY subscription").fetchall())
        return dict(rows)

    async def pending(self, subscription: str) -> int:
        return await self.submit(lambda c: c.execute(
            "SELECT count(*) FROM deliveries WHERE subscription=?", (subscription,)).fetchone()[0])

    async def drop_subscription(self, subscription: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries WHERE subscription=?", (subscription,))
            self._inflight.drop_subscription(subscription)

        await self.submit(op)


def _dead_letter_filter(subscription: str | None, before: float | None) -> tuple[str, tuple]:
    clauses, args = [], []
    if subscription is not None:
        clauses.append("subscription=?")
        args.append(subscription)
    if before is not None:
        clauses.append("failed_at<?")
        args.append(before)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _rows(conn: sqlite3.Connection, ids: list[int]) -> list[tuple]:
    """The rows of `ids`, in the order of `ids`."""
    found: dict[int, tuple] = {}
    for start in range(0, len(ids), ROWS_PER_READ):
        chunk = ids[start:start + ROWS_PER_READ]
        found.update((row[0], row) for row in conn.execute(CLAIMED_ROWS.format(",".join("?" * len(chunk))), chunk))
    return [found[i] for i in ids]


def _delivery(row: tuple, subscription: str) -> Delivery:
    event, undecodable = from_record_or_stub(row[1], row[2], f"delivery {row[0]}")
    return Delivery(row[0], subscription, event, row[3], row[4], undecodable, row[5] or 0.0)


def _dead_letter(row: tuple) -> DeadLetter:
    event, _ = from_record_or_stub(row[2], row[3], f"dead letter {row[0]}")
    return DeadLetter(row[0], row[1], event, row[4], row[5], row[6], row[7], row[8])


def disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """SQLITE_FULL; or an I/O error (SQLite says so when growing its -shm file fails) on a
    filesystem with no room left."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == SQLITE_FULL:
        return True
    if code != SQLITE_IOERR:
        return False
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 64 * 1024


def file_size_limit_reached(exc: sqlite3.Error, path: Path) -> int | None:
    """The process's file size limit, when an I/O error came from a file of the log at it
    (the write failed with EFBIG; Python ignores the SIGXFSZ that would otherwise kill it)."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_IOERR:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if file.stat().st_size + 65536 > limit:
                return limit
        except OSError:
            continue
    return None


def own(path: Path) -> int:
    """Lock `<path>.lock` for this process: two meshes on one event log would hand out each
    other's deliveries (each resets claims when it opens)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError("it is in use by another process (a mesh with another data dir on the same --store?)") from None
    return fd


class Checkpointer(threading.Thread):
    """Copies the WAL back into the database file now and then, on its own connection, so
    the event loop never waits for the fsync a checkpoint does.

    That checkpoint (PASSIVE) never blocks the writer, and so under steady writes it has
    never copied all of the WAL when a transaction begins: SQLite then never starts the
    WAL over, and it grows until the disk is full. Past WAL_LIMIT of frames, a RESTART
    checkpoint starts it over: it holds off the writer only for as long as it takes to
    copy what the PASSIVE one just left, mostly nothing.

    RESTART, not TRUNCATE: the WAL file keeps its size (at most WAL_FILE_LIMIT), so the
    writer's next frames overwrite blocks already on disk. After a TRUNCATE every frame
    was a new block to allocate, and on ext4 the loop thread was seen blocked in that
    allocation while the checkpoint's fsync wrote the frames before it out, and asleep
    in SQLite's busy handler while the TRUNCATE held the write lock: 35-100 ms stalls
    every second or two under load, the whole of the latency bench's p99."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="fmesh-checkpoint", daemon=True)
        self.path = path
        self.restart_failed = False  # a RESTART found the writer busy: see SqliteEventLog._restart_wal
        self.round = threading.Lock()  # held while a checkpoint runs
        self._stopping = threading.Event()
        self._frame: int | None = None
        self._restarted_at: int | None = None  # the WAL's frame count at the last RESTART

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY):
                try:
                    # Waits for the writer as long as the writer waits for it (BUSY_TIMEOUT):
                    # neither may stall long. Connected in the loop: a failed connect (no fds
                    # left, say) is tried again next round rather than ending the thread.
                    conn = conn or sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                                   timeout=BUSY_TIMEOUT)
                    with self.round:
                        self._checkpoint(conn)
                except (sqlite3.Error, OSError):
                    pass  # busy, locked, no WAL yet, or a full disk: the next round will do it
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # frames is -1 when it could not run. The same count as at the last RESTART: no
        # write came since, the writer's next one starts the WAL over, and another RESTART
        # would only take the writer's lock for nothing, round after round.
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames * self._frame_bytes(conn) > WAL_LIMIT and frames != self._restarted_at:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restart_failed = bool(busy)  # the writer does it then
            self._restarted_at = None if busy else frames

    def _frame_bytes(self, conn: sqlite3.Connection) -> int:
        """A WAL frame: its 24-byte header and a page (the page size is fixed in WAL mode)."""
        if self._frame is None:
            self._frame = 24 + conn.execute("PRAGMA page_size").fetchone()[0]
        return self._frame

    def stop(self) -> None:
        self._stopping.set()
        self.join()


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


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
