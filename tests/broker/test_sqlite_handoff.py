"""A claim waiting on the SQLite log with nothing to do is handed what arrives, claimed in the
transaction that stores it, rather than woken to read it back (broker/arrivals.py)."""

from __future__ import annotations

import asyncio

import pytest
from fmesh.broker.sqlite_log import SqliteEventLog

from fmesh.events import new_event

SUB = "function:f"


@pytest.fixture
async def log(tmp_path):
    store = SqliteEventLog(tmp_path / "mesh.db")
    await store.open()
    looks = []
    real = store._claim_now

    async def counted(*args):
        looks.append(args)
        return await real(*args)

    store._claim_now = counted
    store.looks = looks
    yield store
    await store.close()


async def waiting(log: SqliteEventLog, limit: int = 10, ordered: bool = False, subscription: str = SUB):
    """A claim, once it has looked and found nothing: waiting for what arrives."""
    claim = asyncio.ensure_future(log.claim(subscription, limit, ordered=ordered, wait=10))
    async with asyncio.timeout(5):
        while not log.looks or (not ordered and subscription not in log._arrivals.takers):
            await asyncio.sleep(0.001)
    return claim


def nobody_waits(log: SqliteEventLog) -> bool:
    return not log._arrivals._waiting and not log._arrivals.takers


def events(count: int) -> list:
    return [(new_event(type="t", source="/s", data={"n": n}), [SUB]) for n in range(count)]


async def test_a_waiting_claim_is_handed_the_fresh_delivery_without_looking_again(log):
    claim = await waiting(log)
    await log.append(events(1))
    [delivery] = await asyncio.wait_for(claim, 5)
    assert delivery.event.data == {"n": 0} and delivery.attempts == 0 and delivery.subscription == SUB
    assert len(log.looks) == 1, "the claim read the delivery back"
    assert nobody_waits(log)
    assert await log.claim(SUB, 10) == [], "a handed delivery is claimed"
    await log.ack([delivery.id])
    assert await log.pending(SUB) == 0


async def test_a_claim_is_handed_at_most_its_limit_and_the_rest_wait_in_the_log(log):
    claim = await waiting(log, limit=2)
    await log.append(events(5))
    handed = await asyncio.wait_for(claim, 5)
    assert [d.event.data["n"] for d in handed] == [0, 1]
    rest = await log.claim(SUB, 10)
    assert [d.event.data["n"] for d in rest] == [2, 3, 4]
    assert len({d.id for d in handed + rest}) == 5


async def test_the_handed_ids_are_the_stored_rows(log):
    await log.append(events(3))  # ids already given, and acked: the next ones follow them
    await log.ack([d.id for d in await log.claim(SUB, 10)])
    claim = await waiting(log)
    await log.append(events(2))
    handed = await asyncio.wait_for(claim, 5)
    await log.retry(handed[1], 0, "again")
    [again] = await log.claim(SUB, 10)
    assert again.id == handed[1].id and again.event.data == {"n": 1} and again.attempts == 1


async def test_ordered_claims_are_never_handed_anything(log):
    claim = await waiting(log, ordered=True)
    await log.append(events(1))
    assert len(await asyncio.wait_for(claim, 5)) == 1
    assert len(log.looks) == 2


async def test_two_claims_waiting_on_one_subscription_are_both_woken_instead(log, monkeypatch):
    def no_hand(subscription, deliveries):
        raise AssertionError("handed to one of two waiting claims")

    monkeypatch.setattr(log._arrivals, "hand", no_hand)
    first = await waiting(log)
    second = asyncio.ensure_future(log.claim(SUB, 10, wait=10))
    async with asyncio.timeout(5):
        while len(log.looks) < 2:
            await asyncio.sleep(0.001)
    assert SUB not in log._arrivals.takers
    await log.append(events(1))
    done, pending = await asyncio.wait({first, second}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [len(task.result()) for task in done] == [1]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def test_a_claim_cancelled_as_it_is_handed_deliveries_gives_them_back(log):
    claim = await waiting(log)
    hand = log._arrivals.hand

    def hand_then_cancel(subscription, deliveries):
        hand(subscription, deliveries)
        claim.cancel()  # before the claim resumes to take them

    log._arrivals.hand = hand_then_cancel
    await log.append(events(1))
    with pytest.raises(asyncio.CancelledError):
        await claim
    [again] = await log.claim(SUB, 10)
    assert again.event.data == {"n": 0}
    assert nobody_waits(log)


async def test_a_failing_group_hands_the_appended_rows_once_when_they_are_stored_alone(log):
    claim = await waiting(log)

    def broken(conn):
        raise RuntimeError("an operation that fails")

    outcomes = await asyncio.gather(log.append(events(1)), log.submit(broken), return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], RuntimeError)
    [delivery] = await asyncio.wait_for(claim, 5)
    assert log._inflight.of(SUB) == {delivery.id}
    assert await log.claim(SUB, 10) == []


async def test_a_claim_that_waited_in_vain_leaves_nothing_behind(log):
    assert await log.claim(SUB, 10, wait=0.05) == []
    assert nobody_waits(log)


async def test_what_a_claim_gone_meanwhile_would_have_been_handed_is_unclaimed_again(log, monkeypatch):
    claim = await waiting(log)
    monkeypatch.setattr(log._arrivals, "hand", lambda subscription, deliveries: False)
    await log.append(events(1))
    [delivery] = await log.claim(SUB, 10)
    assert delivery.event.data == {"n": 0}
    claim.cancel()
    await asyncio.gather(claim, return_exceptions=True)


async def test_deliveries_dropped_in_the_same_group_are_not_handed(log, monkeypatch):
    claim = await waiting(log)
    handed = []
    hand = log._arrivals.hand
    monkeypatch.setattr(log._arrivals, "hand", lambda sub, found: handed.append(found) or hand(sub, found))
    await asyncio.gather(log.append(events(1)), log.drop_subscription(SUB))  # one group: stored, then dropped
    assert handed == [], "the claim was handed a delivery of a dropped subscription"
    assert await log.pending(SUB) == 0 and not log._inflight.of(SUB)
    claim.cancel()
    await asyncio.gather(claim, return_exceptions=True)
