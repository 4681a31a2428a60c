"""The timer trigger: one event per tick of a cron schedule or interval, once per tick.

Firing a tick is: publish its event, then store the tick time under
`trigger/<name>/last`. A restarted trigger never fires a tick at or before the stored
one. A crash between the two steps can publish a tick twice at most, and both copies
carry the same id (`<name>-<tick time in UTC>`), so they deduplicate by (source, id).

Ticks that passed while the mesh was down are skipped, unless `catch_up` is on: then
each is fired once, oldest first, at most `max_catch_up` of them (the latest ones).

On a store that many nodes share, every node runs the trigger but only the holder of its
lease (`triggers.lease`) fires; the others stand by, and one of them takes over within
the lease's ttl when the holder dies, resuming from the shared last tick by the same
rules. Before each tick the holder renews the lease, so a holder that lost it (paused
past its ttl) finds out before it fires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from fmesh.triggers.base import Publish, StatusTracker
from fmesh.triggers.clock import Clock, SystemClock
from fmesh.triggers.config import TimerTriggerConfig
from fmesh.triggers.lease import LEASE_TTL, Lease
from fmesh.triggers.retry import BackgroundTrigger, Backoff, publish_until_stored
from fmesh.triggers.schedule import due, schedule_for

from fmesh.contracts import StateStore
from fmesh.errors import Conflict, StoreError
from fmesh.events import Event, encode_data, format_time

RETRY_DELAY = 0.5
RETRY_MAX_DELAY = 30.0


def tick_time(t: float) -> str:
    return format_time(datetime.fromtimestamp(t, UTC))


def parse_tick(value: bytes) -> float:
    return datetime.fromisoformat(value.decode().replace("Z", "+00:00")).timestamp()


class TimerTrigger(BackgroundTrigger):
    """`Trigger` firing on a schedule; see the module docstring for the exactly-once rule."""

    kind = "timer"

    def __init__(self, name: str, config: TimerTriggerConfig, publish: Publish, state: StateStore,
                 clock: Clock | None = None, shared: bool = False, lease_ttl: float = LEASE_TTL) -> None:
        self.name = name
        self.config = config
        self.state_key = f"trigger/{name}/last"
        self._publish = publish
        self._state = state
        self._clock = clock or SystemClock()
        self._schedule = schedule_for(config)
        self._source = config.source or f"/fmesh/triggers/{name}"
        self._backoff = Backoff(RETRY_DELAY, RETRY_MAX_DELAY)
        self._status = StatusTracker(name, self.kind)
        self._task: asyncio.Task | None = None
        self._lease = Lease(state, f"lease/trigger/{name}", self._clock, lease_ttl) if shared else None

    def _description(self) -> str:
        return f"timer trigger {self.name}"

    def _restart_backoff(self) -> Backoff:
        return Backoff(RETRY_DELAY, RETRY_MAX_DELAY)

    def _starting(self) -> None:
        self._status.connected()  # a timer has nothing to connect to

    async def _run(self) -> None:
        if self._lease is None:
            await self._fire_on_schedule(lambda tick: tick)
            return
        while True:
            await self._take_lease(self._lease)
            await self._fire_on_schedule(lambda tick: min(tick, self._clock.now() + self._lease.renew_every))
            self._status.detail["standby"] = "lost the lease"

    async def _fire_on_schedule(self, wake_at: Callable[[float], float]) -> None:
        """Fire each tick as it comes; with a lease, wake to renew it too, and return once it is lost."""
        cursor, limit = await self._starting_point()
        while True:
            tick = self._schedule.next_after(cursor)
            self._status.detail["next_tick"] = tick_time(tick)
            await self._clock.sleep_until(wake_at(tick))
            if self._lease is not None and not await self._retrying(self._lease.acquire):
                return
            for fired in due(self._schedule, cursor, self._clock.now(), limit):
                if self._lease is not None and not self._lease.held():
                    return  # paused past the lease (a slow publish): the next holder fires it
                await self._fire(fired)
                cursor = fired
            limit = self.config.max_catch_up if self.config.catch_up else 1

    async def _take_lease(self, lease: Lease) -> None:
        """Wait until this node holds the lease (another node fires meanwhile)."""
        while not await self._retrying(lease.acquire):
            self._status.detail["standby"] = f"another node fires it ({lease.other or 'unknown'})"
            await self._clock.sleep_until(self._clock.now() + lease.renew_every)
        self._status.detail.pop("standby", None)

    async def stop(self) -> None:
        await super().stop()
        if self._lease is not None:
            try:  # hand it over now rather than after the ttl
                await self._lease.release()
            except StoreError:
                pass

    async def _starting_point(self) -> tuple[float, int]:
        """Where the schedule resumes, and how many missed ticks it may fire at once: after the
        last fired tick, or now (skipping missed ones). A node taking over a lease goes on from
        the last tick as long as the takeover took, so a dead holder costs no tick."""
        stored = await self._retrying(self._state.get, self.state_key)
        now = self._clock.now()
        if stored is None:
            return now, 1
        last = parse_tick(stored.value)
        self._status.detail["last_tick"] = tick_time(last)
        if self.config.catch_up:
            return last, self.config.max_catch_up
        if self._lease is not None and now - last <= self._lease.ttl + 2 * self._lease.renew_every:
            return last, self.config.max_catch_up  # a takeover, not a mesh that was down
        skipped = len(due(self._schedule, last, now, self.config.max_catch_up))
        if skipped:
            self._status.detail["skipped"] = skipped
        return max(last, now), 1

    async def _fire(self, tick: float) -> None:
        await publish_until_stored(self._publish, [self.event_for(tick)], self._backoff, self._store_failed)
        await self._retrying(self._record, tick)
        self._status.connected()
        self._status.received(1, self._clock.now())
        self._status.detail["last_tick"] = tick_time(tick)

    async def _record(self, tick: float) -> None:
        """Store `tick` as the last fired, unless a later one is stored already: a holder that
        lost its lease while it published must not move the shared cursor back."""
        value = tick_time(tick).encode()
        if self._lease is None:
            await self._state.put(self.state_key, value)
            return
        while True:
            entry = await self._state.get(self.state_key)
            if entry is not None and parse_tick(entry.value) >= tick:
                return
            try:
                if entry is None:
                    await self._state.create(self.state_key, value)
                else:
                    await self._state.update(self.state_key, value, entry.revision)
                return
            except Conflict:
                continue  # another holder wrote meanwhile: look again

    def event_for(self, tick: float) -> Event:
        """The event of one tick; the same tick always gives the same id."""
        config = self.config
        when = tick_time(tick)
        attributes = {"specversion": "1.0", "id": f"{self.name}-{when}", "source": self._source,
                      "type": config.type, "time": when, **config.extensions}
        if config.subject:
            attributes["subject"] = config.subject
        if config.data is not None:
            attributes["datacontenttype"] = "application/json"
        return Event(attributes, encode_data(config.data, "application/json"))

    async def _retrying(self, operation, *args):  # type: ignore[no-untyped-def]
        while True:
            try:
                result = await operation(*args)
            except StoreError as exc:
                self._store_failed(exc)
                await self._backoff.wait()
                continue
            self._backoff.reset()
            return result

    def _store_failed(self, error: StoreError) -> None:
        self._status.retrying(f"event log unavailable for timer {self.name}: {error}")
