"""Open a store from its URL: `sqlite:///abs/path/mesh.db`, `sqlite://mesh.db` (relative
to the data dir), `memory://`, or `nats://host:4222[,host:4222...][?cluster=NAME&...]`
(JetStream, shared by every node that opens it: see `jetstream/`).

A store is three contracts over one engine: the event log (deliveries and dead letters),
state (key/value with compare-and-set and watch) and blobs (function bundles). Nothing
outside `broker/` knows which engine is behind them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fmesh.broker.directory_blobs import DirectoryBlobs
from fmesh.broker.log import EventLog
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.memory_state import MemoryBlobs, MemoryState
from fmesh.broker.sqlite_log import SqliteEventLog
from fmesh.broker.sqlite_state import SqliteState

from fmesh.contracts import BlobStore, StateStore


@dataclass
class Store:
    url: str
    log: EventLog
    state: StateStore
    blobs: BlobStore
    shared: bool = False  # other processes (nodes) may use this store at the same time

    async def open(self) -> None:
        await self.log.open()

    async def close(self) -> None:
        await self.log.close()


def open_store(url: str, data_dir: Path) -> Store:
    """The store for `url`; a ValueError names the URL and the schemes on offer."""
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return Store("memory://", MemoryEventLog(), MemoryState(), MemoryBlobs())
    if parsed.scheme == "sqlite":
        path = (parsed.netloc + parsed.path) if parsed.netloc else "/" + parsed.path.lstrip("/")
        if path in ("", "/"):
            raise ValueError(f"store URL {url!r} names no file: use sqlite:///path/to/mesh.db")
        log = SqliteEventLog(data_dir / path if parsed.netloc else Path(path))
        return Store(log.url, log, SqliteState(log.submit), DirectoryBlobs(data_dir / "blobs"))
    if parsed.scheme in ("nats", "tls"):
        from fmesh.broker.jetstream import open_jetstream  # nats-py only in meshes that use it

        log, state, blobs = open_jetstream(url)
        return Store(log.url, log, state, blobs, shared=True)
    raise ValueError(f"unknown store URL {url!r}: use sqlite:///path/to/mesh.db, nats://host:4222 or memory://")
