"""The trail's `Observer`: notes on the hot path, batched writes off it, a live feed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fmesh.broker.trail.live import LiveFeed
from fmesh.broker.trail.store import Accepted, Noted, TrailStore, arrival_of, step_of
from fmesh.broker.trail.view import Trace, recent_view

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.events import Event

FLUSH_EVERY = 0.1         # seconds between batched writes (what waits for one is held in memory)
PRUNE_EVERY = 30.0        # seconds between applications of the retention
MAX_PENDING = 50_000      # notes held while the store cannot keep up (or is failing); older ones go
COMPLAINT_EVERY = 60.0    # seconds between two complaints about a failing store
log = meshlog.get("fmesh.broker")


class TrailRecorder:
    """Where each event went, kept for `retention` seconds and at most `max_events` events."""

    def __init__(self, store: TrailStore, retention: float, max_events: int) -> None:
        self.store = store
        self.retention = retention
        self.max_events = max_events
        self.live = LiveFeed()
        self.dropped = 0          # records lost to a store that could not keep up
        self._accepted: list[Accepted] = []
        self._steps: list[Noted] = []
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fmesh-trail")
        self._complained = 0.0

    # -- Observer: a note each, the records are made when they are written --------------

    def accepted(self, routed: Sequence[tuple[Event, Sequence[str]]]) -> None:
        now = time.time()
        self._accepted.append((now, [(event.attributes, subscriptions) for event, subscriptions in routed]))
        if self.live.listening:
            for event, subscriptions in routed:
                self.live.publish("accepted", arrival_of(now, event.attributes, subscriptions), event)

    def step(self, event: Event, subscription: str, kind: str, attempt: int = 0, status: int | None = None,
             duration: float | None = None, error: str | None = None, due: float | None = None,
             detail: str | None = None) -> None:
        noted = (time.time(), event.attributes, subscription, kind, attempt, status, duration, error, due, detail)
        self._steps.append(noted)
        if self.live.listening:
            self.live.publish("step", step_of(noted), event)

    # -- reading -------------------------------------------------------------------------

    async def trace(self, event_id: str) -> list[dict[str, Any]]:
        """The path of every event with this id (`fmesh trace`), up to date."""
        await self.flush()
        return await self._in_thread(Trace(self.store).of, event_id)

    async def recent(self, limit: int, unrouted: bool = False) -> list[dict[str, Any]]:
        """The latest events accepted (that matched nothing, if `unrouted`), newest first."""
        await self.flush()
        return await self._in_thread(recent_view, self.store, limit, unrouted)

    # -- writing -------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what was noted, a batch every `FLUSH_EVERY`, and apply the retention, until cancelled."""
        pruned = 0.0
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()
            if time.monotonic() - pruned >= PRUNE_EVERY:
                pruned = time.monotonic()
                await self._guarded(self.store.prune, time.time() - self.retention, self.max_events)

    async def flush(self) -> None:
        self._bound()
        if not (self._accepted or self._steps):
            return
        accepted, steps = self._accepted, self._steps
        self._accepted, self._steps = [], []
        if not await self._guarded(self.store.write, accepted, steps):
            self.dropped += sum(len(routed) for _, routed in accepted) + len(steps)

    async def close(self) -> None:
        await self.flush()
        await self._in_thread(self.store.close)
        self._thread.shutdown(wait=True)

    def _bound(self) -> None:
        """Notes wait for at most one write; past `MAX_PENDING` (a store that cannot keep up),
        the oldest go."""
        while sum(len(routed) for _, routed in self._accepted) > MAX_PENDING:
            self.dropped += len(self._accepted.pop(0)[1])
        if len(self._steps) > MAX_PENDING:
            self.dropped += len(self._steps) - MAX_PENDING
            del self._steps[:len(self._steps) - MAX_PENDING]

    async def _guarded(self, operation: Any, *args: Any) -> bool:
        """Run a store operation; a failure is reported (now and then), never raised: the
        trail is worth less than the events it describes."""
        try:
            await self._in_thread(operation, *args)
            return True
        except Exception as exc:  # noqa: BLE001 - disk full, a locked file: the mesh goes on without a trail
            if time.monotonic() - self._complained >= COMPLAINT_EVERY:
                self._complained = time.monotonic()
                log.warning("the event trail could not be written (it resumes when it can)", error=describe(exc))
            return False

    async def _in_thread(self, operation: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, operation, *args)
