"""The in-memory twin of the event log, for fast tests and `--store memory://`.

Same contract as `SqliteEventLog`, nothing survives the process.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fmesh.broker.arrivals import Arrivals
from fmesh.broker.log import Requeue

from fmesh.contracts import DeadLetter, Delivery
from fmesh.events import Event, ordering_key


@dataclass(slots=True)
class _Row:
    delivery: Delivery
    due_at: float
    claimed: bool = False


class MemoryEventLog:
    """`EventLog` in dictionaries."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.url = "memory://"
        self.claim_ttl = None
        self.max_record_bytes = None
        self.clock = clock              # when deliveries fall due (tests move it)
        self._arrivals = Arrivals()
        self._ids = itertools.count(1)
        self._rows: dict[int, _Row] = {}
        self._dead: dict[int, DeadLetter] = {}
        self._seen: dict[str, float] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        now = self.clock()
        for event, subscriptions in routed:
            for sub in subscriptions:
                delivery = Delivery(next(self._ids), sub, event, stored_at=now)
                self._rows[delivery.id] = _Row(delivery, now)
            self._arrivals.wake(subscriptions)

    async def append_unique(self, routed: Sequence[tuple[Event, Sequence[str]]], keys: Sequence[str | None],
                            window: float) -> list[bool]:
        now = self.clock()
        fresh = []
        for key in keys:
            new = key is None or self._seen.get(key, float("-inf")) < now - window
            if new and key is not None:
                self._seen[key] = now
            fresh.append(new)
        await self.append([item for item, new in zip(routed, fresh, strict=True) if new])
        return fresh

    async def forget_seen(self, before: float) -> int:
        old = [key for key, at in self._seen.items() if at < before]
        for key in old:
            del self._seen[key]
        return len(old)

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        times = [r.delivery.stored_at for r in self._rows.values() if r.delivery.subscription == subscription]
        return len(times), min(times) if times else None

    async def claim(self, subscription: str, limit: int, ordered: bool = False, wait: float = 0.0) -> list[Delivery]:
        async def now() -> tuple[list[Delivery], float | None]:
            return self._claim_now(subscription, limit, ordered, self.clock())

        return await self._arrivals.claim(subscription, now, self.release, wait, self.clock, ordered=ordered)

    def _claim_now(self, subscription: str, limit: int, ordered: bool,
                   now: float) -> tuple[list[Delivery], float | None]:
        mine = [r for r in self._rows.values() if r.delivery.subscription == subscription]
        waiting = [r for r in mine if not r.claimed]
        eligible = [r for r in waiting if r.due_at <= now]
        if ordered:
            heads = {}
            for row in sorted(mine, key=lambda r: r.delivery.id):
                heads.setdefault(ordering_key(row.delivery.event), row.delivery.id)
            eligible = [r for r in eligible if ordering_key(r.delivery.event) is None
                        or heads[ordering_key(r.delivery.event)] == r.delivery.id]
        due = sorted(eligible, key=lambda r: (r.due_at, r.delivery.id))[:limit]
        for row in due:
            row.claimed = True
        rest = [r.due_at for r in waiting if not r.claimed and r.due_at > now]
        return [_copy(r.delivery) for r in due], min(rest) if rest else None

    async def ack(self, delivery_ids: Sequence[int]) -> None:
        acked = [self._rows.pop(i, None) for i in delivery_ids]
        self._arrivals.settled({row.delivery.subscription for row in acked if row is not None})

    async def release(self, delivery_ids: Sequence[int]) -> None:
        for i in delivery_ids:
            if i in self._rows:
                self._rows[i].claimed = False
        self._arrivals.wake_all()

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        row = self._rows.get(delivery.id)
        if row:
            row.delivery.attempts += 1
            row.delivery.last_error = error
            row.due_at = self.clock() + delay
            row.claimed = False
        self._arrivals.wake_all()

    async def extend(self, delivery_ids: Sequence[int]) -> None:
        pass  # a claim here lasts until it is acked, retried or released

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        self._rows.pop(delivery.id, None)
        letter.id = next(self._ids)
        self._dead[letter.id] = letter
        self._arrivals.settled([delivery.subscription])

    async def redirect(self, delivery_id: int, subscription: str, event: Event) -> None:
        if (moved := self._rows.pop(delivery_id, None)) is not None:
            self._arrivals.settled([moved.delivery.subscription])
            now = self.clock()
            self._rows[delivery_id] = _Row(Delivery(delivery_id, subscription, event, stored_at=now), now)
            self._arrivals.wake([subscription])

    async def dead_letters(self, subscription: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        found = [d for d in self._dead.values() if subscription in (None, d.subscription)]
        return found[:limit]

    async def replay_dead_letters(self, ids: Sequence[int], requeue: Requeue) -> list[DeadLetter]:
        routed = [(self._dead[i], requeue(self._dead[i])) for i in dict.fromkeys(ids) if i in self._dead]
        moved = [(letter, event, subs) for letter, (event, subs) in routed if subs]
        await self.append([(event, subs) for _, event, subs in moved])  # raises before any letter goes
        for letter, _, _ in moved:
            del self._dead[letter.id]
        return [letter for letter, _, _ in moved]

    async def purge_dead_letters(self, subscription: str | None = None, before: float | None = None) -> int:
        doomed = [i for i, d in self._dead.items() if subscription in (None, d.subscription)
                  and (before is None or d.failed_at < before)]
        for i in doomed:
            del self._dead[i]
        return len(doomed)

    async def count_dead_letters(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self._dead.values():
            counts[letter.subscription] = counts.get(letter.subscription, 0) + 1
        return counts

    async def pending(self, subscription: str) -> int:
        return sum(1 for r in self._rows.values() if r.delivery.subscription == subscription)

    async def drop_subscription(self, subscription: str) -> None:
        for i in [i for i, r in self._rows.items() if r.delivery.subscription == subscription]:
            del self._rows[i]


def _copy(delivery: Delivery) -> Delivery:
    return Delivery(delivery.id, delivery.subscription, delivery.event, delivery.attempts, delivery.last_error,
                    stored_at=delivery.stored_at)
