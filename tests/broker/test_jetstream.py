"""What is JetStream's own: many processes on one store, claims that lapse, state kept by
the server, store URLs. (The contract suites run on JetStream too.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from external import NatsServer
from fmesh.broker.jetstream.options import parse_store_url
from fmesh.broker.stores import open_store
from nats.js.errors import NotFoundError

from fmesh.contracts import DeadLetter
from fmesh.errors import StoreError
from fmesh.events import new_event

WAIT = 10.0  # the longest a claim here waits for what should come


def events(count: int, **attributes) -> list:
    return [new_event("t", "/s", {"i": i}, **attributes) for i in range(count)]


async def until_waiting(log, subscription: str, count: int) -> None:
    """Until `count` claims wait on the server for the subscription's consumer (bounded)."""
    names = log.engine.names
    deadline = time.monotonic() + WAIT
    while True:
        try:
            info = await log.engine.js.consumer_info(names.deliveries, names.consumer(subscription))
            if info.num_waiting >= count:
                return
        except NotFoundError:
            pass  # not made yet: the first claim makes it
        assert time.monotonic() < deadline, f"{count} claims never waited on {subscription}"
        await asyncio.sleep(0.02)


async def test_two_processes_share_a_subscription_and_never_hold_the_same_delivery(jetstream):
    a, b = (await jetstream.store()).log, (await jetstream.store()).log
    await a.append([(e, ["function:f"]) for e in events(40)])
    mine = await a.claim("function:f", 10)
    theirs = await b.claim("function:f", 100)
    assert len(mine) == 10 and len(theirs) == 30
    assert not {d.event.data["i"] for d in mine} & {d.event.data["i"] for d in theirs}
    await a.ack([d.id for d in mine])
    await b.ack([d.id for d in theirs])
    assert await a.pending("function:f") == 0


async def test_claims_waiting_in_two_processes_are_both_woken_by_appends_from_a_third(jetstream):
    a, b, c = [(await jetstream.store()).log for _ in range(3)]
    waiting = [asyncio.create_task(log.claim("function:f", 10, wait=WAIT)) for log in (a, b)]
    await until_waiting(c, "function:f", 2)
    started = time.monotonic()
    for event in events(2):
        await c.append([(event, ["function:f"])])
    got = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    assert sorted(len(claimed) for claimed in got) == [1, 1]
    assert got[0][0].event.data != got[1][0].event.data
    assert time.monotonic() - started < 2


async def test_a_claim_not_acked_goes_to_another_process_after_the_ack_wait(jetstream):
    a, b = (await jetstream.store(ack_wait="1s")).log, (await jetstream.store(ack_wait="1s")).log
    await a.append([(new_event("t", "/s", {"n": 1}), ["function:f"])])
    [held] = await a.claim("function:f", 10)
    assert await b.claim("function:f", 10) == []  # A holds it
    started = time.monotonic()
    [again] = await b.claim("function:f", 10, wait=WAIT)  # A "died": its claim lapses
    assert again.id == held.id and again.attempts == 0  # a lapsed claim is no attempt
    assert 0.5 < time.monotonic() - started < 5


async def test_extend_keeps_a_claim_past_the_ack_wait(jetstream):
    a, b = (await jetstream.store(ack_wait="1s")).log, (await jetstream.store(ack_wait="1s")).log
    await a.append([(new_event("t", "/s"), ["function:f"])])
    [held] = await a.claim("function:f", 1)
    for _ in range(5):
        await a.extend([held.id])
        assert await b.claim("function:f", 1, wait=0.4) == []
    await a.ack([held.id])
    assert await b.pending("function:f") == 0


async def test_attempts_and_the_last_error_survive_closing_and_reopening(jetstream):
    first = await jetstream.store()
    await first.log.append([(new_event("t", "/s"), ["function:f"])])
    [delivery] = await first.log.claim("function:f", 1)
    await first.log.retry(delivery, 0.2, "boom")
    await first.close()

    second = await jetstream.store()
    [again] = await second.log.claim("function:f", 1, wait=WAIT)
    assert (again.id, again.attempts, again.last_error) == (delivery.id, 1, "boom")
    await second.log.release([again.id])  # released: no attempt
    [same] = await second.log.claim("function:f", 1, wait=WAIT)
    assert (same.attempts, same.last_error) == (1, "boom")
    await second.log.retry(same, 0.1, "bang")
    await second.close()

    third = await jetstream.store()
    [last] = await third.log.claim("function:f", 1, wait=WAIT)
    assert (last.attempts, last.last_error) == (2, "bang")
    await third.log.ack([last.id])
    assert await third.log.pending("function:f") == 0


