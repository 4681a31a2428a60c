"""The sidecar of one subscription: takes its deliveries and applies the delivery policy.

It never has more than `max_inflight` events at its target at once. A few more (as many
again, at most MAX_CLAIMED_AHEAD) are claimed ahead and wait in memory for a slot, so that
a slot that frees is filled at once: under a backlog every claim is a round trip through
the store and several loop turns shared with the ingress, and slots that waited for it
stood idle (at 7,000 events/s offered, delivery fell to 1,400-5,700/s in five of eight
runs, and stayed there while the load lasted). An event's ack, retry or dead-lettering
is stored after its slot is given back: it waits for the store, not the target. The
rest wait in the event log, not in memory. A failed attempt is released back to the log
with a due time (so a retrying event never holds a slot while it waits, and its schedule
survives a restart); after the last retry it becomes a dead letter. Replies are
published back to the broker with a hop count, so a loop of replies ends in the dead
letters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from fmesh.runtime.policy import DeliveryPolicy
from fmesh.runtime.replica import NotSent, ReplyData, Result

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.contracts import DeadLetter, Delivery, DeliveryId, DeliveryQueue, Observer, Publisher, Steps
from fmesh.errors import FmeshError, HandlerError, InvalidEvent, StoreError
from fmesh.events import (
    HOPS,
    SENDER,
    Event,
    check_extensions,
    check_no_control,
    check_required,
    checked_internal,
    format_time,
    with_extension,
    without_control,
)
from fmesh.tracecontext import check_trace_attributes
from fmesh.tracing import CONSUMER, HOP, NOOP, Span, Tracer, start_delivery, start_reply, traced_reply
from fmesh.wording import plural

ERROR_DATA_BYTES = 1024
STORE_RETRY_FIRST = 0.05     # seconds before a failed store operation is tried again, doubling
STORE_RETRY_MAX = 5.0
CLAIM_WAIT = 5.0             # seconds a claim waits for work before it asks again
MAX_CLAIMED_AHEAD = 128      # deliveries claimed ahead of a free slot at the target, at most
EXTEND_EVERY = 10.0          # seconds between reminders that in-flight deliveries are being worked on
TROUBLE_LOG_EVERY = 5.0      # seconds between two log lines about the same recurring trouble
LOG_ERROR_CHARS = 300        # of an error, in a log line
T = TypeVar("T")

log = meshlog.get("fmesh.runtime")


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
                 publisher: Publisher, policy: DeliveryPolicy, max_inflight: int,
                 observers: Sequence[Observer] = (), tracer: Tracer = NOOP, span_kind: str = CONSUMER) -> None:
        self.name = name              # the subscription, e.g. "function:hello"
        self.tracer = tracer
        self.span_kind = span_kind    # of its attempts' spans: CONSUMER for a function, CLIENT for a sink
        self.source = source          # the `source` of reply events
        self.queue = queue
        self.target = target
        self.publisher = publisher
        self.policy = policy
        self.max_inflight = max_inflight  # at the target at once
        self.claimed_at_most = max_inflight + min(max_inflight, MAX_CLAIMED_AHEAD)
        self.observers = observers    # told what each attempt came to (the trail, metrics)
        self.stats = DeliveryStats()
        self._inflight: set[asyncio.Task] = set()  # a task per claimed delivery not yet settled
        self._working: set[DeliveryId] = set()   # ids of the claimed deliveries in flight
        self._at_target = asyncio.Semaphore(max_inflight)
        self._queued: set[asyncio.Task] = set()  # claimed ahead: waiting for a slot at the target
        self._releasing: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._extender: asyncio.Task | None = None
        self._slot_free = asyncio.Event()
        self._acks = AckBatcher(queue)
        self._where = subscription_fields(name)
        self._claims_trouble = meshlog.Throttle(TROUBLE_LOG_EVERY)
        self._attempts_trouble = meshlog.Throttle(TROUBLE_LOG_EVERY)
        self._store_trouble = meshlog.Throttle(TROUBLE_LOG_EVERY)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._run(), name=f"sidecar {self.name}")
        self._extender = loop.create_task(self._extend_claims(), name=f"sidecar {self.name} claims")

    async def stop(self, grace: float = 10.0) -> None:
        """Take no more deliveries; give those in flight `grace` seconds. Unfinished ones are
        released back to the log, so another sidecar (or a restart) delivers them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in self._queued:  # not started: straight back to the log
            task.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._extender is not None:
            self._extender.cancel()
            await asyncio.gather(self._extender, return_exceptions=True)

    async def _run(self) -> None:
        """Claim and start deliveries for as long as the sidecar runs. Nothing ends this loop
        but `stop`: a failing claim (a store fault, a bug) is reported and tried again."""
        failures = 0
        while True:
            try:
                await self._turn()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a sidecar never dies (see the module docstring)
                failures += 1
                self.stats.last_error = f"claiming deliveries failed: {describe(exc)}"
                if self._claims_trouble.due():
                    log.warning("claiming deliveries failed; trying again", **self._where, error=describe(exc),
                                skipped=self._claims_trouble.take_skipped())
                await asyncio.sleep(min(STORE_RETRY_MAX, STORE_RETRY_FIRST * 2 ** failures))

    async def _turn(self) -> None:
        capacity = self.claimed_at_most - len(self._inflight)
        if capacity <= 0:
            self._slot_free.clear()
            await self._slot_free.wait()  # the rest wait in the log, not in memory
            return
        for delivery in await self.queue.claim(capacity, CLAIM_WAIT):
            self._begin(delivery)

    async def _extend_claims(self) -> None:
        """Tell the store now and then that the deliveries in flight are still being worked on,
        well before their claims would lapse."""
        ttl = self.queue.claim_ttl
        every = EXTEND_EVERY if ttl is None else min(EXTEND_EVERY, ttl / 3)
        while True:
            await asyncio.sleep(every)
            ids = list(self._working)
            if ids:
                try:
                    await self.queue.extend(ids)
                except Exception as exc:  # noqa: BLE001 - the claims may lapse: they are then delivered again
                    self.stats.last_error = f"could not extend claims: {describe(exc)}"
                    log.warning("could not extend claims: they may lapse, and their events be delivered again",
                                **self._where, deliveries=len(ids), error=describe(exc))

    def _begin(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._inflight.add(task)
        self._working.add(delivery.id)
        task.add_done_callback(lambda done: self._done(done, delivery))

    def _done(self, task: asyncio.Task, delivery: Delivery) -> None:
        self._inflight.discard(task)
        self._working.discard(delivery.id)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a verdict on the event: give it back, so it is delivered again.
            self.stats.last_error = f"delivery {delivery.id} failed: {describe(task.exception())}"
            log.error("a delivery failed because of a bug in the mesh; it is delivered again",
                      exc_info=task.exception(), **self._about(delivery.event), error=describe(task.exception()))
            self._spawn_release(delivery)
        self._slot_free.set()

    def _spawn_release(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._release(delivery))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, delivery: Delivery) -> None:
        try:
            await self.queue.release([delivery.id])
        except StoreError as exc:  # the claim then lasts until the store restarts
            self.stats.last_error = f"could not release delivery {delivery.id}: {exc}"
            log.warning("could not release a delivery: it waits until its claim lapses",
                        **self._about(delivery.event), error=str(exc))

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            if delivery.undecodable is not None:
                await self._settle_failure(delivery, HandlerError(delivery.undecodable, retryable=False))
                return
            error, took = await self._at_target_once(delivery)
            if isinstance(error, NotSent):
                await self._until_stored(lambda: self._acks.ack(delivery.id), "ack", delivery)
                self._tell(delivery.event, Steps.NOT_SENT, delivery.attempts + 1, duration=took, detail=error.reason)
            elif error is None:
                await self._until_stored(lambda: self._acks.ack(delivery.id), "ack", delivery)
                self.stats.delivered += 1
                self._tell(delivery.event, Steps.DELIVERED, delivery.attempts + 1, duration=took)
            else:
                await self._settle_failure(delivery, error, took)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(delivery))  # not done: someone else may
            raise

    async def _at_target_once(self, delivery: Delivery) -> tuple[HandlerError | NotSent | None, float | None]:
        """One attempt, in a slot at the target (waited for, if claimed ahead), and how long it
        took; an event whose time to live ran out meanwhile gets no attempt."""
        await self._slot_at_target()
        try:
            if self.policy.expired(delivery.stored_at, time.time()):
                return Expired(self.policy, delivery, delivery.last_error), None
            started = time.monotonic()
            error = await self._attempt(delivery)
            return error, time.monotonic() - started
        finally:
            self._at_target.release()
            self.stats.inflight -= 1

    async def _slot_at_target(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._queued.add(task)
        try:
            await self._at_target.acquire()
        finally:
            self._queued.discard(task)
        self.stats.inflight += 1

    async def _attempt(self, delivery: Delivery) -> HandlerError | NotSent | None:
        """One attempt at the event, in a span of its own (the current hop, for the target's
        requests); None when it succeeded (and its reply is stored), NotSent when the target
        was done with it without delivering it."""
        span = start_delivery(self.tracer, self.span_kind, self.name, delivery.event, delivery.attempts + 1)
        hop = HOP.set(span)
        try:
            error = await self._try(delivery, span)
        except BaseException:
            span.end("cancelled")
            raise
        finally:
            HOP.reset(hop)
        failed = isinstance(error, HandlerError)
        span.end(str(error) if failed else None,
                 {"fmesh.status": error.status} if failed and error.status is not None else None)
        return error

    async def _try(self, delivery: Delivery, span: Span) -> HandlerError | NotSent | None:
        try:
            result = await self.target.invoke(delivery.event, self.policy.timeout)
            if isinstance(result, NotSent):
                return result
            await self._publish_reply(delivery, result, span)
        except HandlerError as exc:
            return exc
        except StoreError as exc:  # the reply could not be stored: try the event again
            return HandlerError(f"reply not stored: {exc}")
        except Exception as exc:  # noqa: BLE001 - the event itself breaks the mesh's own code
            log.error("the mesh cannot deliver this event (a bug): it goes to the dead letters", exc_info=exc,
                      **self._about(delivery.event), error=describe(exc))
            return HandlerError(f"the mesh cannot deliver this event: {describe(exc)}", retryable=False)
        return None

    async def _until_stored(self, operation: Callable[[], Awaitable[T]], what: str, delivery: Delivery) -> T:
        """Run a store operation until it succeeds: an ack or retry that is lost would leave
        the delivery claimed for good. Until then the delivery keeps its slot."""
        delay = STORE_RETRY_FIRST
        while True:
            try:
                return await operation()
            except StoreError as exc:
                self.stats.last_error = f"{what} not stored yet, retrying in {delay:g}s: {exc}"
                if self._store_trouble.due():
                    log.warning(f"{what} not stored yet; trying again", **self._about(delivery.event),
                                error=str(exc), skipped=self._store_trouble.take_skipped())
                await asyncio.sleep(delay)
                delay = min(STORE_RETRY_MAX, delay * 2)

    async def _publish_reply(self, delivery: Delivery, result: Result, attempt: Span) -> None:
        if result is None:
            return
        try:
            reply = self._reply_event(delivery.event, result)
        except InvalidEvent as exc:
            raise HandlerError(f"the handler returned an invalid event: {exc}", retryable=False) from exc
        span = start_reply(self.tracer, self.name, attempt, delivery.event)
        try:
            await self._store_reply(delivery, traced_reply(reply, span, delivery.event))
        except BaseException as exc:
            span.end(describe(exc))
            raise
        span.end()

    async def _store_reply(self, delivery: Delivery, reply: Event) -> None:
        if reply[HOPS] > self.policy.max_hops:
            letter = DeadLetter(0, self.name, reply, 0, f"reply hop limit {self.policy.max_hops} reached: "
                                f"a loop of replies?", None, None, time.time())
            # The reply was never stored, so there is no delivery to remove: id -1 names none.
            await self.queue.dead_letter(Delivery(-1, self.name, reply), letter)
            self.stats.dead_lettered += 1
            self._tell(reply, Steps.DEAD_LETTERED, 0, error=letter.reason)
            # Linked from its parent like a stored reply (`fmesh trace` shows it there); the
            # error says it was not stored.
            self._tell(delivery.event, Steps.REPLY, delivery.attempts + 1, error=letter.reason, detail=reply.id)
            log.warning("event dead-lettered", **self._about(reply), in_reply_to=delivery.event.id,
                        attempts=0, reason=letter.reason)
            return
        await self.publisher.publish([reply])
        self.stats.replies += 1
        self._tell(delivery.event, Steps.REPLY, delivery.attempts + 1, detail=reply.id)

    def reply_event(self, incoming: Event, result: Event | ReplyData) -> Event:
        """What the target returned for `incoming`, as the reply event the mesh would publish
        (InvalidEvent when a returned event is not valid)."""
        return self._reply_event(incoming, result)

    def _reply_event(self, incoming: Event, result: Event | ReplyData) -> Event:
        hops = _hops(incoming) + 1
        if isinstance(result, Event):
            check_required(result.attributes)
            check_extensions(result.attributes)
            check_no_control(result.attributes)
            checked_internal(result.attributes)
            check_trace_attributes(result.attributes)
            return with_extension(result, **{HOPS: hops, SENDER: self.name})
        attributes = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": self.source,
                      "type": f"{incoming.type}.reply", "time": format_time_now(),
                      "datacontenttype": result.content_type, HOPS: hops, SENDER: self.name}
        return Event(attributes, result.payload)

    async def _settle_failure(self, delivery: Delivery, error: HandlerError, took: float | None = None) -> None:
        """Schedule the next attempt, or dead-letter the event after the last."""
        self.stats.failed += 1
        self.stats.last_error = str(error)
        attempt = delivery.attempts + 1
        if error.retryable and attempt <= self.policy.retries:
            delay = self._retry_delay(attempt, error)
            due = time.time() + delay
            if not self.policy.expired(delivery.stored_at, due):
                await self._until_stored(lambda: self.queue.retry(delivery, delay, str(error)), "retry", delivery)
                self.stats.retried += 1
                self._tell(delivery.event, Steps.RETRYING, attempt, error.status, took, str(error), due)
                if self._attempts_trouble.due():
                    log.warning("delivery attempt failed; retrying", **self._about(delivery.event), attempt=attempt,
                                retry_in=round(delay, 3), error=_short(error),
                                skipped=self._attempts_trouble.take_skipped())
                return
            error = Expired(self.policy, delivery, str(error), at=due)
        redirected = await self._until_stored(lambda: self._dead_letter(delivery, error, attempt), "dead letter",
                                              delivery)
        self.stats.dead_lettered += 1
        kind = Steps.REDIRECTED if redirected else Steps.DEAD_LETTERED
        self._tell(delivery.event, kind, attempt, error.status, took, str(error),
                   detail=self.policy.dead_letter if redirected else None)

    def _tell(self, event: Event, kind: str, attempt: int, status: int | None = None, duration: float | None = None,
              error: str | None = None, due: float | None = None, detail: str | None = None) -> None:
        for observer in self.observers:
            observer.step(event, self.name, kind, attempt, status, duration, error, due, detail)

    def _retry_delay(self, attempt: int, error: HandlerError) -> float:
        delay = self.policy.backoff_for(attempt)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.policy.retry_after_cap))
        return delay

    async def _dead_letter(self, delivery: Delivery, error: HandlerError, attempts: int) -> bool:
        """True when it went to the policy's dead-letter subscription, False to the dead letters."""
        event = with_error_context(delivery.event, self.name, error, attempts)
        target = self.policy.dead_letter
        reason = "not retryable" if not error.retryable else f"gave up after {plural(attempts, 'attempt')}"
        if delivery.undecodable is not None:
            reason = "undecodable"
        elif isinstance(error, Expired):
            reason = "ttl expired"
        if target and await self.queue.redirect(delivery, target, event):
            self._dead_lettered(delivery.event, attempts, reason, error, to=target)
            return True
        await self.queue.dead_letter(delivery, DeadLetter(
            0, self.name, event, attempts, reason, error.status, str(error)[:ERROR_DATA_BYTES], time.time()))
        self._dead_lettered(delivery.event, attempts, reason, error)
        return False

    def _dead_lettered(self, event: Event, attempts: int, reason: str, error: HandlerError,
                       to: str | None = None) -> None:
        """The line users grep for: which event, where, after how many attempts, and why."""
        log.warning("event dead-lettered", **self._about(event), attempts=attempts, reason=reason,
                    status=error.status, error=_short(error), dead_letter=to)

    def _about(self, event: Event) -> dict[str, object]:
        """The fields of a log line about one of this sidecar's events."""
        return {"event_id": event.id, "event_source": event.source, "event_type": event.type, **self._where}


