"""The NATS trigger against a real nats-server (core NATS and JetStream)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from external import NatsServer, free_port
from fmesh.triggers.config import NatsTriggerConfig
from fmesh.triggers.nats import NatsTrigger
from nats.aio.client import Client
from tls import make_tls

from fmesh.bindings.nats import write_binary, write_structured
from fmesh.events import Event

FAST = {"reconnect_delay": "100ms", "connect_timeout": "1s", "retry_delay": "50ms", "retry_max_delay": "200ms"}


def config(url: str, subject: str, **extra) -> NatsTriggerConfig:
    return NatsTriggerConfig(url=url, subject=subject, **{**FAST, **extra})


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


@pytest.fixture
async def running(eventually) -> AsyncIterator:
    """`await running(trigger)`: started, subscribed, and stopped at the end of the test."""
    started: list[NatsTrigger] = []

    async def run(trigger: NatsTrigger, subscribed: bool = True) -> NatsTrigger:
        await trigger.start()
        started.append(trigger)
        if subscribed:
            await eventually(lambda: trigger.status().detail.get("subscribed"), what="a subscription")
        return trigger

    yield run
    for trigger in started:
        await trigger.stop()


async def consumer_info(client: Client, stream: str, durable: str):
    return await client.jetstream().consumer_info(stream, durable)


async def test_core_messages_on_a_wildcard_subject_are_wrapped(nats_server, client, recorder, running):
    trigger = await running(NatsTrigger("sensors", config(nats_server.url, "sensors.>"), recorder))
    await client.publish("sensors.kitchen.temp", b"21.5", headers={"Content-Type": "text/plain"})
    await client.publish("sensors.hall", b"\x00\xff")
    kitchen, hall = await recorder.wait_for(2)
    assert kitchen.source == f"nats://127.0.0.1:{nats_server.port}/sensors.kitchen.temp"
    assert (kitchen.type, kitchen["datacontenttype"], kitchen.payload) == (
        "dev.fmesh.nats.message", "text/plain", b"21.5")
    assert hall.payload == b"\x00\xff" and "datacontenttype" not in hall
    assert kitchen.id != hall.id
    status = trigger.status()
    assert (status.kind, status.state, status.events_in) == ("nats", "connected", 2)


async def test_a_message_nested_too_deeply_is_wrapped_as_invalid_and_the_rest_go_on(
        nats_server, client, recorder, running):
    trigger = await running(NatsTrigger("deep", config(nats_server.url, "deep"), recorder))
    deep = b'{"specversion":"1.0","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (b"before", deep, b"after"):
        await client.publish("deep", body)
    before, poison, after = await recorder.wait_for(3)
    assert (before.payload, after.payload) == (b"before", b"after")
    assert "nested too deeply" in poison["fmeshinvalid"] and poison.payload == deep
    assert trigger.status().state == "connected"


async def test_cloudevents_in_binary_and_structured_mode(nats_server, client, recorder, running):
    await running(NatsTrigger("ce", config(nats_server.url, "ce"), recorder))
    event = Event({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "com.shop.order",
                   "datacontenttype": "application/json", "subject": "order 1"}, b'{"total":3}')
    for headers, body in (write_binary(event), write_structured(event)):
        await client.publish("ce", body, headers=headers)
    assert await recorder.wait_for(2) == [event, event]


async def test_a_queue_group_shares_messages_between_members(nats_server, client, recorder, running, eventually):
    other = type(recorder)()
    for name, publish in (("one", recorder), ("two", other)):
        await running(NatsTrigger(name, config(nats_server.url, "work", queue="workers"), publish))
    for i in range(40):
        await client.publish("work", str(i).encode())
    # Polled, not awaited on one recorder: the last message may reach either member.
    await eventually(lambda: len(recorder.events) + len(other.events) >= 40, what="40 messages")
    payloads = sorted(int(e.payload) for e in recorder.events + other.events)
    assert payloads == list(range(40))  # each message to exactly one member
    assert recorder.events and other.events


async def test_the_same_trigger_on_nodes_sharing_a_store_takes_each_message_once(nats_server, client, recorder,
                                                                                running, eventually):
    other = type(recorder)()
    for publish in (recorder, other):  # the same trigger deployed to two nodes, no queue named
        await running(NatsTrigger("orders", config(nats_server.url, "work"), publish, shared=True))
    for i in range(40):
        await client.publish("work", str(i).encode())
    await eventually(lambda: len(recorder.events) + len(other.events) >= 40, what="40 messages")
    assert sorted(int(e.payload) for e in recorder.events + other.events) == list(range(40))  # none twice


async def add_stream(client: Client, name: str = "ORDERS", subjects: list[str] | None = None) -> None:
    await client.jetstream().add_stream(name=name, subjects=subjects or ["orders.>"])


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_jetstream_messages_are_acked_once_published(nats_server, client, recorder, running,
                                                           eventually, mode):
    await add_stream(client)
    for i in range(5):
        await client.jetstream().publish(f"orders.{i}", f"order {i}".encode())
    jetstream = {"stream": "ORDERS", "mode": mode}
    await running(NatsTrigger("orders", config(nats_server.url, "orders.>", jetstream=jetstream), recorder))
    events = await recorder.wait_for(5)
    assert [e.id for e in events] == [f"ORDERS-{n}" for n in range(1, 6)]
    assert [e.payload for e in events] == [f"order {i}".encode() for i in range(5)]
    assert (await consumer_info(client, "ORDERS", "fmesh-orders")).config.ack_policy == "explicit"
    await eventually(lambda: acked_up_to(client, 5), what="all five acked")


async def test_jetstream_messages_the_log_refuses_are_not_acked_and_come_again(
        nats_server, client, recorder, running, eventually):
    await add_stream(client)
    await client.jetstream().publish("orders.1", b"keep me")
    recorder.refusals = 1_000_000
    trigger = await running(NatsTrigger("orders", config(nats_server.url, "orders.>", jetstream=True),
                                        recorder))
    await recorder.until(lambda: recorder.refused >= 2, what="two refused publishes")
    assert trigger.status().state == "retrying"
    assert "event log refused" in trigger.status().last_error
    info = await consumer_info(client, "ORDERS", "fmesh-orders")
    assert info.ack_floor.stream_seq == 0 and info.num_redelivered >= 1
    recorder.refusals = 0
    (event,) = await recorder.wait_for(1)
    assert (event.id, event.payload) == ("ORDERS-1", b"keep me")
    await eventually(lambda: acked_up_to(client, 1), what="the message acked")
    await eventually(lambda: trigger.status().state == "connected", what="connected again")


async def acked_up_to(client: Client, sequence: int) -> bool:
    info = await consumer_info(client, "ORDERS", "fmesh-orders")
    return (info.ack_floor.stream_seq, info.num_ack_pending) == (sequence, 0)


async def test_an_unreachable_server_is_retried_until_it_comes_up(tmp_path, recorder, running, eventually):
    server = NatsServer(tmp_path / "late", port=free_port())
    trigger = await running(NatsTrigger("late", config(server.url, "late"), recorder), subscribed=False)
    await eventually(lambda: trigger.status().last_error, what="an error")
    status = trigger.status()
    assert status.state == "retrying" and server.url in status.last_error
    server.start()
    try:
        await eventually(lambda: trigger.status().detail.get("subscribed"), what="subscribed")
        assert trigger.status().state == "connected"
        publisher = await nats.connect(server.url)
        await publisher.publish("late", b"hello")
        await publisher.close()
        (event,) = await recorder.wait_for(1)
        assert event.payload == b"hello"
    finally:
        await trigger.stop()
        server.stop()


@pytest.mark.parametrize("jetstream", [None, {"stream": "ORDERS"}], ids=["core", "jetstream"])
async def test_a_restarted_server_is_reconnected_and_consumption_resumes(nats_server, recorder, running,
                                                                          eventually, jetstream):
    publisher = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        if jetstream:
            await add_stream(publisher)
        trigger = await running(NatsTrigger("orders", config(nats_server.url, "orders.>", jetstream=jetstream),
                                            recorder))
        await publish(publisher, "orders.1", b"before", jetstream)
        await recorder.wait_for(1)
        nats_server.stop()
        await eventually(lambda: trigger.status().state == "retrying", what="retrying")
        assert nats_server.url in trigger.status().last_error
        nats_server.start()  # same port, same JetStream directory
        await eventually(lambda: trigger.status().state == "connected", what="reconnected")
        await eventually(lambda: publisher.is_connected, what="the publisher reconnected")
        await publisher.flush()
        await publish(publisher, "orders.2", b"after", jetstream)
        await recorder.until(lambda: b"after" in [e.payload for e in recorder.events], what="the new message")
    finally:
        await publisher.close()


async def publish(client: Client, subject: str, body: bytes, jetstream: object) -> None:
    if jetstream:
        await client.jetstream().publish(subject, body)
    else:
        await client.publish(subject, body)
        await client.flush()


async def test_token_and_user_password_come_from_the_environment(tmp_path, recorder, running, monkeypatch):
    monkeypatch.setenv("NATS_TOKEN", "s3cret")
    monkeypatch.setenv("NATS_USER", "alice")
    monkeypatch.setenv("NATS_PASSWORD", "pa55")
    cases = [(["--auth", "s3cret"], {"token_env": "NATS_TOKEN"}),
             (["--user", "alice", "--pass", "pa55"], {"user_env": "NATS_USER", "password_env": "NATS_PASSWORD"})]
    for index, (args, auth) in enumerate(cases):
        server = NatsServer(tmp_path / f"auth{index}", args=args).start()
        try:
            trigger = await running(NatsTrigger(f"auth{index}", config(server.url, "s", **auth), recorder))
            publisher = await nats.connect(server.url, **({"token": "s3cret"} if index == 0
                                                          else {"user": "alice", "password": "pa55"}))
            await publisher.publish("s", f"{index}".encode())
            await publisher.close()
            await recorder.wait_for(index + 1)
            await trigger.stop()
        finally:
            server.stop()


async def test_a_wrong_token_is_reported_as_retrying(tmp_path, recorder, running, eventually, monkeypatch):
    monkeypatch.setenv("NATS_TOKEN", "wrong")
    server = NatsServer(tmp_path / "auth", args=["--auth", "s3cret"]).start()
    try:
        trigger = await running(NatsTrigger("auth", config(server.url, "s", token_env="NATS_TOKEN"), recorder),
                                subscribed=False)
        await eventually(lambda: "uthorization" in (trigger.status().last_error or ""), what="auth error")
        assert trigger.status().state == "retrying" and server.url in trigger.status().last_error
    finally:
        await trigger.stop()
        server.stop()


async def test_tls_with_a_private_ca(tmp_path, recorder, running):
    files = make_tls(tmp_path / "tls")
    server = NatsServer(tmp_path / "tls-nats", args=["--tls", "--tlscert", str(files.server.cert),
                                                     "--tlskey", str(files.server.key)]).start()
    try:
        trigger = await running(NatsTrigger("tls", config(server.url, "secure", tls_ca=files.ca_file), recorder))
        publisher = await nats.connect(server.url, tls=trusting(files.ca_file))
        await publisher.publish("secure", b"over tls")
        await publisher.close()
        (event,) = await recorder.wait_for(1)
        assert event.payload == b"over tls"
        await trigger.stop()
    finally:
        server.stop()


def trusting(ca):
    import ssl
    return ssl.create_default_context(cafile=str(ca))
