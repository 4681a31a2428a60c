"""The broker: routes published events to subscriptions and hands out their deliveries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from fmesh.broker.filters import Filter
from fmesh.broker.log import EventLog
from fmesh.broker.router import Router

from fmesh.contracts import Claimed, DeadLetter, Delivery, Publisher
from fmesh.events import Event, without_error_context


class SubscriptionQueue:
    """`DeliveryQueue` of one subscription over the broker's event log."""

    def __init__(self, broker: Broker, name: str, ordered: bool = False) -> None:
        self.name = name
        self.ordered = ordered
        self._broker = broker
        self._log = broker.log
        self._new = asyncio.Event()

    def wake(self) -> None:
        self._new.set()

    async def claim(self, limit: int) -> Claimed:
        self._new.clear()
        return await self._log.claim(self.name, limit, time.time(), self.ordered)

    async def ack(self, delivery_ids: Sequence[int]) -> None:
        await self._log.ack(delivery_ids)

    async def release(self, delivery_ids: Sequence[int]) -> None:
        await self._log.release(delivery_ids)
        self.wake()

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> None:
        await self._log.retry(delivery, due_at, error)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        await self._log.dead_letter(delivery, letter)

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        return await self._broker.redirect(delivery, subscription, event)

    async def wait(self, timeout: float | None) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races the wake-up, and a sidecar being stopped must stop.
        try:
            async with asyncio.timeout(timeout):
                await self._new.wait()
        except TimeoutError:
            pass
        self._new.clear()  # a wake-up is consumed by the wait it ends


class DirectPublisher:
    """`Publisher` into one subscription's queue (e.g. a function's `reply_to` sink)."""

    def __init__(self, broker: Broker, subscription: str) -> None:
        self._broker = broker
        self.subscription = subscription

    async def publish(self, events: Sequence[Event]) -> None:
        await self._broker.enqueue(events, self.subscription)


class Broker:
    """`Publisher` plus the subscription registry, over one event log."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.router = Router()
        self._queues: dict[str, SubscriptionQueue] = {}

    async def publish(self, events: Sequence[Event]) -> None:
        routed = [(event, self.router.match(event.attributes)) for event in events]
        await self.log.append([(e, subs) for e, subs in routed if subs])
        for _, subs in routed:
            for sub in subs:
                self._queues[sub].wake()

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
        queue.wake()  # deliveries stored before a restart are due at once
        return queue

    def direct(self, name: str) -> Publisher:
        """A publisher that stores events for subscription `name` only, bypassing routing."""
        return DirectPublisher(self, name)

    async def enqueue(self, events: Sequence[Event], subscription: str) -> None:
        await self.log.append([(event, [subscription]) for event in events])
        queue = self._queues.get(subscription)
        if queue is not None:
            queue.wake()

    async def unsubscribe(self, name: str, drop_pending: bool = True) -> None:
        self.router.remove(name)
        self._queues.pop(name, None)
        if drop_pending:
            await self.log.drop_subscription(name)

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
        for letter in letters:
            for sub in targets[letter.id]:
                self._queues[sub].wake()
        return letters, sorted(i for i, subs in targets.items() if not subs)

    def _home_of(self, letter: DeadLetter, event: Event) -> list[str]:
        if letter.subscription in self._queues:
            return [letter.subscription]
        return self.router.match(event.attributes)

    async def redirect(self, delivery: Delivery, subscription: str, event: Event) -> bool:
        """Hand a delivery to another subscription; False when there is no such subscription."""
        queue = self._queues.get(subscription)
        if queue is None:
            return False
        await self.log.redirect(delivery.id, subscription, event)
        queue.wake()
        return True
