"""Triggers: sources that turn Kafka records, NATS messages, timer ticks and webhooks into events.

Integration surface (the rest is internal):

- `fmesh.triggers.config.TriggerEntry`: the manifest model of one `triggers:` entry;
- `fmesh.triggers.registry.build_trigger(name, entry, publish, state, clock=None)`;
- `fmesh.triggers.base`: the `Trigger` Protocol, `TriggerStatus`, `Publish`, `StateStore`.

Modules import their client libraries (aiokafka, nats-py) only when imported, so the
manifest schema in `config` stays cheap to load.
"""

from fmesh.triggers.base import Publish, StateStore, Trigger, TriggerStatus

__all__ = ["Publish", "StateStore", "Trigger", "TriggerStatus"]
