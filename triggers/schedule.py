"""When a timer ticks: cron expressions in a time zone, or fixed intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from fmesh.triggers.config import TimerTriggerConfig

MICRO = 1_000_000


class Schedule(Protocol):
    def next_after(self, t: float) -> float:
        """The first tick strictly after Unix time `t`."""

    def at_or_before(self, t: float) -> float:
        """The last tick at or before Unix time `t`."""


class Every:
    """Ticks at every multiple of `interval` seconds since the Unix epoch."""

    def __init__(self, interval: float) -> None:
        self._step = max(1, round(interval * MICRO))  # whole microseconds: no float drift

    def next_after(self, t: float) -> float:
        return (round(t * MICRO) // self._step + 1) * self._step / MICRO

    def at_or_before(self, t: float) -> float:
        return round(t * MICRO) // self._step * self._step / MICRO


class Cron:
    """Ticks of a cron expression read in a time zone (DST handled by croniter)."""

    def __init__(self, expression: str, zone: str) -> None:
        from croniter import croniter  # here: a mesh without a cron timer never loads it (~1 MiB)

        self._croniter = croniter
        self._expression = expression
        self._zone = ZoneInfo(zone)

    def _at(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC).astimezone(self._zone)

    def next_after(self, t: float) -> float:
        return self._croniter(self._expression, self._at(t)).get_next(datetime).timestamp()

    def at_or_before(self, t: float) -> float:
        start = self._at(t) + timedelta(microseconds=1)  # get_prev is strict; include t itself
        return self._croniter(self._expression, start).get_prev(datetime).timestamp()


def schedule_for(config: TimerTriggerConfig) -> Schedule:
    if config.cron is not None:
        return Cron(config.cron, config.timezone)
    assert config.every is not None  # the model requires one of them
    return Every(config.every)


def due(schedule: Schedule, after: float, until: float, limit: int) -> list[float]:
    """Ticks in (after, until], oldest first; only the latest `limit` when there are more."""
    ticks: list[float] = []
    tick = schedule.at_or_before(until)
    while tick > after and len(ticks) < limit:
        ticks.append(tick)
        tick = schedule.at_or_before(tick - 1 / MICRO)
    return ticks[::-1]