class Expired(HandlerError):
    """The event waited longer than its delivery policy's ttl: it goes to the dead letters."""

    def __init__(self, policy: DeliveryPolicy, delivery: Delivery, last_error: str | None,
                 at: float | None = None) -> None:
        waited = (at or time.time()) - delivery.stored_at
        super().__init__(f"not delivered within its ttl of {policy.ttl:g}s (it would have waited {waited:.0f}s)"
                         + (f"; last error: {last_error}" if last_error else ""), retryable=False)


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
    extensions = {"fmesherrordest": where, "fmesherrordata": without_control(str(error)[:ERROR_DATA_BYTES]),
                  "fmeshattempts": attempts}
    status = getattr(error, "status", None)
    if status is not None:
        extensions["fmesherrorcode"] = status
    return with_extension(event, **extensions)


def subscription_fields(subscription: str) -> dict[str, str]:
    """`function:resize` → subscription and function; `bridge:eu` → subscription and bridge."""
    kind, _, name = subscription.partition(":")
    fields = {"subscription": subscription}
    if kind in ("function", "bridge"):
        fields[kind] = name
    return fields


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= LOG_ERROR_CHARS else text[:LOG_ERROR_CHARS] + "..."


def _hops(event: Event) -> int:
    """The ingress refuses a malformed count; this guards events stored before it did."""
    try:
        return max(0, int(event.get(HOPS, 0)))
    except (TypeError, ValueError):
        return 0


def format_time_now() -> str:
    return format_time(datetime.now(UTC))
