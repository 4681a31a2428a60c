"""The trail as it happens, for whoever is watching (`fmesh events tail`, the dashboard)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fmesh.broker.trail.store import Arrival, Step

from fmesh.events import Event

LISTENER_BACKLOG = 10_000   # records a slow watcher may fall behind before it misses some
MAX_LISTENERS = 64


@dataclass(frozen=True, slots=True)
class Record:
    kind: str                   # "accepted" or "step"
    what: Arrival | Step
    event: Event                # for the watcher's filter


@dataclass(eq=False)
class Listener:
    queue: asyncio.Queue[Record] = field(default_factory=lambda: asyncio.Queue(LISTENER_BACKLOG))
    missed: int = 0             # records dropped because the watcher fell behind
    ended: asyncio.Event = field(default_factory=asyncio.Event)   # the mesh is stopping

    async def next(self, timeout: float) -> Record | None:
        """The next record; None after `timeout` seconds without one. Raises `Ended` once the
        feed has ended."""
        if self.ended.is_set():
            raise Ended
        getting = asyncio.ensure_future(self.queue.get())
        ending = asyncio.ensure_future(self.ended.wait())
        try:
            done, _ = await asyncio.wait((getting, ending), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the watcher goes away mid-wait: no task of ours is left pending
            ending.cancel()
            if not getting.done():
                getting.cancel()
        if getting in done:
            return getting.result()
        if ending in done:
            raise Ended
        return None


class Ended(Exception):
    """The live feed is over (the mesh is stopping)."""


class TooManyWatchers(Exception):
    pass


class LiveFeed:
    def __init__(self) -> None:
        self._listeners: set[Listener] = set()

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    def publish(self, kind: str, what: Arrival | Step, event: Event) -> None:
        record = Record(kind, what, event)
        for listener in self._listeners:
            try:
                listener.queue.put_nowait(record)
            except asyncio.QueueFull:
                listener.missed += 1

    def end_listeners(self) -> None:
        for listener in self._listeners:
            listener.ended.set()

    def listen(self) -> Listener:
        """A new watcher; `forget` it when it goes."""
        if len(self._listeners) >= MAX_LISTENERS:
            raise TooManyWatchers(f"{MAX_LISTENERS} watchers already: try again when one has gone")
        listener = Listener()
        self._listeners.add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        self._listeners.discard(listener)
