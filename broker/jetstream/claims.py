"""Claiming a subscription's deliveries: pull requests to its durable consumers.

nats-py's `fetch` does not fit a claim: with a batch of more than one it keeps waiting
for the rest of the batch after the first message arrives, so a claim would not return
at once. A claim here sends its own pull requests (`$JS.API.CONSUMER.MSG.NEXT`), each
on its own inbox, and the server ends each one: with the batch full, with a status
(404 no messages, 408 expired, 409 ...), or at its expiry. First a `no_wait` request
takes what is there now; with nothing there, a lingering request for one message
waits on the server (no polling) until something arrives, falls due or the wait runs out.
(The `no_wait` request also has a short expiry, `NOW`: a consumer learns of a message
just stored a moment after the publish is acknowledged, and without one a claim made
right after an append would now and then find nothing.)

A lingering request can deliver after the claim that sent it has returned (it was
cancelled, or another consumer of the subscription answered first). What arrives
while nobody claims is nak'ed at once, so it goes to whoever asks next; each consumer
has at most one lingering request from this process, which the next claim adopts.

Ordered subscriptions (see `names.py`) also have consumers that hold one message at a
time (`max_ack_pending=1`: a key bucket). Such a consumer answers a request only when
its message is free, so nothing tells a busy bucket from a slow one: those get a
lingering request each, and a claim that has something waits for the other buckets'
heads until none has come for `SETTLE` seconds, `LOOK` seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from fmesh.broker.jetstream.engine import REQUEST_TIMEOUT, Engine
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

LOOK = 0.02          # seconds an ordered claim waits at most for the heads of other buckets
SETTLE = 0.005       # ... and no longer than this after the last one came
NOW = 0.01           # seconds a request for what is there now may wait for a consumer to see it
NAK = b"-NAK"
ENDED_CONSUMER = ("503", "409")  # no consumer to answer, or it was deleted meanwhile


class Pull:
    """One pull request, from when it is sent until the server (or our patience) ends it."""

    def __init__(self, engine: Engine, consumer: str, batch: int, expires: float,
                 deliver: Callable[[Msg], None], ended: Callable[[Pull], None], no_wait: bool = False) -> None:
        self.consumer = consumer
        self.batch = batch
        self.expires = expires
        self.no_wait = no_wait            # end once what is there now is delivered
        self.done = asyncio.Event()
        self.status: str | None = None    # how the server ended it, if it said
        self._engine = engine
        self._deliver = deliver
        self._ended = ended
        self._received = 0
        self._sub: Subscription | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self, stream: str) -> None:
        client = self._engine.client
        inbox = client.new_inbox()
        self._sub = await client.subscribe(inbox, cb=self._arrived)
        request = {"batch": self.batch, "expires": int(self.expires * 1e9), "no_wait": self.no_wait}
        await client.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.consumer}", orjson.dumps(request),
                             reply=inbox)
        patience = self.expires + REQUEST_TIMEOUT  # the server always answers well before this
        self._timer = asyncio.get_running_loop().call_later(patience, self._end, None)

    async def _arrived(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status == "100":
            return                                    # a heartbeat
        if status is not None:
            self._end(status)
            return
        self._received += 1
        self._deliver(msg)
        if self._received >= self.batch:
            self._end(None)

    def _end(self, status: str | None) -> None:
        if self.done.is_set():
            return
        self.status = status
        self.done.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._sub is not None:
            self._engine.spawn(self._sub.unsubscribe())
        self._ended(self)

    @property
    def ended_consumer(self) -> bool:
        """The server said there is no such consumer (any more)."""
        return self.status in ENDED_CONSUMER


@dataclass
class Claims:
    """The claims of one process on one subscription, over its consumers.

    `free` consumers let many messages be in flight (unordered, or the keyless part of
    an ordered subscription); `held` ones one message at a time (the key buckets)."""

    engine: Engine
    stream: str
    free: list[str]
    held: list[str] = field(default_factory=list)
    missing: bool = False                        # a consumer did not answer: make them again
    _waiters: int = 0
    _buffer: list[Msg] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _lingering: dict[str, Pull] = field(default_factory=dict)
    _last_arrival: float = 0.0

    async def claim(self, limit: int, wait: float) -> list[Msg]:
        """Up to `limit` messages, oldest first; with none there, wait up to `wait` seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + max(wait, LOOK if self.held else 0.0)
        self._waiters += 1
        try:
            await self._linger(self.held, deadline)      # the buckets answer while the rest is asked
            await self._now(limit)
            topped_up = False
            while True:
                self._arrived.clear()                    # from here on, an arrival or an ended request wakes us
                if self._enough(limit, start) or loop.time() >= deadline:
                    return self._take(limit)
                await self._linger(self.held, deadline)  # again for those whose request ended
                if not self._buffer:
                    await self._linger(self.free, deadline)
                await self._wait(self._patience(start, deadline))
                if self._buffer and not topped_up:
                    topped_up = True
                    await self._now(limit)               # the first came: take the others there now
        finally:
            self._waiters -= 1
            if self._waiters == 0:
                self.nak(self._buffer)                   # more than asked for, or a cancelled claim's
                self._buffer = []

    def _enough(self, limit: int, start: float) -> bool:
        if len(self._buffer) >= limit:
            return True
        return bool(self._buffer) and (not self.held or self._patience(start, float("inf")) == 0)

    def _patience(self, start: float, deadline: float) -> float:
        """How long to wait now: for anything until the deadline, or, with something in
        hand, for more heads until they stop coming."""
        now = asyncio.get_running_loop().time()
        if self._buffer:
            return max(0.0, min(deadline, start + LOOK, self._last_arrival + SETTLE) - now)
        return max(0.0, deadline - now)

    async def _now(self, limit: int) -> None:
        """What the free consumers have right now."""
        want = limit - len(self._buffer)
        if want <= 0:
            return
        pulls = [Pull(self.engine, consumer, want, NOW, self._deliver, self._ended, no_wait=True)
                 for consumer in self.free]
        for pull in pulls:
            await pull.start(self.stream)
        await asyncio.gather(*(pull.done.wait() for pull in pulls))

    async def _linger(self, consumers: list[str], deadline: float) -> None:
        """A lingering request for one message on each consumer that has none running."""
        left = deadline - asyncio.get_running_loop().time()
        if left < 0.001:
            return
        for consumer in consumers:
            pull = self._lingering.get(consumer)
            if pull is None or pull.done.is_set():
                pull = self._lingering[consumer] = Pull(self.engine, consumer, 1, left, self._deliver, self._ended)
                await pull.start(self.stream)

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._arrived.wait()

    def _deliver(self, msg: Msg) -> None:
        if self._waiters > 0:
            self._buffer.append(msg)
            self._last_arrival = asyncio.get_running_loop().time()
            self._arrived.set()
        else:
            self.nak([msg])                              # nobody claims now: whoever asks next has it

    def _ended(self, pull: Pull) -> None:
        if pull.ended_consumer:
            self.missing = True
        self._arrived.set()

    def _take(self, limit: int) -> list[Msg]:
        self._buffer.sort(key=lambda m: m.metadata.sequence.stream)
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return taken

    def nak(self, msgs: list[Msg]) -> None:
        """Give messages back at once, in the background (a cancelled claim cannot wait)."""
        for msg in msgs:
            self.engine.spawn(self.engine.confirm(msg.reply, NAK))
