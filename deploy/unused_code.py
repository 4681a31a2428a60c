"""Function code that no deployed version uses goes, after a grace period (`fmesh up --bundle-grace`).

A bundle is needed while any node's deployed state names it, while a version runs from it
here (a retiring one of a rolling deploy too), and for `grace` after it was last uploaded,
checked or fetched: `fmesh deploy` uploads, installs and applies in separate requests, and
the code must not go between them. Past that it goes from this node's data dir and from
the store's blobs (the other nodes' own copies are theirs to remove).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fmesh.deploy.bundle import BundleStore, is_digest

from fmesh import meshlog
from fmesh.bindings.common import describe

log = meshlog.get("fmesh.deploy")

DEFAULT_GRACE = 600.0


def sweep_interval(grace: float) -> float:
    """How often to look: a few times per grace period, at most once a minute."""
    return min(60.0, max(0.1, grace / 4))


class UnusedCode:
    def __init__(self, bundles: BundleStore, grace: float = DEFAULT_GRACE) -> None:
        self.bundles = bundles
        self.grace = grace

    async def sweep(self, used: set[str]) -> list[str]:
        """Remove the bundles not in `used` that nothing has needed for `grace`; their digests."""
        now = self.bundles.clock()
        for digest in used:
            self.bundles.touch(digest)
        known = self.bundles.unpacked() | {name for name in await self.bundles.blobs.names() if is_digest(name)}
        removed = []
        for digest in sorted(known - used):
            if now - self.bundles.touched.setdefault(digest, now) >= self.grace:  # first seen unused: now
                await self.bundles.remove(digest)
                removed.append(digest)
        self.bundles.forget_except(known | used)
        return removed

    async def run(self, in_use: Callable[[], Awaitable[set[str]]], lock: asyncio.Lock) -> None:
        """Sweep now and then until cancelled, with what `in_use` says is needed, under `lock`
        (the control plane's: no deploy is half done meanwhile). A failure is said, and the
        sweep tried again next time."""
        while True:
            await asyncio.sleep(sweep_interval(self.grace))
            try:
                async with lock:
                    removed = await self.sweep(await in_use())
            except Exception as exc:  # noqa: BLE001 - one bad bundle or store hiccup must not end it
                log.warning("could not remove unused function code", error=describe(exc))
                continue
            for digest in removed:
                log.info(f"removed function code {digest[:12]}: no deployed version used it for {self.grace:g}s")
