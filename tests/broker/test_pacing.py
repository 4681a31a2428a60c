"""Pacing: requests at once halve while the backlog grows past `behind` on a busy loop,
grow back otherwise; waiting requests all finish, none is dropped, a client that leaves
blocks nobody; a backlog that does not grow, or an idle loop, slows nobody."""

from __future__ import annotations

import asyncio

import httpx
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.pacing import BUSY_LAG, MOST, Pacing

BUSY, IDLE = BUSY_LAG * 4, 0.0


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


async def paced(pacing: Pacing, app) -> None:
    async with pacing.turn():
        await app({}, None, None)


async def run_requests(pacing: Pacing, app: Gauge, count: int) -> None:
    requests = [asyncio.create_task(paced(pacing, app)) for _ in range(count)]
    for _ in range(5):
        await asyncio.sleep(0)  # every request that may start has started
    app.release.set()
    await asyncio.gather(*requests)


def growing_backlog(start: int = 20_000, step: int = 1_000):
    state = {"waiting": start}

    def waiting() -> int:
        return state["waiting"]

    def grow() -> None:
        state["waiting"] += step

    return waiting, grow


def pacing_after_ticks(ticks: int, lag: float = BUSY, behind: int = 1_000) -> Pacing:
    waiting, grow = growing_backlog()
    pacing = Pacing(waiting, behind=behind)
    for _ in range(ticks):
        grow()
        pacing.tick(lag)
    return pacing


async def test_while_the_backlog_grows_on_a_busy_loop_fewer_requests_run_at_once_and_all_finish():
    pacing = pacing_after_ticks(4)  # the first tick only looks
    assert pacing.room == MOST // 8
    app = Gauge()
    await run_requests(pacing, app, 40)
    assert app.most == MOST // 8 and app.done == 40


async def test_never_fewer_than_one():
    pacing = pacing_after_ticks(20)
    assert pacing.room == 1
    app = Gauge()
    await run_requests(pacing, app, 5)
    assert app.most == 1 and app.done == 5


async def test_once_delivery_keeps_up_the_room_grows_back_and_waiting_requests_go_on():
    waiting, grow = growing_backlog()
    pacing = Pacing(waiting, behind=1_000)
    for _ in range(20):
        grow()
        pacing.tick(BUSY)
    app = Gauge()
    requests = [asyncio.create_task(paced(pacing, app)) for _ in range(10)]
    await asyncio.sleep(0)
    assert app.active == 1
    for _ in range(3):
        pacing.tick(BUSY)  # the backlog stands still: delivery keeps up
    await asyncio.sleep(0)
    assert app.active == 10  # 1 + 3 * GROW
    while pacing.room is not None:
        pacing.tick(IDLE)
    app.release.set()
    await asyncio.gather(*requests)
    assert app.done == 10


def test_a_backlog_that_does_not_grow_or_an_idle_loop_or_a_small_backlog_slows_nobody():
    waiting, grow = growing_backlog(start=50_000, step=0)  # a sink that is down: its backlog stands
    standing = Pacing(waiting, behind=1_000)
    for _ in range(3):
        standing.tick(BUSY)
    assert standing.room is None
    assert pacing_after_ticks(5, lag=IDLE).room is None            # a slow handler, the loop idle
    assert pacing_after_ticks(5, behind=10**9).room is None        # a burst below `behind`


async def test_a_client_that_leaves_while_waiting_loses_its_turn_and_blocks_nobody():
    pacing = pacing_after_ticks(20)
    app = Gauge()
    first = asyncio.create_task(paced(pacing, app))
    left = asyncio.create_task(paced(pacing, app))
    third = asyncio.create_task(paced(pacing, app))
    await asyncio.sleep(0)
    left.cancel()
    await asyncio.sleep(0)
    app.release.set()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert app.done == 2 and left.cancelled()


async def test_a_request_that_fails_gives_its_turn_back():
    async def failing(scope, receive, send) -> None:
        raise RuntimeError("boom")

    pacing = pacing_after_ticks(20)
    for _ in range(3):
        try:
            await asyncio.wait_for(paced(pacing, failing), 5)
        except RuntimeError:
            pass
    app = Gauge()
    app.release.set()
    await asyncio.wait_for(paced(pacing, app), 5)
    assert app.done == 1


async def test_the_controller_ticks_on_its_own():
    waiting, grow = growing_backlog()
    pacing = Pacing(waiting, behind=1_000)
    control = asyncio.create_task(pacing.control())
    try:
        await asyncio.sleep(0.6)
    finally:
        control.cancel()
    assert pacing._last_waiting == 20_000  # it looked


async def test_a_client_sending_its_body_slowly_holds_no_turn():
    """Paced down to one request at a time, the ingress still answers others while one
    client dribbles its body: the turn is taken once the body is in."""
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("function:a", compile_shorthand({}))
    ingress = Ingress(broker.publish)
    ingress.turn = pacing_after_ticks(20).turn
    body_arrives = asyncio.Event()

    async def slow_body():
        await body_arrives.wait()
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def answered(message) -> None:
        pass

    headers = [(b"ce-specversion", b"1.0"), (b"ce-id", b"slow"), (b"ce-source", b"/t"), (b"ce-type", b"t")]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    slow = asyncio.create_task(ingress(scope, slow_body, answered))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress), base_url="http://mesh") as client:
        quick = await asyncio.wait_for(client.post("/", headers={"ce-specversion": "1.0", "ce-id": "quick",
                                                                  "ce-source": "/t", "ce-type": "t"}), 5)
    assert quick.status_code == 202 and not slow.done()
    body_arrives.set()
    await asyncio.wait_for(slow, 5)
    assert await log.pending("function:a") == 2
