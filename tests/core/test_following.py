"""Following shared state never ends on one bad change."""

from __future__ import annotations

import asyncio

from fmesh.broker.memory_state import MemoryState

import fmesh.following as following
from fmesh.following import follow


async def test_a_change_that_fails_to_apply_does_not_end_the_following(monkeypatch, caplog):
    monkeypatch.setattr(following, "RETRY_FIRST", 0.01)
    state, seen, failed = MemoryState(), [], []

    async def apply(change) -> None:
        if change.key == "k/bad" and not failed:
            failed.append(change)
            raise RuntimeError("a bug in one change")
        seen.append(change.key)

    task = asyncio.ensure_future(follow(state, "k/", apply, "the test keys"))
    try:
        await state.put("k/bad", b"1")
        await state.put("k/good", b"2")
        async with asyncio.timeout(5):
            while "k/good" not in seen:
                await asyncio.sleep(0.01)
        assert "k/bad" in seen  # the watch started again, and its snapshot brought it back
        assert "lost sight of the test keys" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
