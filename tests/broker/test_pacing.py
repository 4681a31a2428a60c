"""Pacing: while deliveries are behind, the ingress works on at most `limit` requests at
once (the rest wait their turn, none is dropped); with no backlog nothing waits."""

from __future__ import annotations

import asyncio

from fmesh.broker.pacing import Pacing


class Gauge:
    """An app that counts the requests it is working on, each held until released."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.done = 0
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        self.active += 1
        self.most = max(self.most, self.active)
        await self.release.wait()
        self.active -= 1
        self.done += 1


async def run_requests(pacing: Pacing, app: Gauge, count: int) -> None:
    requests = [asyncio.create_task(pacing.run(app, {}, None, None)) for _ in range(count)]
    for _ in range(5):
        await asyncio.sleep(0)  # every request that may start has started
    app.release.set()
    await asyncio.gather(*requests)


async def test_while_deliveries_are_behind_a_few_requests_run_at_once_and_all_finish():
    app = Gauge()
    await run_requests(Pacing(lambda: 2_000, limit=8, behind=1_000), app, 20)
    assert app.most == 4 and app.done == 20


async def test_the_further_behind_the_fewer_at_once():
    app = Gauge()
    await run_requests(Pacing(lambda: 4_000, limit=8, behind=1_000), app, 20)
    assert app.most == 2 and app.done == 20
    app = Gauge()
    await run_requests(Pacing(lambda: 10**9, limit=8, behind=1_000), app, 5)
    assert app.most == 1 and app.done == 5  # never none


async def test_a_client_that_leaves_while_waiting_loses_its_turn_and_blocks_nobody():
    app = Gauge()
    pacing = Pacing(lambda: 5_000, limit=1, behind=0)
    first = asyncio.create_task(pacing.run(app, {}, None, None))
    left = asyncio.create_task(pacing.run(app, {}, None, None))
    third = asyncio.create_task(pacing.run(app, {}, None, None))
    await asyncio.sleep(0)
    left.cancel()
    await asyncio.sleep(0)
    app.release.set()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert app.done == 2 and left.cancelled()


async def test_with_no_backlog_nothing_waits():
    app = Gauge()
    await run_requests(Pacing(lambda: 10, limit=4, behind=1_000), app, 20)
    assert app.most == 20 and app.done == 20


async def test_a_request_that_fails_gives_its_turn_back():
    async def failing(scope, receive, send) -> None:
        raise RuntimeError("boom")

    pacing = Pacing(lambda: 5_000, limit=1, behind=0)
    for _ in range(3):
        try:
            await asyncio.wait_for(pacing.run(failing, {}, None, None), 5)
        except RuntimeError:
            pass
    app = Gauge()
    app.release.set()
    await asyncio.wait_for(pacing.run(app, {}, None, None), 5)
    assert app.done == 1
