"""A runner pool: the replicas of one function, scaled between `min` and `max`.

At zero replicas an event waits in the pool while one starts (Knative's activator);
more replicas start while events wait for a free slot; a replica idle for
`idle_timeout` is first taken out of routing, then stopped, so it never gets an event
after it was chosen to go.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fmesh.runtime.policy import ScalePolicy
from fmesh.runtime.replica import Replica, Result, State
from fmesh.runtime.starters import ReplicaStarter

from fmesh.errors import HandlerError, HandlerTimeout
from fmesh.events import Event

Note = Callable[[str], None]


@dataclass
class PoolStatus:
    ready: int
    starting: int
    draining: int
    inflight: int
    waiting: int
    desired: int
    cold_start_last_ms: float | None
    cold_start_median_ms: float | None


class RunnerPool:
    """`invoke(event, timeout)` on some replica of one function; owns replicas and scaling."""

    def __init__(self, function: str, starter: ReplicaStarter, scale: ScalePolicy, note: Note,
                 on_cold_start: Callable[[str, float], None] | None = None) -> None:
        self.function = function
        self._on_cold_start = on_cold_start     # told each cold start's seconds (the metrics)
        self.scale = scale
        self._starter = starter
        self._note = note
        self.replicas: dict[str, Replica] = {}
        self._waiters: deque[tuple[asyncio.Future[Replica], float]] = deque()
        self._indexes = itertools.count(1)
        self._cold_starts: deque[float] = deque(maxlen=100)
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        self._closing = False
        self._start_failures = 0
        self._start_error: HandlerError | None = None
        self._backoff_until = 0.0               # no new replica before this after failed starts
        self.out_of_memory = 0                  # replicas lost to their memory limit
        self._desired_history: deque[tuple[float, int]] = deque()

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name=f"reaper {self.function}")
        self._rescale()

    async def invoke(self, event: Event, timeout: float) -> Result:
        replica = await self._acquire()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: no task of its own, two loop turns fewer
                return await replica.invoke(event)
        except TimeoutError:
            # A sync handler cannot be interrupted: recycle the replica that runs it.
            self._note(f"{replica.name} timed out after {timeout:g}s handling {event.id}; recycling it")
            replica.kill("handler timed out")
            raise HandlerTimeout(timeout) from None
        finally:
            replica.inflight -= 1
            replica.last_used = time.monotonic()
            self._dispatch()

    # -- handing out replicas -------------------------------------------------------------

    async def _acquire(self) -> Replica:
        replica = self._pick()
        if replica is not None:
            replica.inflight += 1
            return replica
        if self._closing:
            raise HandlerError(f"function {self.function} is shutting down", status=503)
        if self._start_error is not None and not self._active() and time.monotonic() < self._backoff_until:
            raise self._start_error  # fail fast while a crash-looping function backs off
        waiter: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, time.monotonic()))
        self._rescale()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.scale.start_timeout)
        except TimeoutError:
            if _granted(waiter):
                return waiter.result()
            waiter.cancel()
            raise HandlerError(f"no replica of {self.function} became ready within "
                               f"{self.scale.start_timeout:g}s", status=503) from None
        except asyncio.CancelledError:
            if _granted(waiter):  # handed a replica just as we were cancelled: give it back
                waiter.result().inflight -= 1
                self._dispatch()
            waiter.cancel()
            raise

    def _pick(self) -> Replica | None:
        best = None
        for replica in self.replicas.values():
            if replica.routable and replica.inflight < self.scale.concurrency:
                if best is None or replica.inflight < best.inflight:
                    best = replica
        return best

    def _dispatch(self) -> None:
        while self._waiters:
            waiter, since = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            replica = self._pick()
            if replica is None:
                return
            self._waiters.popleft()
            replica.inflight += 1
            waiter.set_result(replica)
            if replica.ready_at is not None and replica.ready_at >= since:
                self._cold_starts.append(replica.ready_at - since)
                if self._on_cold_start is not None:
                    self._on_cold_start(self.function, replica.ready_at - since)

    def _fail_waiters(self, error: HandlerError) -> None:
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    # -- scaling ---------------------------------------------------------------------

    def _active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state in (State.STARTING, State.READY)]

    def desired(self) -> int:
        demand = sum(r.inflight for r in self.replicas.values()) + sum(
            1 for w, _ in self._waiters if not w.done())
        wanted = math.ceil(demand / self.scale.concurrency)
        return max(self.scale.min, min(self.scale.max, wanted))

    def _rescale(self) -> None:
        if self._closing or time.monotonic() < self._backoff_until:
            return
        for _ in range(self.desired() - len(self._active())):
            # Registered now, not when the task runs, so the next rescale counts it.
            replica = self._starter.create(next(self._indexes))
            replica.on_close = self._on_close
            self.replicas[replica.id] = replica
            self._spawn(self._start_replica(replica))

    def _spawn(self, coroutine) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_replica(self, replica: Replica) -> None:
        started = time.monotonic()
        try:
            await self._starter.start(replica, self.scale.start_timeout)
        except HandlerError as exc:
            self._start_failed(replica, exc)
            return
        except Exception as exc:  # noqa: BLE001 - any failure to start is a failed start, with backoff
            self._start_failed(replica, HandlerError(f"{type(exc).__name__}: {exc}" if str(exc) else
                                                     type(exc).__name__))
            return
        self._start_failures, self._start_error = 0, None
        self._note(f"{replica.name} ready in {(time.monotonic() - started) * 1000:.1f}ms (pid {replica.pid})")
        self._dispatch()

    def _start_failed(self, replica: Replica, error: HandlerError) -> None:
        """Back off exponentially (0.5 s to 30 s) so a broken function does not crash-loop."""
        self._start_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._start_failures - 1))
        self._backoff_until = time.monotonic() + delay
        self._start_error = HandlerError(f"function {self.function} failed to start: {error}", status=503)
        self._note(f"{replica.name} failed to start: {error}; next start in {delay:g}s at the earliest")
        replica.kill(str(error))
        replica.closed(str(error))
        if not self._active():
            self._fail_waiters(self._start_error)

    def _on_close(self, replica: Replica) -> None:
        self.replicas.pop(replica.id, None)
        if replica.exit_reason == "out of memory":
            self.out_of_memory += 1
        self._starter.forget(replica)
        if replica.ready_at is not None and replica.exit_reason not in ("scaled down", "shut down"):
            self._note(f"{replica.name} stopped: {replica.exit_reason}")
        # A replica that never got ready is the start path's business (with its backoff).
        if replica.ready_at is not None and not self._closing and any(not w.done() for w, _ in self._waiters):
            self._rescale()

    def on_exit(self, replica_id: str, how: str) -> None:
        """The launcher saw the process end (the connection closing says the same, later)."""
        replica = self.replicas.get(replica_id)
        if replica is not None:
            replica.process_exited(how)

    async def _reap(self) -> None:
        tick = min(1.0, max(0.05, min(self.scale.idle_timeout, self.scale.window) / 4))
        while True:
            await asyncio.sleep(tick)
            self._scale_down(time.monotonic())
            self._rescale()

    def _peak_desired(self, now: float) -> int:
        """The most replicas wanted within the stable window (Knative's KPA keeps those)."""
        self._desired_history.append((now, self.desired()))
        horizon = now - self.scale.window
        while self._desired_history and self._desired_history[0][0] < horizon:
            self._desired_history.popleft()
        return max(d for _, d in self._desired_history)

    def _scale_down(self, now: float) -> None:
        peak = self._peak_desired(now)
        if any(not w.done() for w, _ in self._waiters):
            return
        surplus = len(self._active()) - max(self.scale.min, peak)
        idle = [r for r in self.replicas.values() if r.state is State.READY and r.inflight == 0
                and now - r.last_used >= self.scale.idle_timeout]
        for replica in sorted(idle, key=lambda r: r.last_used)[:max(0, surplus)]:
            replica.state = State.DRAINING  # out of routing before anything else happens
            replica.exit_reason = "scaled down"
            self._note(f"{replica.name} idle for {self.scale.idle_timeout:g}s: scaling down")
            self._spawn(replica.stop())

    # -- reporting and shutdown ---------------------------------------------------------------

    def status(self) -> PoolStatus:
        states = [r.state for r in self.replicas.values()]
        cold = list(self._cold_starts)
        return PoolStatus(
            ready=states.count(State.READY), starting=states.count(State.STARTING),
            draining=states.count(State.DRAINING),
            inflight=sum(r.inflight for r in self.replicas.values()),
            waiting=sum(1 for w, _ in self._waiters if not w.done()), desired=self.desired(),
            cold_start_last_ms=cold[-1] * 1000 if cold else None,
            cold_start_median_ms=statistics.median(cold) * 1000 if cold else None)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking events, let in-flight ones finish (up to `grace`), stop every replica."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        self._fail_waiters(HandlerError(f"function {self.function} is shutting down", status=503))
        replicas = list(self.replicas.values())
        for replica in replicas:
            replica.exit_reason = replica.exit_reason or "shut down"
        await asyncio.gather(*(r.stop(grace) for r in replicas), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()


def _granted(waiter: asyncio.Future[Replica]) -> bool:
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None
