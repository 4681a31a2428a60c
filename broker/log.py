"""The event-log contract every store implements (SQLite, memory, later NATS and Kafka).

An event is appended once per subscription it routes to: each copy is a *delivery*
that the subscription's sidecar claims, then acks (gone), retries (released with a
later due time and one more attempt, which survives a restart) or dead-letters
(moved to the dead-letter store with the reason). Claims are not durable: a restarted
log releases them, which is what makes delivery at-least-once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from fmesh.contracts import DeadLetter, Delivery, DeliveryId
from fmesh.events import Event

__all__ = ["DeadLetter", "Delivery", "EventLog", "Requeue"]

# Where a replayed dead letter goes: the event to deliver again and its subscriptions
# (none: the letter stays where it is).
Requeue = Callable[[DeadLetter], tuple[Event, Sequence[str]]]


@runtime_checkable
class EventLog(Protocol):
    """Durable storage of deliveries and dead letters (state and blobs have their own contracts).

    Every method that writes is durable when it returns; a store that cannot write
    raises `StoreError` and nothing counts as accepted.
    """

    url: str
    claim_ttl: float | None  # seconds a claim lasts unless extended (None: until released or acked)

    @property
    def max_record_bytes(self) -> int | None:
        """The largest stored delivery the engine takes, once open (None: no limit of its own)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        """Store each event once for every subscription named beside it."""

    async def append_unique(self, routed: Sequence[tuple[Event, Sequence[str]]], keys: Sequence[str | None],
                            window: float) -> list[bool]:
        """Like `append`, except that an event whose key (one per event, None: no key) was
        stored within the last `window` seconds is dropped; in one atomic step. Returns,
        per event, whether it was stored. (Bridged events, keyed by source and id.)"""

    async def forget_seen(self, before: float) -> int:
        """Forget the keys `append_unique` saw before `before`; returns how many."""

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        """Deliveries stored for a subscription, and when the oldest of them was stored."""

    async def claim(self, subscription: str, limit: int, ordered: bool = False, wait: float = 0.0) -> list[Delivery]:
        """Up to `limit` unclaimed deliveries that are due, oldest due first, now claimed;
        when none is, wait up to `wait` seconds for one (appended, released, falling due).

        `ordered`: of the deliveries sharing a `partitionkey`, only the oldest stored one
        can be claimed, so each key goes one at a time in publish order.
        """

    async def ack(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """The deliveries succeeded: forget them."""

    async def release(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """Unclaim deliveries without counting an attempt."""

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        """Release a delivery for another attempt in `delay` seconds, counting this one."""

    async def extend(self, delivery_ids: Sequence[DeliveryId]) -> None:
        """Keep claimed deliveries claimed a while longer (a handler still working on them)."""

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        """Move a delivery into the dead-letter store."""

    async def redirect(self, delivery_id: int, subscription: str, event: Event) -> None:
        """Hand a delivery to another subscription as a fresh delivery of `event`."""

    async def dead_letters(self, subscription: str | None = None, limit: int = 1000) -> list[DeadLetter]: ...

    async def replay_dead_letters(self, ids: Sequence[int], requeue: Requeue) -> list[DeadLetter]:
        """In one atomic step, turn the dead letters `ids` back into deliveries where
        `requeue` says; returns the letters moved. A failure moves none of them.
        `requeue` may be called more than once for a letter (a store may retry), so it
        must give the same answer each time."""

    async def purge_dead_letters(self, subscription: str | None = None, before: float | None = None) -> int:
        """Delete dead letters (of one subscription, or failed before a time); returns how many."""

    async def count_dead_letters(self) -> dict[str, int]: ...

    async def pending(self, subscription: str) -> int:
        """Deliveries stored for a subscription, claimed or not."""

    async def drop_subscription(self, subscription: str) -> None:
        """Forget the pending deliveries of a deleted subscription."""
