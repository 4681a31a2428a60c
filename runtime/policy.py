"""Delivery and scaling policies, with the names and meanings of Knative's specs."""

from __future__ import annotations

import random
from dataclasses import dataclass

from fmesh.events import MAX_HOPS


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a sidecar delivers: `retries` beyond the first attempt, backoff, per-attempt timeout."""

    retries: int = 3
    backoff: str = "exponential"          # or "linear"
    delay: float = 0.2                    # seconds before the first retry
    max_delay: float = 60.0
    timeout: float = 30.0                 # per attempt
    dead_letter: str | None = None        # the subscription dead letters go to ("function:x", a sink's)
    retry_after_cap: float = 300.0        # longest Retry-After honoured
    max_hops: int = MAX_HOPS              # reply chain length that counts as a loop
    ordered: bool = False                 # one event per partitionkey at a time, in order
    ttl: float | None = None              # an event stored longer than this is dead-lettered, not retried

    def expired(self, stored_at: float, now: float) -> bool:
        return self.ttl is not None and stored_at > 0 and now - stored_at > self.ttl

    def backoff_for(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter.

        Exponential: delay * 2**(attempt-1); linear: delay * attempt. The jitter draws
        uniformly from the upper half, so retries spread out but never come early by
        more than half.
        """
        base = self.delay * (2 ** (attempt - 1) if self.backoff == "exponential" else attempt)
        base = min(base, self.max_delay)
        return base * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class ScalePolicy:
    """Replicas between `min` and `max`, `concurrency` events at a time each."""

    min: int = 0
    max: int = 4
    concurrency: int = 1
    idle_timeout: float = 30.0            # an idle replica above `min` stops after this
    stable_window: float | None = None    # scale down only to the most wanted within this window
                                          # (default: idle_timeout)
    start_timeout: float = 30.0           # a replica that is not ready by then failed

    @property
    def window(self) -> float:
        return self.idle_timeout if self.stable_window is None else self.stable_window

    @property
    def max_inflight(self) -> int:
        return self.max * self.concurrency
