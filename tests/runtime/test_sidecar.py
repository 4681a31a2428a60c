"""Sidecar delivery policy over the in-memory event log, with in-process targets."""

from __future__ import annotations

import asyncio
import time

import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.faulty_log import FaultyEventLog
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.sqlite_log import SqliteEventLog
from fmesh.runtime.policy import DeliveryPolicy
from fmesh.runtime.replica import ReplyData
from fmesh.runtime.sidecar import Sidecar

from fmesh.errors import HandlerError
from fmesh.events import new_event


class Scripted:
    """A target that fails the first `failures` attempts of each event, then answers `reply`."""

    def __init__(self, failures: int = 0, error: HandlerError | None = None, reply=None, delay: float = 0) -> None:
        self.failures = failures
        self.error = error or HandlerError("boom", status=500)
        self.reply = reply
        self.delay = delay
        self.attempts: dict[str, int] = {}
        self.inflight = 0
        self.peak = 0

    async def invoke(self, event, timeout):
        self.attempts[event.id] = self.attempts.get(event.id, 0) + 1
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.delay)
            if self.attempts[event.id] <= self.failures:
                raise self.error
            return self.reply
        finally:
            self.inflight -= 1


async def eventually(condition, timeout=5.0, state=lambda: ""):
    """Poll `condition` until it holds; fail after `timeout` seconds, saying `state()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {state()}"
        await asyncio.sleep(0.005)


async def run(target, policy, events, max_inflight=4, until=None, timeout=5.0, log=None, before=None):
    log = log or MemoryEventLog()
    broker = Broker(log)
    queue = broker.subscribe("function:f", compile_shorthand({"type": "t"}))
    broker.subscribe("replies", compile_shorthand({"type": {"suffix": ".reply"}}))
    sidecar = Sidecar("function:f", "/fmesh/functions/f", queue, target, broker, policy, max_inflight)
    sidecar.start()
    if before is not None:
        await before(log)
    await broker.publish(events)
    done = until or (lambda s: s.delivered + s.dead_lettered >= len(events))
    await eventually(lambda: done(sidecar.stats), timeout, lambda: sidecar.stats)
    await sidecar.stop()
    return sidecar, log, broker


async def test_retries_then_succeeds():
    target = Scripted(failures=2)
    sidecar, log, _ = await run(target, DeliveryPolicy(retries=2, delay=0.01), [new_event("t", "/s")])
    assert sidecar.stats.delivered == 1 and sidecar.stats.failed == 2 and sidecar.stats.retried == 2
    assert await log.pending("function:f") == 0


async def test_gives_up_after_the_retries_into_the_dead_letters():
    event = new_event("t", "/s")
    sidecar, log, _ = await run(Scripted(failures=99), DeliveryPolicy(retries=1, delay=0.01), [event])
    [letter] = await log.dead_letters()
    assert letter.attempts == 2 and letter.status == 500 and "boom" in letter.error
    assert letter.event["fmesherrordest"] == "function:f" and letter.event["fmesherrorcode"] == 500
    assert letter.event.payload == event.payload


async def test_a_dead_letter_says_why_in_an_attribute_without_control_characters():
    error = HandlerError("Traceback (most recent call last):\n  File \"h.py\"\r\n\x1b[31mValueError", status=500)
    _, log, _ = await run(Scripted(failures=99, error=error), DeliveryPolicy(retries=0), [new_event("t", "/s")])
    [letter] = await log.dead_letters()
    said = letter.event["fmesherrordata"]
    assert "ValueError" in said and not any(ord(c) < 0x20 for c in said)  # a peer mesh would refuse it


async def test_a_reply_event_with_a_control_character_is_not_published():
    forged = new_event("t.reply", "/f", subject="two\nlines")
    sidecar, log, _ = await run(Scripted(reply=forged), DeliveryPolicy(retries=0), [new_event("t", "/s")])
    assert await log.claim("replies", 10) == []
    [letter] = await log.dead_letters()
    assert "U+000A" in letter.error


async def test_not_retryable_goes_straight_to_the_dead_letters():
    target = Scripted(failures=1, error=HandlerError("bad request", status=400, retryable=False))
    sidecar, log, _ = await run(target, DeliveryPolicy(retries=5, delay=0.01), [new_event("t", "/s")])
    assert sum(target.attempts.values()) == 1
    assert (await log.dead_letters())[0].reason == "not retryable"


async def test_retry_after_is_honoured_up_to_the_cap():
    target = Scripted(failures=1, error=HandlerError("slow down", status=429, retry_after=0.3))
    started = time.monotonic()
    await run(target, DeliveryPolicy(retries=1, delay=0.001), [new_event("t", "/s")])
    assert time.monotonic() - started >= 0.3


async def test_never_more_in_flight_than_allowed():
    target = Scripted(delay=0.02)
    events = [new_event("t", "/s") for _ in range(40)]
    sidecar, _, _ = await run(target, DeliveryPolicy(), events, max_inflight=3)
    assert sidecar.stats.delivered == 40 and target.peak == 3


class Held:
    """A target that holds every event until `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.started: list[str] = []

    async def invoke(self, event, timeout):
        self.started.append(event.id)
        await self.go.wait()


async def started_sidecar(target, events, max_inflight, log=None, ordered=False):
    log = log or MemoryEventLog()
    broker = Broker(log)
    queue = broker.subscribe("function:f", compile_shorthand({"type": "t"}), ordered=ordered)
    sidecar = Sidecar("function:f", "/fmesh/functions/f", queue, target, broker, DeliveryPolicy(), max_inflight)
    await broker.publish(events)
    sidecar.start()
    return sidecar, log


async def unclaimed(log) -> int:
    """How many of function:f's deliveries nobody has claimed (claimed here, then given back)."""
    free = await log.claim("function:f", 1000)
    await log.release([d.id for d in free])
    return len(free)


async def test_deliveries_are_claimed_ahead_of_a_free_slot_but_the_target_gets_no_more_than_allowed():
    # Under a backlog a slot that frees is filled from what was claimed ahead, not after a
    # claim's round trip through the store.
    target = Held()
    sidecar, log = await started_sidecar(target, [new_event("t", "/s") for _ in range(10)], max_inflight=2)
    await eventually(lambda: len(target.started) == 2)
    await eventually(lambda: len(sidecar._inflight) == 4)
    assert await unclaimed(log) == 6 and sidecar.stats.inflight == 2
    target.go.set()
    await eventually(lambda: sidecar.stats.delivered == 10)
    assert await log.pending("function:f") == 0
    await sidecar.stop()


async def test_a_stop_gives_back_what_was_claimed_ahead_at_once_and_lets_the_rest_finish():
    target = Held()
    sidecar, log = await started_sidecar(target, [new_event("t", "/s") for _ in range(10)], max_inflight=2)
    await eventually(lambda: len(sidecar._inflight) == 4)
    stopping = asyncio.ensure_future(sidecar.stop(grace=10))
    await eventually(lambda: len(sidecar._inflight) == 2)  # the two claimed ahead, released
    assert await unclaimed(log) == 8 and not stopping.done()
    target.go.set()
    await stopping
    assert sidecar.stats.delivered == 2 and len(target.started) == 2
    assert await log.pending("function:f") == 8


async def test_an_ack_waiting_for_the_store_does_not_hold_the_targets_slot():
    class SlowAcks(MemoryEventLog):
        def __init__(self) -> None:
            super().__init__()
            self.stored = asyncio.Event()

        async def ack(self, delivery_ids):
            await self.stored.wait()
            await super().ack(delivery_ids)

    log, target = SlowAcks(), Scripted()
    sidecar, _ = await started_sidecar(target, [new_event("t", "/s") for _ in range(3)], max_inflight=1, log=log)
    # The second went to the target while the first's ack waited; the third waits in the
    # log, as the window of claims is full (the one at the target and the one claimed ahead).
    await eventually(lambda: len(target.attempts) == 2)
    assert target.peak == 1 and sidecar.stats.delivered == 0 and await unclaimed(log) == 1
    log.stored.set()
    await eventually(lambda: sidecar.stats.delivered == 3)
    await sidecar.stop()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_an_ordered_keys_next_event_goes_once_the_one_before_is_acked(store, tmp_path):
    # Fewer keys than slots: the claim that found every key's head in flight waits, and the
    # ack of a head must wake it, not the claim's own timeout (seconds) after.
    log = MemoryEventLog() if store == "memory" else SqliteEventLog(tmp_path / "log.db")
    await log.open()
    target = Scripted()
    events = [new_event("t", "/s", {"n": n}, partitionkey=f"k{n % 2}") for n in range(6)]
    sidecar, _ = await started_sidecar(target, events, max_inflight=4, log=log, ordered=True)
    try:
        await eventually(lambda: sidecar.stats.delivered == 6, timeout=2.0)
    finally:
        await sidecar.stop()
        await log.close()
    for key in ("k0", "k1"):
        assert [i for i in target.attempts if i in {e.id for e in events if e["partitionkey"] == key}] == \
            [e.id for e in events if e["partitionkey"] == key]


async def test_a_retrying_event_does_not_hold_up_the_others():
    slow_to_succeed = new_event("t", "/s", {"n": 0})
    others = [new_event("t", "/s", {"n": i}) for i in range(1, 6)]

    class FailFirst(Scripted):
        async def invoke(self, event, timeout):
            if event.id == slow_to_succeed.id and self.attempts.get(event.id, 0) < 1:
                self.attempts[event.id] = 1
                raise HandlerError("later")
            return await super().invoke(event, timeout)

    target = FailFirst()
    sidecar, _, _ = await run(target, DeliveryPolicy(retries=1, delay=1.0), [slow_to_succeed, *others],
                              max_inflight=1, until=lambda s: s.delivered >= 5, timeout=0.9)
    assert sidecar.stats.delivered == 5  # all others delivered while the first waits out its 1 s backoff


async def test_data_replies_are_wrapped_and_published_with_a_hop_count():
    reply = ReplyData(b'{"ok":true}', "application/json")
    incoming = new_event("t", "/s")
    sidecar, log, broker = await run(Scripted(reply=reply), DeliveryPolicy(), [incoming])
    assert sidecar.stats.replies == 1
    [published] = await log.claim("replies", 10)
    out = published.event
    assert out["type"] == "t.reply" and out["source"] == "/fmesh/functions/f" and out["fmeshhops"] == 1
    assert out.data == {"ok": True} and out.id != incoming.id


async def test_replies_say_which_function_sent_them_whatever_the_handler_claims():
    forged = new_event("t.reply", "/f", fmeshsender="peer:trusted")
    for result in (ReplyData(b"{}", "application/json"), forged):
        _, log, _ = await run(Scripted(reply=result), DeliveryPolicy(), [new_event("t", "/s", fmeshsender="admin")])
        [published] = await log.claim("replies", 10)
        assert published.event["fmeshsender"] == "function:f"


async def test_backoff_grows_and_is_capped():
    policy = DeliveryPolicy(delay=1.0, max_delay=5.0)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 5), (10, 5)]:
        assert base * 0.5 <= policy.backoff_for(attempt) <= base
    linear = DeliveryPolicy(backoff="linear", delay=1.0)
    assert 1.5 <= linear.backoff_for(3) <= 3


# -- faults: none of these may end the sidecar or lose an event ------------------------------

async def test_a_failing_ack_is_retried_until_stored_and_the_sidecar_goes_on():
    log = FaultyEventLog(MemoryEventLog())
    log.fail("ack", times=3)
    events = [new_event("t", "/s") for _ in range(5)]
    sidecar, _, _ = await run(Scripted(), DeliveryPolicy(), events, log=log,
                              until=lambda s: s.delivered == 5)
    assert log.failed["ack"] == 3
    assert await log.pending("function:f") == 0  # every claim ended in a stored ack


async def test_a_failing_retry_is_retried_and_the_event_is_delivered_again():
    log = FaultyEventLog(MemoryEventLog())
    log.fail("retry", times=2)
    target = Scripted(failures=1)
    sidecar, _, _ = await run(target, DeliveryPolicy(retries=2, delay=0.01), [new_event("t", "/s")], log=log)
    assert log.failed["retry"] == 2
    assert sidecar.stats.delivered == 1 and sum(target.attempts.values()) == 2
    assert await log.pending("function:f") == 0


async def test_a_failing_dead_letter_is_retried_until_the_letter_is_stored():
    log = FaultyEventLog(MemoryEventLog())
    log.fail("dead_letter", times=2)
    sidecar, _, _ = await run(Scripted(failures=9), DeliveryPolicy(retries=0), [new_event("t", "/s")], log=log)
    assert log.failed["dead_letter"] == 2 and len(await log.dead_letters()) == 1
    assert await log.pending("function:f") == 0


async def test_a_claim_that_raises_anything_does_not_end_the_sidecar():
    log = FaultyEventLog(MemoryEventLog())

    async def break_claims(log):
        log.fail("claim", times=2, error=lambda: ValueError("a bug in the store"))

    sidecar, _, _ = await run(Scripted(), DeliveryPolicy(), [new_event("t", "/s")], log=log, before=break_claims)
    assert log.failed["claim"] == 2 and sidecar.stats.delivered == 1


async def test_an_event_that_breaks_the_mesh_itself_is_dead_lettered_with_the_reason():
    class Recursing(Scripted):
        async def invoke(self, event, timeout):
            if event.data == {"poison": True}:
                raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")
            return await super().invoke(event, timeout)

    events = [new_event("t", "/s", {"poison": True}), new_event("t", "/s", {"poison": False})]
    sidecar, log, _ = await run(Recursing(), DeliveryPolicy(retries=3, delay=0.01), events)
    [letter] = await log.dead_letters()
    assert letter.reason == "not retryable" and "RecursionError" in letter.error
    assert sidecar.stats.delivered == 1


async def test_an_undecodable_stored_event_is_dead_lettered_and_the_next_one_delivered(tmp_path):
    import sqlite3

    from fmesh.broker.sqlite_log import SqliteEventLog

    log = SqliteEventLog(tmp_path / "mesh.db")
    await log.open()

    async def poison(log):
        raw = sqlite3.connect(log.path, isolation_level=None)
        raw.execute("INSERT INTO deliveries(subscription, attributes, due_at) VALUES (?, ?, 0)",
                    ("function:f", b'{"specversion":"1.0","id":"p","source":"/s","type":"t","subject":"\\ud800"}'))
        raw.close()

    target = Scripted()
    sidecar, _, _ = await run(target, DeliveryPolicy(), [new_event("t", "/s")], log=log, before=poison)
    [letter] = await log.dead_letters()
    assert letter.reason == "undecodable" and "surrogate" in letter.error and letter.event.id == "p"
    assert sidecar.stats.delivered == 1 and "p" not in target.attempts
    await log.close()


async def test_a_hop_count_sent_from_outside_cannot_lengthen_a_reply_loop():
    from fmesh.errors import InvalidEvent
    from fmesh.events import checked_internal

    with pytest.raises(InvalidEvent, match="fmeshhops"):
        checked_internal({"fmeshhops": "-40"})
    assert checked_internal({"fmeshhops": "3"}) == {"fmeshhops": 3}


async def test_an_event_past_its_ttl_is_dead_lettered_instead_of_retried_for_ever():
    target = Scripted(failures=10**6, error=HandlerError("peer down", status=503))
    policy = DeliveryPolicy(retries=10**6, delay=0.05, max_delay=0.05, ttl=0.5)
    started = time.monotonic()
    sidecar, log, _ = await run(target, policy, [new_event("t", "/s")], timeout=5)
    [letter] = await log.dead_letters()
    assert letter.reason == "ttl expired" and "ttl of 0.5s" in letter.error and "peer down" in letter.error
    assert 0.4 < time.monotonic() - started < 3 and sum(target.attempts.values()) >= 3


async def test_a_long_handler_keeps_its_claim_alive_well_within_the_claim_ttl():
    log = MemoryEventLog()
    log.claim_ttl = 0.3  # as a JetStream store with a short ack wait
    extended = []
    real_extend = log.extend

    async def counting_extend(ids):
        extended.append(time.monotonic())
        await real_extend(ids)

    log.extend = counting_extend
    await run(Scripted(delay=1.0), DeliveryPolicy(retries=0), [new_event("t", "/s")], log=log)
    assert len(extended) >= 3  # every 0.1 s, not every 10 s


# -- what the sidecar says in the mesh's log ------------------------------------------------

def said(caplog, message: str) -> list[dict]:
    """The fields of each line the sidecar logged with `message`."""
    return [r.fmesh_fields for r in caplog.records if r.getMessage() == message]


async def test_a_dead_letter_is_logged_with_the_event_the_function_and_why(caplog):
    event = new_event("t", "/s")
    await run(Scripted(failures=99), DeliveryPolicy(retries=1, delay=0.01), [event])
    [retrying] = said(caplog, "delivery attempt failed; retrying")
    assert retrying["event_id"] == event.id and retrying["function"] == "f" and retrying["attempt"] == 1
    [dead] = said(caplog, "event dead-lettered")
    assert dead == {"event_id": event.id, "event_source": "/s", "event_type": "t", "subscription": "function:f",
                    "function": "f", "attempts": 2, "reason": "gave up after 2 attempts", "status": 500,
                    "error": "boom", "dead_letter": None}


async def test_a_reply_over_the_hop_limit_is_logged_as_dead_lettered_with_what_it_replied_to(caplog):
    incoming = new_event("t", "/s")
    await run(Scripted(reply=ReplyData(b"{}", "application/json")), DeliveryPolicy(max_hops=0), [incoming])
    [dead] = said(caplog, "event dead-lettered")
    assert dead["in_reply_to"] == incoming.id and dead["event_type"] == "t.reply" and "hop limit" in dead["reason"]


async def test_a_store_that_keeps_refusing_acks_is_said_once_not_per_attempt(caplog):
    log = FaultyEventLog(MemoryEventLog())
    log.fail("ack", times=3)
    await run(Scripted(), DeliveryPolicy(), [new_event("t", "/s") for _ in range(5)], log=log,
              until=lambda s: s.delivered == 5)
    [line] = said(caplog, "ack not stored yet; trying again")
    assert line["function"] == "f" and line["event_id"]
