"""`EventLog` on JetStream: deliveries (`deliveries.py`), dead letters (`dead_letters.py`)
and the keys of bridged events seen lately.

`append_unique` looks keys up (`seen.py`), publishes what is new with a `Nats-Msg-Id`
made of the key and the entry it found, so two processes taking the same bridged event
at once store it once (the stream's duplicate window drops the second), then records
the keys. A crash between the publish and the record lets a retry after the stream's duplicate
window through: a duplicate, never a loss. `forget_seen` has nothing to do (the bucket
forgets by itself) and returns 0.

Replaying dead letters appends them again and only then deletes the letters. A crash
in between leaves both: replayed again, the letter is appended with the same
`Nats-Msg-Id`, which the stream drops within its duplicate window (a duplicate after
that). `requeue` runs for every letter before anything is appended, so an error there
moves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fmesh.broker.jetstream.dead_letters import DeadLetters
from fmesh.broker.jetstream.deliveries import Deliveries
from fmesh.broker.jetstream.engine import Engine
from fmesh.broker.jetstream.names import token
from fmesh.broker.jetstream.seen import SeenKeys
from fmesh.broker.log import Requeue

from fmesh.contracts import DeadLetter, Delivery, DeliveryId
from fmesh.events import Event


class JetStreamEventLog:
    """`EventLog` over one mesh's streams on a NATS server or cluster."""

    def __init__(self, engine: Engine, url: str, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.claim_ttl = engine.options.ack_wait  # an unextended claim goes to another node after it
        self.engine = engine
        self._deliveries = Deliveries(engine, clock)
        self._dead = DeadLetters(engine)
        self._seen = SeenKeys(engine)

    @property
    def clock(self) -> Callable[[], float]:
        """When deliveries are stored and keys seen (due times are the server's own)."""
        return self._deliveries.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._deliveries.clock = clock

    @property
    def max_record_bytes(self) -> int | None:
        """The server's max_payload: a message over it is refused (default 1 MB)."""
        return self.engine.client.max_payload

    async def open(self) -> None:
        await self.engine.open()

    async def close(self) -> None:
        await self.engine.close()

    # -- deliveries ------------------------------------------------------------------------

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        await self._deliveries.append(routed)

    async def claim(self, subscription: str, limit: int, ordered: bool = False, wait: float = 0.0) -> list[Delivery]:
        return await self._deliveries.claim(subscription, limit, ordered, wait)

    async def ack(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._deliveries.ack(delivery_ids)

    async def release(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._deliveries.release(delivery_ids)

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        await self._deliveries.retry(delivery, delay, error)

    async def extend(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._deliveries.extend(delivery_ids)

    async def redirect(self, delivery_id: DeliveryId, subscription: str, event: Event) -> None:
        await self.engine.publish([self._deliveries.outgoing(event, subscription, f"redirect-{delivery_id}")])
        await self._deliveries.ack([delivery_id])

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        return await self._deliveries.backlog(subscription)

    async def pending(self, subscription: str) -> int:
        return await self._deliveries.pending(subscription)

    async def drop_subscription(self, subscription: str) -> None:
        await self._deliveries.drop(subscription)

    # -- bridged events --------------------------------------------------------------------

    async def append_unique(self, routed: Sequence[tuple[Event, Sequence[str]]], keys: Sequence[str | None],
                            window: float) -> list[bool]:
        now = self.clock()
        sightings = await self._seen.look(keys, now - window, ttl=window)
        fresh = [not sighting.seen for sighting in sightings]
        sent = [(i, sub) for i, (_, subs) in enumerate(routed) if fresh[i] for sub in subs]
        acks = await self.engine.publish([self._deliveries.outgoing(routed[i][0], sub, sightings[i].msg_id(sub))
                                          for i, sub in sent])
        stored = {i for (i, _), ack in zip(sent, acks, strict=True) if not ack.duplicate}
        for i, _ in sent:
            fresh[i] = i in stored                   # all duplicates: another process stored it just now
        await self._seen.record([s for s, new in zip(sightings, fresh, strict=True) if new], now, ttl=window)
        return fresh

    async def forget_seen(self, before: float) -> int:
        return 0  # the bucket's TTL forgets them (see the module docstring)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        [stored] = await self.engine.publish([self._dead.outgoing(letter, f"dead-{delivery.id}-{letter.attempts}")])
        letter.id = stored.seq
        await self._deliveries.ack([delivery.id])

    async def dead_letters(self, subscription: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        return await self._dead.read(subscription, limit)

    async def replay_dead_letters(self, ids: Sequence[int], requeue: Requeue) -> list[DeadLetter]:
        letters = await self._dead.get(ids)
        plans = [(letter, *requeue(letter)) for letter in letters]
        moved = [(letter, event, subs) for letter, event, subs in plans if subs]
        await self.engine.publish([self._deliveries.outgoing(event, sub, f"replay-{letter.id}.{token(sub)}")
                                   for letter, event, subs in moved for sub in subs])
        await self._dead.delete([letter.id for letter, _, _ in moved])
        return [letter for letter, _, _ in moved]

    async def purge_dead_letters(self, subscription: str | None = None, before: float | None = None) -> int:
        return await self._dead.purge(subscription, before)

    async def count_dead_letters(self) -> dict[str, int]:
        return await self._dead.count()
