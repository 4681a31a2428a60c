"""Triggers: sources that turn Kafka records, NATS messages, timer ticks and webhooks into events.

Integration surface (the rest is internal):

- `fmesh.triggers.config.TriggerEntry`: the manifest model of one `triggers:` entry;
- `fmesh.triggers.registry.build_trigger(name, entry, publish, state, clock=None)`;
- `fmesh.triggers.base`: the `Trigger` Protocol, `TriggerStatus`, `Publish`; `StateStore` comes from `fmesh.contracts`.

Modules import their client libraries (aiokafka, nats-py) only when imported, so the
manifest schema in `config` stays cheap to load.
"""

from fmesh.triggers.base import Publish, Trigger, TriggerStatus

from fmesh.contracts import StateStore

__all__ = ["Publish", "StateStore", "Trigger", "TriggerStatus"]
