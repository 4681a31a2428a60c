"""Open an event log from its URL: `sqlite:///abs/path/mesh.db`, `sqlite://mesh.db`
(relative to the data dir) or `memory://`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from fmesh.broker.log import EventLog
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.sqlite_log import SqliteEventLog


def open_store(url: str, data_dir: Path) -> EventLog:
    """The event log for `url`; a ValueError names the URL and the schemes on offer."""
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryEventLog()
    if parsed.scheme == "sqlite":
        path = (parsed.netloc + parsed.path) if parsed.netloc else "/" + parsed.path.lstrip("/")
        if path in ("", "/"):
            raise ValueError(f"store URL {url!r} names no file: use sqlite:///path/to/mesh.db")
        return SqliteEventLog(data_dir / path if parsed.netloc else Path(path))
    raise ValueError(f"unknown store URL {url!r}: use sqlite:///path/to/mesh.db or memory://")
