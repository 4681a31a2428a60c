"""The event log's deliveries on JetStream: one work-queue stream, a durable pull
consumer per subscription shared by every process that claims it.

Retries are nak'ed with their delay, not republished. The message keeps its place in
its subject, which an ordered subscription needs (a retrying head must hold back the
events behind it, and a republished copy would queue up behind them), and the server
keeps the due time, so no process has to claim early and put it back. What a nak
cannot carry, the attempt count and last error, goes into a key/value bucket under
the delivery's id before the nak, and is read back when the message comes again
(`num_delivered` > 1). `release` naks without writing it, so it counts no attempt, and
a claim that lapses (a process died: the ack wait ran out) counts none either, as on
SQLite. An entry outlives a delivery acked by a process that died before deleting it
only as long as the bucket's TTL (`ATTEMPTS_TTL`, far longer than any retry delay).

Ordered subscriptions (`delivery.ordering: ordered`): events with a `partitionkey` go
to one of `buckets` subjects by the key's hash, each consumed by its own consumer with
`max_ack_pending=1`, so a key (and any key sharing its bucket) goes one at a time
across every process, in publish order; events without a key have their own subject
and never wait. A work-queue stream lets one consumer have a subject, so switching a
subscription between ordered and not deletes the consumers of the other way (their
unacked messages are then delivered again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from fmesh.broker.jetstream.claims import Claims
from fmesh.broker.jetstream.engine import ATTEMPTS_TTL, Engine, Outgoing
from fmesh.broker.jetstream.names import UNKEYED, bucket_of
from fmesh.broker.jetstream.records import decode, encode, new_delivery_id
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError

from fmesh.contracts import Delivery, DeliveryId
from fmesh.events import Event, ordering_key

NOT_UNIQUE = 10100   # JetStream's error code: another consumer of a work-queue stream has this subject
ACK, NAK, PROGRESS = b"+ACK", b"-NAK", b"+WPI"


@dataclass(slots=True)
class Held:
    """A delivery this process has claimed: the message to answer, and its attempts so far."""

    msg: Msg
    attempts: int


class Deliveries:
    """Append, claim and answer deliveries (the event log's half that is not dead letters)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.names = engine.names
        self.clock = clock
        self._held: dict[DeliveryId, Held] = {}
        self._claims: dict[tuple[str, bool], Claims] = {}

    # -- appending -------------------------------------------------------------------------

    def outgoing(self, event: Event, subscription: str, msg_id: str | None = None) -> Outgoing:
        key = ordering_key(event)
        part = UNKEYED if key is None else f"k{bucket_of(key, self.engine.options.buckets)}"
        body = encode({"id": new_delivery_id(), "at": self.clock()}, event)
        return self.names.delivery_subject(subscription, part), body, msg_id

    async def append(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        await self.engine.publish([self.outgoing(event, sub) for event, subs in routed for sub in subs])

    # -- claiming --------------------------------------------------------------------------

    async def claim(self, subscription: str, limit: int, ordered: bool, wait: float) -> list[Delivery]:
        self.engine.connected()
        claims = await self._claims_of(subscription, ordered)
        msgs = await claims.claim(limit, wait)
        if not msgs and claims.missing:                      # its consumers went away: make them again
            claims = await self._claims_of(subscription, ordered)
            msgs = await claims.claim(limit, 0)
        try:
            return await self._hold(subscription, msgs)
        except BaseException:
            claims.nak(msgs)                                 # cancelled or failed: nothing is claimed
            raise

    async def _claims_of(self, subscription: str, ordered: bool) -> Claims:
        claims = self._claims.get((subscription, ordered))
        if claims is None or claims.missing:
            free, held = await self._make_consumers(subscription, ordered)
            claims = self._claims[(subscription, ordered)] = Claims(
                self.engine, self.names.deliveries, free, held)
        return claims

    def _consumers(self, subscription: str, ordered: bool) -> list[ConsumerConfig]:
        def consumer(part: str | None, at_once: int) -> ConsumerConfig:
            return ConsumerConfig(
                durable_name=self.names.consumer(subscription, part), ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=self.engine.options.ack_wait, max_deliver=-1,
                max_ack_pending=at_once, filter_subject=self.names.delivery_subject(subscription, part or ">"))

        if not ordered:
            return [consumer(None, -1)]
        return [consumer(UNKEYED, -1)] + [consumer(f"k{n}", 1) for n in range(self.engine.options.buckets)]

    async def _make_consumers(self, subscription: str, ordered: bool) -> tuple[list[str], list[str]]:
        configs = self._consumers(subscription, ordered)
        with self.engine.translated(f"cannot make the consumers of {subscription!r}"):
            try:
                await self._add(configs)
            except BadRequestError as exc:
                if exc.err_code != NOT_UNIQUE:
                    raise
                await self.delete_consumers(subscription, [not ordered])   # it changed its ordering
                await self._add(configs)
        free = [c.durable_name for c in configs if c.max_ack_pending != 1]
        return free, [c.durable_name for c in configs if c.max_ack_pending == 1]

    async def _add(self, configs: list[ConsumerConfig]) -> None:
        for config in configs:
            await self.engine.js.add_consumer(self.names.deliveries, config)

    async def delete_consumers(self, subscription: str, orderings: Sequence[bool] = (False, True)) -> None:
        for ordered in orderings:
            self._claims.pop((subscription, ordered), None)
            for config in self._consumers(subscription, ordered):
                try:
                    await self.engine.js.delete_consumer(self.names.deliveries, config.durable_name)
                except NotFoundError:
                    pass

    async def _hold(self, subscription: str, msgs: list[Msg]) -> list[Delivery]:
        deliveries = []
        for msg in msgs:
            meta, event, undecodable = decode(msg.data, f"delivery {msg.metadata.sequence.stream}")
            delivery = Delivery(str(meta.get("id") or f"seq-{msg.metadata.sequence.stream}"), subscription,
                                event, undecodable=undecodable, stored_at=float(meta.get("at") or 0.0))
            deliveries.append(delivery)
        counted = await self._attempts([d.id for d, m in zip(deliveries, msgs, strict=True)
                                        if m.metadata.num_delivered > 1])
        for delivery, msg in zip(deliveries, msgs, strict=True):
            delivery.attempts, delivery.last_error = counted.get(delivery.id, (0, None))
            self._held[delivery.id] = Held(msg, delivery.attempts)
        return deliveries

    # -- attempts --------------------------------------------------------------------------

    async def _attempts(self, ids: list[DeliveryId]) -> dict[DeliveryId, tuple[int, str | None]]:
        """The attempts and last error of deliveries that came again (most came back released)."""
        if not ids:
            return {}
        kv = await self.engine.key_value(self.names.attempts, ttl=ATTEMPTS_TTL)

        async def one(delivery_id: DeliveryId) -> tuple[int, str | None] | None:
            try:
                entry = await kv.get(str(delivery_id))
            except KeyNotFoundError:
                return None
            record = orjson.loads(entry.value)
            return int(record["attempts"]), record.get("error")

        with self.engine.translated("cannot read attempt counts"):
            found = await asyncio.gather(*(one(i) for i in ids))
        return {i: f for i, f in zip(ids, found, strict=True) if f is not None}

    async def _forget_attempts(self, held: list[tuple[DeliveryId, Held]]) -> None:
        retried = [str(i) for i, h in held if h.attempts > 0]
        if retried:
            kv = await self.engine.key_value(self.names.attempts, ttl=ATTEMPTS_TTL)
            with self.engine.translated("cannot forget attempt counts"):
                await asyncio.gather(*(kv.delete(i) for i in retried))

    # -- answering claims ------------------------------------------------------------------

    async def answer(self, delivery_ids: Sequence[DeliveryId], ack: bytes) -> list[tuple[DeliveryId, Held]]:
        """Send `ack` for each delivery this process holds; they are no longer held."""
        held = [(i, self._held[i]) for i in dict.fromkeys(delivery_ids) if i in self._held]
        with self.engine.translated("cannot answer deliveries"):
            await asyncio.gather(*(self.engine.confirm(h.msg.reply, ack) for _, h in held))
        for i, _ in held:
            self._held.pop(i, None)
        return held

    async def ack(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._forget_attempts(await self.answer(delivery_ids, ACK))

    async def release(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self.answer(delivery_ids, NAK)

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        held = self._held.get(delivery.id)
        if held is None:
            return
        kv = await self.engine.key_value(self.names.attempts, ttl=ATTEMPTS_TTL)
        with self.engine.translated(f"cannot count an attempt of delivery {delivery.id}"):
            await kv.put(str(delivery.id), orjson.dumps({"attempts": held.attempts + 1, "error": error}))
        held.attempts += 1
        nak = NAK + b" " + orjson.dumps({"delay": int(delay * 1e9)}) if delay > 0 else NAK
        await self.answer([delivery.id], nak)

    async def extend(self, delivery_ids: Sequence[DeliveryId]) -> None:
        held = [self._held[i] for i in dict.fromkeys(delivery_ids) if i in self._held]
        with self.engine.translated("cannot extend claims"):
            await asyncio.gather(*(self.engine.confirm(h.msg.reply, PROGRESS) for h in held))

    # -- counting --------------------------------------------------------------------------

    async def pending(self, subscription: str) -> int:
        with self.engine.translated(f"cannot count the deliveries of {subscription!r}"):
            info = await self.engine.js.stream_info(self.names.deliveries,
                                                    subjects_filter=self.names.delivery_subject(subscription))
        return sum((info.state.subjects or {}).values())

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        count = await self.pending(subscription)
        if count == 0:
            return 0, None
        with self.engine.translated(f"cannot read the oldest delivery of {subscription!r}"):
            try:
                oldest = await self.engine.js.get_msg(self.names.deliveries, seq=1, next=True,
                                                      subject=self.names.delivery_subject(subscription))
            except NotFoundError:
                return 0, None
        meta, _, _ = decode(oldest.data or b"", f"delivery {oldest.seq}")
        return count, float(meta.get("at") or 0.0)

    async def drop(self, subscription: str) -> None:
        with self.engine.translated(f"cannot drop subscription {subscription!r}"):
            await self.delete_consumers(subscription)
            await self.engine.api(f"STREAM.PURGE.{self.names.deliveries}",
                                  {"filter": self.names.delivery_subject(subscription)})

