"""An event log that fails on demand: any other log, with faults injected per operation.

For tests of what happens when the store misbehaves (a full disk, a lost connection, a
corrupt row): `fail("ack", times=3)` makes the next three acks raise `StoreError` without
reaching the wrapped log, so nothing of those calls is stored, as with a real failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fmesh.broker.log import EventLog

from fmesh.errors import StoreError


class FaultyEventLog:
    """`EventLog` over `inner`, whose operations fail when told to."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.url = inner.url
        self._faults: dict[str, tuple[int, Callable[[], BaseException]]] = {}
        self.failed: dict[str, int] = {}    # how many calls of each operation were made to fail

    def fail(self, operation: str, times: int = 1, error: Callable[[], BaseException] | None = None) -> None:
        """Make the next `times` calls of `operation` raise `error()` (a StoreError by default)."""
        if not callable(getattr(self.inner, operation, None)):
            raise AttributeError(f"an event log has no operation {operation!r}")
        self._faults[operation] = (times, error or (lambda: StoreError(f"injected fault in {operation}")))

    def heal(self) -> None:
        self._faults.clear()

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self.inner, name)
        if not callable(operation):
            return operation

        async def maybe_failing(*args: Any, **kwargs: Any) -> Any:
            left, error = self._faults.get(name, (0, None))
            if left > 0 and error is not None:
                self._faults[name] = (left - 1, error)
                self.failed[name] = self.failed.get(name, 0) + 1
                raise error()
            return await operation(*args, **kwargs)

        return maybe_failing
