"""The JetStream store: `nats://host:4222[,host:4222...]?cluster=NAME&replicas=N&...`.

One NATS connection carries the three contracts of a store: the event log (`log.py`:
deliveries in a work-queue stream with a durable pull consumer per subscription, dead
letters in a stream of their own), state (a key/value bucket) and blobs (an object
store), all named after the mesh (`names.py`) and made on first use (`engine.py`).
Many processes can open the same store: they share every subscription's deliveries.
"""

from __future__ import annotations

from fmesh.broker.jetstream.blobs import JetStreamBlobs
from fmesh.broker.jetstream.engine import Engine
from fmesh.broker.jetstream.log import JetStreamEventLog
from fmesh.broker.jetstream.options import parse_store_url
from fmesh.broker.jetstream.state import JetStreamState

__all__ = ["JetStreamBlobs", "JetStreamEventLog", "JetStreamState", "open_jetstream"]


def open_jetstream(url: str) -> tuple[JetStreamEventLog, JetStreamState, JetStreamBlobs]:
    """The log, state and blobs of the store at `url`, sharing one connection (opened by
    the log's `open`); a ValueError says what is wrong with the URL."""
    engine = Engine(parse_store_url(url))
    return JetStreamEventLog(engine, url), JetStreamState(engine), JetStreamBlobs(engine)
