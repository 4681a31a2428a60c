"""Function logs: every line a replica writes, timestamped and tagged by replica.

Each function has a file in the data dir (rotated at a size bound, one old file kept)
and live followers for `fmesh logs -f`. fmesh's own notes about a function's replicas
(started, exited, killed) go in the same stream under the tag `fmesh`.

Inside an event loop the files are flushed once at the end of the loop turn, not after
every line: a handler that prints for every event cost the mesh's loop a write(2) an
event. Outside one (a test, a tool) every line is flushed at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from fmesh import meshlog

log = meshlog.get("fmesh.runtime")

DEFAULT_MAX_BYTES = 4 * 1024 * 1024


_second: tuple[int, str] = (-1, "")   # the last whole second formatted: strftime for every line cost 2 us


def timestamp(now: float | None = None) -> str:
    global _second
    now = time.time() if now is None else now
    second, text = _second
    if int(now) != second:
        second, text = _second = (int(now), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)))
    return f"{text}.{int(now % 1 * 1000):03d}Z"


class LogStore:
    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._followers: dict[str, set[asyncio.Queue[str | None]]] = {}
        self._ended = False  # the mesh is stopping: no follower waits for lines any more
        self._files: dict[str, TextIO] = {}
        self._dropping: dict[str, int] = {}     # lines not written since the last that was, per function
        self._unflushed: dict[str, int] = {}    # lines written to a file's buffer since its last flush
        self._noted: dict[str, int] = {}        # of `_dropping`, what the buffered note about it counts
        self._flush_due = False
        self._why_dropped: dict[str, str] = {}
        self.dropped = 0                        # lines never written to a file (the disk was full)
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, function: str) -> Path:
        return self.directory / f"{function}.log"

    def write(self, function: str, tag: str, stream: str, text: str) -> None:
        """Record one line (without its newline) from `tag` on `stream`. Never raises: a
        line the disk will not take (it is full) is dropped, and counted in the file once
        writing works again; followers get it all the same."""
        line = f"{timestamp()} {tag} {stream}: {text}\n"
        try:
            self._append(function, line)
        except OSError as exc:
            self._dropped_line(function, exc)
        for queue in self._followers.get(function, ()):
            if not queue.full():  # a follower too slow to keep up misses lines, never blocks us
                queue.put_nowait(line)

    def _append(self, function: str, line: str) -> None:
        f = self._file(function)
        if self._dropping.get(function):
            f.write(f"{timestamp()} fmesh info: {self._dropping[function]} log lines were not written "
                    f"({self._why_dropped[function]})\n")
            self._noted[function] = self._dropping.pop(function)
        self._unflushed[function] = self._unflushed.get(function, 0) + 1
        f.write(line)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out what the files buffer (and rotate a file past its bound). Never raises:
        the lines a failed flush held are dropped and counted, as a failed write's are."""
        self._flush_due = False
        for function in list(self._unflushed):
            try:
                self._flush_file(function)
            except OSError as exc:
                self._dropped_line(function, exc)

    def _flush_file(self, function: str) -> None:
        f = self._files.get(function)
        if f is not None:
            f.flush()
            if f.tell() > self.max_bytes:
                self._close(function)
                self.path(function).replace(self.path(function).with_suffix(".log.1"))
        self._unflushed.pop(function, None)
        self._noted.pop(function, None)

    def _dropped_line(self, function: str, exc: OSError) -> None:
        """The line being written, and every line still buffered with it, is lost."""
        lost = max(1, self._unflushed.pop(function, 0))
        noted = self._noted.pop(function, 0)  # counted before; its note is lost with the lines
        try:
            self._close(function)  # what is buffered is lost with the line; the file opens again next time
        except OSError:
            pass  # its fd is closed even so
        if not (self._dropping.get(function) or noted):
            log.warning(f"cannot write the log of {function}: dropping its lines until it can",
                        function=function, error=str(exc))
        self._dropping[function] = self._dropping.get(function, 0) + noted + lost
        self._why_dropped[function] = exc.strerror or str(exc)
        self.dropped += lost

    def _file(self, function: str) -> TextIO:
        f = self._files.get(function)
        if f is None:
            f = self._files[function] = self.path(function).open("a", encoding="utf-8", errors="replace")
        return f

    def _close(self, function: str) -> None:
        self._unflushed.pop(function, None)
        self._noted.pop(function, None)
        f = self._files.pop(function, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        self.flush()
        for function in list(self._files):
            self._close(function)

    def note(self, function: str, text: str) -> None:
        self.write(function, "fmesh", "info", text)

    def tail(self, function: str, lines: int = 200) -> list[str]:
        if lines <= 0:
            return []
        self.flush()
        found: list[str] = []
        for path in (self.path(function), self.path(function).with_suffix(".log.1")):  # newest first
            if len(found) < lines and path.exists():
                found = _lines(path)[-(lines - len(found)):] + found
        return found

    async def follow(self, function: str) -> AsyncIterator[str]:
        """Lines as they are written, until the caller stops iterating or `end_followers`."""
        if self._ended:
            return
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10_000)
        self._followers.setdefault(function, set()).add(queue)
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            self._followers[function].discard(queue)

    def end_followers(self) -> None:
        """Let every `follow` finish (the mesh is stopping), and any started later at once."""
        self._ended = True
        for queue in (q for queues in self._followers.values() for q in queues):
            if queue.full():
                queue.get_nowait()  # a full follower misses one more line, not the end
            queue.put_nowait(None)

    def forget(self, function: str) -> None:
        self._close(function)
        for path in (self.path(function), self.path(function).with_suffix(".log.1")):
            path.unlink(missing_ok=True)




def _lines(path: Path) -> list[str]:
    r"""The file's lines, each ended by "\n" only: a "\r" a function printed is part of its
    line (text mode would make it a newline; splitlines would end the line at "\x0b" too)."""
    with path.open(encoding="utf-8", errors="replace", newline="\n") as f:
        return list(f)
