"""The sidecar of one subscription: takes its deliveries and applies the delivery policy.

It never has more than `max_inflight` events in flight: the rest wait in the event log,
not in memory. A failed attempt is released back to the log with a due time (so a
retrying event never holds a slot while it waits, and its schedule survives a
restart); after the last retry it becomes a dead letter. Replies are published back
to the broker with a hop count, so a loop of replies ends in the dead letters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from fmesh.runtime.policy import DeliveryPolicy
from fmesh.runtime.replica import ReplyData, Result

from fmesh.contracts import Claimed, DeadLetter, Delivery, DeliveryQueue, Publisher
from fmesh.errors import FmeshError, HandlerError, InvalidEvent, StoreError
from fmesh.events import Event, check_required, format_time, with_extension

HOPS = "fmeshhops"
ERROR_DATA_BYTES = 1024


class Target(Protocol):
    """Where a sidecar delivers: a runner pool, or (later) a URL or sink."""

    async def invoke(self, event: Event, timeout: float) -> Result: ...


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0            # failed attempts, retried or not
    retried: int = 0
    dead_lettered: int = 0
    replies: int = 0
    inflight: int = 0
    last_error: str | None = None


class Sidecar:
    def __init__(self, name: str, source: str, queue: DeliveryQueue, target: Target,
                 publisher: Publisher, policy: DeliveryPolicy, max_inflight: int) -> None:
        self.name = name              # the subscription, e.g. "function:hello"
        self.source = source          # the `source` of reply events
        self.queue = queue
        self.target = target
        self.publisher = publisher
        self.policy = policy
        self.max_inflight = max_inflight
        self.stats = DeliveryStats()
        self._inflight: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._acks = AckBatcher(queue)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"sidecar {self.name}")

    async def stop(self, grace: float = 10.0) -> None:
        """Take no more deliveries; give those in flight `grace` seconds. Unfinished ones are
        released back to the log, so another sidecar (or a restart) delivers them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _claim(self, capacity: int) -> Claimed:
        """Claim deliveries; if cancelled meanwhile, hand back what the claim took."""
        claiming = asyncio.ensure_future(self.queue.claim(capacity))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claimed = await claiming
            await self.queue.release([d.id for d in claimed.deliveries])
            raise

    async def _run(self) -> None:
        while True:
            capacity = self.max_inflight - len(self._inflight)
            timeout: float | None = None
            if capacity > 0:
                try:
                    claimed = await self._claim(capacity)
                except StoreError as exc:
                    self.stats.last_error = str(exc)
                    await asyncio.sleep(1.0)
                    continue
                for delivery in claimed.deliveries:
                    self._begin(delivery)
                if len(claimed.deliveries) == capacity:
                    continue  # full batch: there may be more due right now
                if claimed.next_due_at is not None:
                    timeout = max(0.0, claimed.next_due_at - time.time())
            await self.queue.wait(timeout)

    def _begin(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._inflight.add(task)
        self.stats.inflight = len(self._inflight)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self.stats.inflight = len(self._inflight)
        self.queue.wake()  # a slot is free

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            result = await self.target.invoke(delivery.event, self.policy.timeout)
            await self._publish_reply(delivery, result)
        except asyncio.CancelledError:
            await asyncio.shield(self.queue.release([delivery.id]))  # not done: someone else may
            raise
        except HandlerError as exc:
            await self._failed(delivery, exc)
            return
        except StoreError as exc:  # the reply could not be stored: try the event again
            await self._failed(delivery, HandlerError(f"reply not stored: {exc}"))
            return
        await self._acks.ack(delivery.id)
        self.stats.delivered += 1

    async def _publish_reply(self, delivery: Delivery, result: Result) -> None:
        if result is None:
            return
        try:
            reply = self._reply_event(delivery.event, result)
        except InvalidEvent as exc:
            raise HandlerError(f"the handler returned an invalid event: {exc}", retryable=False) from exc
        if reply[HOPS] > self.policy.max_hops:
            letter = DeadLetter(0, self.name, reply, 0, f"reply hop limit {self.policy.max_hops} reached: "
                                f"a loop of replies?", None, None, time.time())
            # The reply was never stored, so there is no delivery to remove: id -1 names none.
            await self.queue.dead_letter(Delivery(-1, self.name, reply), letter)
            self.stats.dead_lettered += 1
            return
        await self.publisher.publish([reply])
        self.stats.replies += 1

    def _reply_event(self, incoming: Event, result: Event | ReplyData) -> Event:
        hops = _hops(incoming) + 1
        if isinstance(result, Event):
            check_required(result.attributes)
            return with_extension(result, **{HOPS: hops})
        attributes = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": self.source,
                      "type": f"{incoming.type}.reply", "time": format_time_now(),
                      "datacontenttype": result.content_type, HOPS: hops}
        return Event(attributes, result.payload)

    async def _failed(self, delivery: Delivery, error: HandlerError) -> None:
        self.stats.failed += 1
        self.stats.last_error = str(error)
        attempt = delivery.attempts + 1
        if error.retryable and attempt <= self.policy.retries:
            delay = self.policy.backoff_for(attempt)
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, self.policy.retry_after_cap))
            await self.queue.retry(delivery, time.time() + delay, str(error))
            self.stats.retried += 1
            return
        await self._dead_letter(delivery, error, attempt)

    async def _dead_letter(self, delivery: Delivery, error: HandlerError, attempts: int) -> None:
        event = with_error_context(delivery.event, self.name, error, attempts)
        self.stats.dead_lettered += 1
        target = self.policy.dead_letter
        if target and await self.queue.redirect(delivery, target, event):
            return
        reason = "not retryable" if not error.retryable else f"gave up after {attempts} attempts"
        await self.queue.dead_letter(delivery, DeadLetter(
            0, self.name, event, attempts, reason, error.status, str(error)[:ERROR_DATA_BYTES], time.time()))


class AckBatcher:
    """Acks of one loop turn go to the event log as one operation: under load the writer
    gets one DELETE batch instead of one operation per event. Each caller still waits
    until its ack is stored."""

    def __init__(self, queue: DeliveryQueue) -> None:
        self.queue = queue
        self._ids: list[int] = []
        self._stored: asyncio.Future[None] | None = None

    async def ack(self, delivery_id: int) -> None:
        if self._stored is None:
            self._stored = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)
        self._ids.append(delivery_id)
        await asyncio.shield(self._stored)

    def _flush(self) -> None:
        ids, stored = self._ids, self._stored
        self._ids, self._stored = [], None
        task = asyncio.get_running_loop().create_task(self.queue.ack(ids))
        task.add_done_callback(lambda done: _copy_outcome(done, stored))


def _copy_outcome(done: asyncio.Task, future: asyncio.Future | None) -> None:
    if future is None or future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result(None)


def with_error_context(event: Event, where: str, error: FmeshError, attempts: int) -> Event:
    """The event with extensions saying where and how it failed (as Knative's knativeerror*)."""
    # Names as in fmesh.events.ERROR_EXTENSIONS, which replay strips again.
    extensions = {"fmesherrordest": where, "fmesherrordata": str(error)[:ERROR_DATA_BYTES],
                  "fmeshattempts": attempts}
    status = getattr(error, "status", None)
    if status is not None:
        extensions["fmesherrorcode"] = status
    return with_extension(event, **extensions)


def _hops(event: Event) -> int:
    try:
        return int(event.get(HOPS, 0))
    except (TypeError, ValueError):
        return 0


def format_time_now() -> str:
    return format_time(datetime.now(UTC))
