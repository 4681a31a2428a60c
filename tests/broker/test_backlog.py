"""The backlog bound: a subscription holding its bound of waiting deliveries refuses what
would go to it (whole requests, nothing stored), frees as deliveries finish, counts what
a restarted store holds, and never refuses the replies of events already accepted."""

from __future__ import annotations

import httpx
import pytest
from fmesh.broker.backlog import Backlog
from fmesh.broker.broker import Broker, RepliesPublisher
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.sqlite_log import SqliteEventLog

from fmesh.contracts import DeadLetter
from fmesh.errors import Backlogged
from fmesh.events import new_event


def bounded_broker(log, limit: int = 3) -> Broker:
    broker = Broker(log, backlog=Backlog(limit))
    broker.subscribe("function:a", compile_shorthand({"type": "a"}))
    broker.subscribe("function:b", compile_shorthand({"type": "b"}))
    return broker


def events(event_type: str, count: int) -> list:
    return [new_event(event_type, "/test", {"i": i}) for i in range(count)]


async def test_a_full_subscription_refuses_the_whole_publish_and_others_still_flow():
    log = MemoryEventLog()
    broker = bounded_broker(log)
    await broker.publish(events("a", 3))
    with pytest.raises(Backlogged) as refused:
        await broker.publish([*events("b", 1), *events("a", 1)])
    assert refused.value.subscription == "function:a" and refused.value.waiting == 3 and refused.value.limit == 3
    assert "function:a has 3 events waiting" in str(refused.value)
    assert await log.pending("function:b") == 0  # nothing of the refused request was stored
    await broker.publish(events("b", 2))
    assert await log.pending("function:b") == 2 and await log.pending("function:a") == 3


async def test_finished_deliveries_make_room():
    log = MemoryEventLog()
    broker = bounded_broker(log, limit=2)
    await broker.publish(events("a", 2))
    queue = broker.queue("function:a")
    first, second = await queue.claim(2, 0)
    await queue.ack([first.id])
    await broker.publish(events("a", 1))  # the ack made room for one
    with pytest.raises(Backlogged):
        await broker.publish(events("a", 1))
    await queue.dead_letter(second, DeadLetter(0, "function:a", second.event, 1, "boom"))
    await broker.publish(events("a", 1))  # so did the dead letter
    assert broker.backlog.waiting("function:a") == await log.pending("function:a") == 2
    assert broker.backlog.total == 2


async def test_replies_and_retries_are_never_refused():
    log = MemoryEventLog()
    broker = bounded_broker(log, limit=1)
    await broker.publish(events("a", 1))
    delivery = (await broker.queue("function:a").claim(1, 0))[0]
    await broker.queue("function:a").retry(delivery, 0, "try again")  # still one waiting, not two
    assert broker.backlog.waiting("function:a") == 1
    await RepliesPublisher(broker).publish(events("a", 2))  # a reply routes as any event does
    assert await log.pending("function:a") == 3


async def test_no_bound_takes_everything():
    broker = Broker(MemoryEventLog(), backlog=Backlog(0))
    broker.subscribe("function:a", compile_shorthand({}))
    await broker.publish(events("a", 50))
    assert broker.backlog.waiting("function:a") == 50


async def test_a_restarted_mesh_counts_what_its_store_holds(tmp_path):
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    await bounded_broker(log).publish(events("a", 3))
    await log.close()
    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()
    broker = bounded_broker(log)
    await broker.resync_backlog()
    with pytest.raises(Backlogged):
        await broker.publish(events("a", 1))
    assert broker.backlog.total == 3
    await broker.unsubscribe("function:a")  # its deliveries go with it, and so does its count
    assert broker.backlog.waiting("function:a") == broker.backlog.total == 0
    await log.close()


async def test_the_ingress_answers_503_with_retry_after_naming_the_function():
    log = MemoryEventLog()
    broker = bounded_broker(log, limit=1)
    ingress = Ingress(broker.publish)
    headers = {"ce-id": "1", "ce-source": "/test", "ce-type": "a", "ce-specversion": "1.0"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress), base_url="http://mesh") as client:
        assert (await client.post("/", headers=headers, content=b"x")).status_code == 202
        refused = await client.post("/", headers={**headers, "ce-id": "2"}, content=b"x")
        other = await client.post("/", headers={**headers, "ce-id": "3", "ce-type": "b"}, content=b"x")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"error": "function:a has 1 event waiting, its bound (--max-backlog 1); retry after 1s",
                              "subscription": "function:a", "waiting": 1, "limit": 1}
    assert other.status_code == 202
    assert await log.pending("function:a") == 1