async def test_ordered_keys_go_one_at_a_time_across_processes(jetstream):
    a, b = (await jetstream.store()).log, (await jetstream.store()).log
    keyed = [new_event("t", "/s", {"i": i}, partitionkey="order-1") for i in range(3)]
    await a.append([(e, ["function:f"]) for e in keyed] + [(new_event("t", "/s", {"i": "free"}), ["function:f"])])
    [head, free] = await a.claim("function:f", 10, ordered=True)
    assert (head.event.data["i"], free.event.data["i"]) == (0, "free")
    assert await b.claim("function:f", 10, ordered=True) == []  # the key's head is held by A
    await a.ack([head.id])
    [next_one] = await b.claim("function:f", 10, ordered=True, wait=WAIT)
    assert next_one.event.data["i"] == 1


async def test_a_cancelled_claim_claims_nothing(jetstream):
    log = (await jetstream.store()).log
    waiting = asyncio.create_task(log.claim("function:f", 10, wait=WAIT))
    await until_waiting(log, "function:f", 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await log.append([(new_event("t", "/s"), ["function:f"])])
    started = time.monotonic()
    [delivery] = await log.claim("function:f", 10, wait=WAIT)  # not stuck with the cancelled one
    assert time.monotonic() - started < 2
    await log.ack([delivery.id])


async def test_a_subscription_can_change_between_ordered_and_not(jetstream):
    log = (await jetstream.store()).log
    await log.append([(e, ["function:f"]) for e in events(3, partitionkey="k")])
    [first] = await log.claim("function:f", 10, ordered=True)
    await log.ack([first.id])
    unordered = await log.claim("function:f", 10)  # the manifest dropped `ordering: ordered`
    assert [d.event.data["i"] for d in unordered] == [1, 2]


async def test_dropping_a_subscription_forgets_its_deliveries_and_it_can_come_back(jetstream):
    log = (await jetstream.store()).log
    await log.append([(e, ["function:f", "function:g"]) for e in events(3)])
    await log.claim("function:f", 1)
    await log.drop_subscription("function:f")
    assert (await log.pending("function:f"), await log.pending("function:g")) == (0, 3)
    await log.append([(new_event("t", "/s", {"i": "new"}), ["function:f"])])
    assert [d.event.data["i"] for d in await log.claim("function:f", 10)] == ["new"]


async def test_dead_letters_purge_by_age_and_subscription_and_count_per_subscription(jetstream):
    log = (await jetstream.store()).log
    for sub, failed_at in (("a", 10.0), ("a", 20.0), ("b", 15.0), ("a", 5.0)):
        await log.append([(new_event("t", "/s"), [sub])])
        [delivery] = await log.claim(sub, 1)
        await log.dead_letter(delivery, DeadLetter(0, sub, delivery.event, 1, "gave up", None, "boom", failed_at))
    assert await log.count_dead_letters() == {"a": 3, "b": 1}
    assert await log.purge_dead_letters("a", before=12.0) == 2  # 10 and 5: not the oldest ones only
    assert sorted(d.failed_at for d in await log.dead_letters()) == [15.0, 20.0]
    assert await log.purge_dead_letters(before=16.0) == 1
    assert await log.purge_dead_letters("a") == 1
    assert await log.count_dead_letters() == {}


async def test_dead_letters_are_read_in_pages(jetstream, monkeypatch):
    from fmesh.broker.jetstream import dead_letters

    monkeypatch.setattr(dead_letters, "PAGE", 3)
    log = (await jetstream.store()).log
    await log.append([(e, ["sub"]) for e in events(7)])
    for delivery in await log.claim("sub", 10):
        await log.dead_letter(delivery, DeadLetter(0, "sub", delivery.event, 1, "gave up", None, None, 1.0))
    assert [d.event.data["i"] for d in await log.dead_letters("sub")] == list(range(7))
    assert len(await log.dead_letters(limit=5)) == 5


async def test_state_written_by_one_process_is_watched_by_another(jetstream):
    a, b = await jetstream.store(), await jetstream.store()
    changes = a.state.watch("deployed/")
    try:
        first = asyncio.ensure_future(anext(changes))
        revision = await b.state.put("deployed/function/f", b"{}")
        change = await asyncio.wait_for(first, WAIT)
        assert (change.key, change.value, change.revision) == ("deployed/function/f", b"{}", revision)
    finally:
        await changes.aclose()
    await a.blobs.put("bundle-1", b"code")
    assert await b.blobs.get("bundle-1") == b"code"


async def test_state_keys_keep_dots_equals_signs_and_partial_prefixes(jetstream):
    state = (await jetstream.store()).state
    await state.put("a/b.c=d", b"1")
    await state.put("a/b", b"2")
    await state.put("a/bx/y", b"3")
    await state.put("ab", b"4")
    assert list(await state.list("a/b")) == ["a/b", "a/b.c=d", "a/bx/y"]
    assert (await state.get("a/b.c=d")).value == b"1"
    with pytest.raises(ValueError, match="not a state key"):
        await state.put("a//b", b"x")


async def test_a_bridged_event_taken_by_two_processes_at_once_is_stored_once(jetstream):
    a, b = (await jetstream.store()).log, (await jetstream.store()).log
    event = new_event("t", "/s")
    stored = await asyncio.gather(a.append_unique([(event, ["sub"])], ["key"], 600),
                                  b.append_unique([(event, ["sub"])], ["key"], 600))
    assert sorted(stored) == [[False], [True]]
    assert await a.pending("sub") == 1


async def test_many_processes_make_the_same_mesh_at_once(jetstream):
    stores = await asyncio.gather(*(jetstream.store() for _ in range(4)))
    await stores[0].log.append([(e, ["function:f"]) for e in events(8)])
    claimed = await asyncio.gather(*(s.log.claim("function:f", 2, ordered=False) for s in stores))
    assert sorted(d.event.data["i"] for c in claimed for d in c) == list(range(8))
    await asyncio.gather(*(s.state.put(f"node/{i}", b"up") for i, s in enumerate(stores)))
    assert len(await stores[0].state.list("node/")) == 4


async def test_a_store_whose_server_is_gone_says_so_quickly(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    store = open_store(f"{server.url}?cluster=gone", tmp_path)
    await store.open()
    try:
        await store.log.append([(new_event("t", "/s"), ["sub"])])
        server.kill()
        started = time.monotonic()
        with pytest.raises(StoreError, match="not connected|TimeoutError"):
            for _ in range(50):   # until the client notices the connection is gone (bounded)
                await store.log.append([(new_event("t", "/s"), ["sub"])])
                await asyncio.sleep(0.05)
        assert time.monotonic() - started < 8
    finally:
        await store.close()
        server.stop()


async def test_a_store_that_cannot_connect_fails_to_open(tmp_path):
    from external import free_port

    store = open_store(f"nats://127.0.0.1:{free_port()}?connect_timeout=0.5s", tmp_path)
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()


def test_store_urls_take_the_nats_triggers_connection_options(monkeypatch):
    monkeypatch.setenv("STORE_TOKEN", "s3cret")
    options = parse_store_url("nats://n1:4222,n2:4222?cluster=prod&replicas=3&ack_wait=1m&token_env=STORE_TOKEN")
    assert options.url == ["nats://n1:4222", "nats://n2:4222"]
    assert (options.cluster, options.replicas, options.ack_wait, options.token_env) == ("prod", 3, 60.0,
                                                                                          "STORE_TOKEN")
    assert (parse_store_url("nats://n1:4222").cluster, parse_store_url("nats://n1:4222").replicas) == ("fmesh", 1)


@pytest.mark.parametrize(("url", "says"), [
    ("nats://n1:4222?colour=blue", "colour"),
    ("nats://n1:4222?cluster=a.b", "cluster"),
    ("nats://n1:4222?replicas=0", "replicas"),
    ("nats://n1:4222?cluster=a&cluster=b", "given twice"),
    ("nats://user:pw@n1:4222", "without credentials"),
    ("nats://n1:4222/subject", "expected nats://host:port"),
    ("nats://n1:4222?user_env=U", "user_env and password_env go together"),
])
def test_a_bad_store_url_is_a_value_error_that_says_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_store_url(url)


def test_a_missing_secret_fails_when_the_store_is_made(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_TOKEN"):
        open_store("nats://127.0.0.1:4222?token_env=NO_SUCH_TOKEN", tmp_path)


@pytest.fixture
def nats_cluster(tmp_path):
    """Three nats-servers routed into one JetStream cluster on loopback ports."""
    from external import free_port

    routes = [free_port() for _ in range(3)]
    servers = []
    for i, route in enumerate(routes):
        others = ",".join(f"nats://127.0.0.1:{p}" for p in routes if p != route)
        servers.append(NatsServer(tmp_path / f"nats{i}", args=[
            "--server_name", f"n{i}", "--cluster_name", "fmesh-test", "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", others]))
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


async def test_a_three_server_cluster_keeps_everything_when_one_server_dies(nats_cluster, tmp_path):
    urls = ",".join(f"127.0.0.1:{s.port}" for s in nats_cluster)
    store = open_store(f"nats://{urls}?cluster=r3&replicas=3", tmp_path)
    await store.open()
    try:
        await store.log.append([(e, ["function:f"]) for e in events(20)])
        revision = await store.state.put("deployed/function/f", b"{}")
        await store.blobs.put("bundle", b"code")
        [victim] = [s for s in nats_cluster if s.port != _connected_port(store)][:1]
        victim.kill()  # not the server this client talks to: the client stays connected
        # While the survivors elect new leaders for what the victim led, requests may time
        # out (StoreError): the caller tries again, and nothing that was stored is gone.
        claimed = await until_stored(lambda: store.log.claim("function:f", 100, wait=1))
        while len(claimed) < 20:
            claimed += await until_stored(lambda: store.log.claim("function:f", 100, wait=1))
        assert sorted(d.event.data["i"] for d in claimed) == list(range(20))
        await until_stored(lambda: store.log.ack([d.id for d in claimed]))
        assert (await until_stored(lambda: store.state.get("deployed/function/f"))).revision == revision
        assert await until_stored(lambda: store.blobs.get("bundle")) == b"code"
        await until_stored(lambda: store.log.append([(new_event("t", "/s"), ["function:f"])]))
    finally:
        await store.close()


async def until_stored(operation, timeout: float = 30.0):
    """`operation()`, tried again while the store answers StoreError (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await operation()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _connected_port(store) -> int:
    return store.log.engine.client.connected_url.port


async def test_a_message_that_is_no_event_is_handed_out_marked_undecodable(jetstream):
    log = (await jetstream.store()).log
    await log.engine.js.publish(log.engine.names.delivery_subject("function:f", "u"), b"\xff not a record")
    [delivery] = await log.claim("function:f", 1)
    assert delivery.undecodable and delivery.event.type == "dev.fmesh.undecodable"
    await log.ack([delivery.id])


@pytest.mark.parametrize("payload", [None, b"", b"line\nand\nmore\n", b"\x00\xff"])
def test_records_keep_the_payload_byte_exact(payload):
    from fmesh.broker.jetstream.records import decode, encode

    from fmesh.events import Event

    event = Event({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, payload)
    meta, back, undecodable = decode(encode({"id": "d1", "at": 1.5}, event), "test")
    assert (meta, back.attributes, back.payload, undecodable) == ({"id": "d1", "at": 1.5}, event.attributes,
                                                                  payload, None)


def test_subscription_names_become_valid_tokens_and_back():
    from fmesh.broker.jetstream.names import token, untoken

    for name in ("function:resize", "bridge:eu-1", "subscription:a.b c/d", "é_x>*"):
        assert all(c.isalnum() or c in "-_" for c in token(name)) and untoken(token(name)) == name
