"""`BlobStore` as files in one folder (the embedded default: the data dir's `blobs/`).

A blob is written to a temporary name and renamed, so a reader sees it whole or not at
all; file work runs off the event loop, so a large bundle never stalls the ingress."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class DirectoryBlobs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise ValueError(f"not a blob name: {name!r} (letters, digits and ._- only)")
        return self.directory / name

    async def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        await asyncio.to_thread(self._write, path, data)

    def _write(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)

    async def get(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    async def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if NAME.fullmatch(p.name)
                      and not p.name.endswith(".partial"))
