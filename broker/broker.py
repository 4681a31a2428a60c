"""The broker: routes published events to subscriptions and hands out their deliveries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from fmesh.broker.backlog import Backlog
from fmesh.broker.filters import Filter
from fmesh.broker.log import EventLog
from fmesh.broker.router import Router

from fmesh.contracts import DeadLetter, Delivery, DeliveryId, Observer, Publisher, Steps
from fmesh.events import SENDER, UNDECODABLE_TYPE, Event, without_error_context
from fmesh.meshpath import PATH, visited


def dedup_key(event: Event) -> str:
    """What makes two events the same event: their source and id (CloudEvents says so), from
    the same sender: a retry comes from who sent it first, and nobody else may pre-empt it.
    (So an event that reaches this mesh by two different paths is kept twice.)"""
    return f"{event.attributes.get(SENDER, '')}\x00{event.source}\x00{event.id}"


class SubscriptionQueue:
    """`DeliveryQueue` of one subscription over the broker's event log."""

    def __init__(self, broker: Broker, name: str, ordered: bool = False) -> None:
        self.name = name
        self.ordered = ordered
        self._broker = broker
        self._log = broker.log
        self.claim_ttl = broker.log.claim_ttl

    async def claim(self, limit: int, wait: float) -> list[Delivery]:
        return await self._log.claim(self.name, limit, self.ordered, wait)

    async def ack(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._log.ack(delivery_ids)
        self._broker.backlog.finished(self.name, len(delivery_ids))

    async def release(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._log.release(delivery_ids)

    async def retry(self, delivery: Delivery, delay: float, error: str) -> None:
        await self._log.retry(delivery, delay, error)

    async def extend(self, delivery_ids: Sequence[DeliveryId]) -> None:
        await self._log.extend(delivery_ids)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        await self._log.dead_letter(delivery, letter)
        self._broker.backlog.finished(self.name)

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        return await self._broker.redirect(delivery, subscription, event)


class DirectPublisher:
    """`Publisher` into one subscription's queue (e.g. a function's `reply_to` sink)."""

    def __init__(self, broker: Broker, subscription: str) -> None:
        self._broker = broker
        self.subscription = subscription

    async def publish(self, events: Sequence[Event]) -> None:
        await self._broker.enqueue(events, self.subscription)


class RepliesPublisher:
    """`Publisher` of the replies of events already accepted: routed as any event, but never
    refused for a full backlog (that would fail a delivery that succeeded)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def publish(self, events: Sequence[Event]) -> None:
        await self._broker.publish(events, admit=False)


DEDUP_WINDOW = 600.0  # seconds in which a bridged event with the same source and id is a duplicate


@dataclass
class BridgedStats:
    """What arrived from other meshes' bridges."""

    received: int = 0
    duplicates: int = 0     # dropped: the same (source, id) within the dedup window
    looped: int = 0         # dropped: this mesh was already on the event's path


class Broker:
    """`Publisher` plus the subscription registry, over one event log.

    Events forwarded by another mesh (they carry `fmeshpath`) are dropped when this mesh
    is already on their path (a loop), and when an event with the same source and id
    came within `dedup_window` seconds (a sender's retry after a lost answer). A publish
    that would route to a subscription at its `backlog` bound is refused (`Backlogged`)."""

    def __init__(self, log: EventLog, mesh_id: str = "", dedup_window: float = DEDUP_WINDOW,
                 backlog: Backlog | None = None) -> None:
        self.log = log
        self.backlog = backlog or Backlog()
        self.mesh_id = mesh_id
        self.dedup_window = dedup_window
        self.router = Router()
        self.bridged = BridgedStats()
        self.observers: list[Observer] = []   # told what was accepted and where it went (the trail, metrics)
        self._queues: dict[str, SubscriptionQueue] = {}

    async def publish(self, events: Sequence[Event], admit: bool = True) -> None:
        """Route and store `events`; with `admit`, refuse them all (`Backlogged`) if one would
        go to a subscription at its backlog bound."""
        if any(PATH in event.attributes for event in events):
            await self._publish_bridged(events, admit)
            return
        routed = [(event, self.router.match(event.attributes)) for event in events]
        if admit:
            self.backlog.admit(routed)
        await self.log.append([(e, subs) for e, subs in routed if subs])
        self.backlog.added(routed)
        self._tell(routed)

    async def _publish_bridged(self, events: Sequence[Event], admit: bool) -> None:
        arriving = [event for event in events if self.mesh_id not in visited(event)]
        routed = [(event, self.router.match(event.attributes)) for event in arriving]
        if admit:
            self.backlog.admit(routed)
        keys = [dedup_key(event) if PATH in event.attributes else None for event in arriving]
        stored = await self.log.append_unique(routed, keys, self.dedup_window)
        self.backlog.added(r for r, kept in zip(routed, stored, strict=True) if kept)
        self.bridged.looped += len(events) - len(arriving)
        self.bridged.received += sum(1 for key in keys if key is not None)
        self.bridged.duplicates += stored.count(False)
        self._tell([r for r, kept in zip(routed, stored, strict=True) if kept])
        for event, kept in zip(arriving, stored, strict=True):
            if not kept:
                self._tell_step(event, Steps.DUPLICATE, f"a duplicate within {self.dedup_window:g}s: dropped")
        for event in events:
            if self.mesh_id in visited(event):
                self._tell_step(event, Steps.LOOPED, "this mesh is on its path already: dropped")

    def _tell(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        for observer in self.observers:
            observer.accepted(routed)

    def _tell_step(self, event: Event, kind: str, detail: str, subscription: str = "") -> None:
        for observer in self.observers:
            observer.step(event, subscription, kind, detail=detail)

    def subscribe(self, name: str, filter: Filter, ordered: bool = False) -> SubscriptionQueue:
        """Route matching events to `name` from now on; returns its delivery queue.

        `ordered`: events with the same `partitionkey` go one at a time, in publish order.
        """
        self.router.set(name, filter)
        return self.queue(name, ordered)

    def queue(self, name: str, ordered: bool = False) -> SubscriptionQueue:
        """The delivery queue of `name`, routed to or not (replies to a sink, dead letters)."""
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = SubscriptionQueue(self, name, ordered)
        queue.ordered = ordered
        return queue

    def direct(self, name: str) -> Publisher:
        """A publisher that stores events for subscription `name` only, bypassing routing."""
        return DirectPublisher(self, name)

    async def enqueue(self, events: Sequence[Event], subscription: str) -> None:
        routed = [(event, [subscription]) for event in events]
        await self.log.append(routed)
        self.backlog.added(routed)
        self._tell(routed)

    async def forget_seen(self) -> int:
        """Forget bridged events older than the dedup window (run now and then)."""
        return await self.log.forget_seen(time.time() - self.dedup_window)

    async def unsubscribe(self, name: str, drop_pending: bool = True) -> None:
        self.router.remove(name)
        self._queues.pop(name, None)
        if drop_pending:
            await self.log.drop_subscription(name)
            self.backlog.dropped(name)

    async def resync_backlog(self) -> None:
        """Set the backlog counts from the event log (at start, and now and then: another node
        of a cluster may have finished deliveries this one counted)."""
        for name in list(self._queues):
            self.backlog.set(name, await self.log.pending(name))

    async def replay(self, ids: Sequence[int]) -> tuple[list[DeadLetter], list[int]]:
        """Deliver dead letters again, to the subscription each failed in (attempts reset),
        in one store operation: a failure leaves every letter where it was.

        A letter whose subscription is gone is routed anew. Returns the letters replayed,
        and the ids of those that nothing would take now (they stay dead letters)."""
        targets: dict[int, list[str]] = {}  # filled idempotently: a store may run this more than once

        def requeue(letter: DeadLetter) -> tuple[Event, list[str]]:
            event = without_error_context(letter.event)
            targets[letter.id] = self._home_of(letter, event)
            return event, targets[letter.id]

        letters = await self.log.replay_dead_letters(ids, requeue)
        self.backlog.added((None, targets.get(letter.id, ())) for letter in letters)
        for letter in letters:
            for subscription in targets.get(letter.id, ()):
                self._tell_step(letter.event, Steps.REPLAYED, f"dead letter {letter.id} replayed", subscription)
        return letters, sorted(i for i, subs in targets.items() if not subs)

    def _home_of(self, letter: DeadLetter, event: Event) -> list[str]:
        if event.type == UNDECODABLE_TYPE:
            return []  # what is left of an unreadable row: for reading, not for a function
        if letter.subscription in self._queues:
            return [letter.subscription]
        return self.router.match(event.attributes)

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        """Hand a delivery to another subscription; False when there is no such subscription."""
        queue = self._queues.get(subscription)
        if queue is None:
            return False
        await self.log.redirect(delivery.id, subscription, event)
        self.backlog.finished(delivery.subscription)
        self.backlog.added([(event, [subscription])])
        return True
