"""Build a trigger from its manifest entry: the one place that knows every kind."""

from __future__ import annotations

from fmesh.triggers.base import Publish, Trigger, stamped
from fmesh.triggers.clock import Clock
from fmesh.triggers.config import (
    HttpTriggerConfig,
    KafkaTriggerConfig,
    NatsTriggerConfig,
    TimerTriggerConfig,
    TriggerConfig,
    TriggerEntry,
)

from fmesh.contracts import StateStore
from fmesh.tracing import NOOP, Tracer

# Each kind is imported when first used: a mesh without Kafka or NATS triggers never
# loads aiokafka or nats-py (a few MB of memory each).


def build_trigger(name: str, config: TriggerEntry | TriggerConfig, publish: Publish, state: StateStore,
                  clock: Clock | None = None, shared: bool = False, tracer: Tracer = NOOP) -> Trigger:
    """A stopped trigger named `name`; call `start()` to run it. `shared`: other nodes run
    it too, on the same store (a timer then fires on one node only).

    Raises TriggerConfigError (a ValueError) naming the field when a referenced secret
    environment variable or file is missing. A webhook trigger (kind "http") also has
    `.path` and `.app`, the ASGI app to mount at that path.
    """
    if isinstance(config, TriggerEntry):
        config = config.config
    publish = stamped(publish, f"trigger:{name}", tracer)
    if isinstance(config, KafkaTriggerConfig):
        from fmesh.triggers.kafka import KafkaTrigger
        return KafkaTrigger(name, config, publish)
    if isinstance(config, NatsTriggerConfig):
        from fmesh.triggers.nats import NatsTrigger
        return NatsTrigger(name, config, publish, shared)
    if isinstance(config, TimerTriggerConfig):
        from fmesh.triggers.timer import TimerTrigger
        return TimerTrigger(name, config, publish, state, clock, shared)
    if isinstance(config, HttpTriggerConfig):
        from fmesh.triggers.webhook import WebhookTrigger
        return WebhookTrigger(name, config, publish, clock)
    raise TypeError(f"trigger {name!r}: unknown configuration {type(config).__name__}")
