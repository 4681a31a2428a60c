"""The Kafka and NATS sinks, read back with plain aiokafka and nats-py clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from external import NatsServer, TansuBroker, free_port
from fmesh.runtime.sinks import open_sink

from fmesh.bindings.nats import read_message
from fmesh.errors import HandlerError
from fmesh.events import Event

EVENT = Event({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "com.shop.order",
               "time": "2024-05-01T12:00:00Z", "datacontenttype": "application/octet-stream",
               "subject": "order 1 €", "partitionkey": "customer-7"}, b"\x00\x01binary\xff")

TRACED = Event({**EVENT.attributes, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
               EVENT.payload)


def as_message(record) -> sdk_kafka.KafkaMessage:
    return sdk_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)


# -- Kafka -----------------------------------------------------------------------------


async def test_kafka_sink_produces_binary_mode_keyed_by_partitionkey(tansu, sinks, read_topic):
    sink = await sinks(f"kafka://{tansu.bootstrap}/out")
    assert await sink.invoke(EVENT, 10) is None
    (record,) = await read_topic(tansu.bootstrap, "out", 1)
    assert record.key == b"customer-7" and record.value == EVENT.payload
    parsed = sdk_kafka.from_binary(as_message(record), JSONFormat())
    assert (parsed.get_id(), parsed.get_type(), parsed.get_source()) == ("e-1", "com.shop.order", "/shop")
    assert parsed.get_extension("partitionkey") == "customer-7"
    assert dict(record.headers)["content-type"] == b"application/octet-stream"


async def test_kafka_sink_structured_mode(tansu, sinks, read_topic):
    sink = await sinks(f"kafka://{tansu.bootstrap}/structured", {"structured": True})
    await sink.invoke(EVENT, 10)
    (record,) = await read_topic(tansu.bootstrap, "structured", 1)
    assert dict(record.headers) == {"content-type": b"application/cloudevents+json"}
    parsed = sdk_kafka.from_structured(as_message(record), JSONFormat())
    assert parsed.get_data() == EVENT.payload and parsed.get_id() == "e-1"


async def test_kafka_sink_sends_the_hops_trace_context_as_a_header(tansu, sinks, read_topic):
    sink = await sinks(f"kafka://{tansu.bootstrap}/traced")
    await sink.invoke(TRACED, 10)
    (record,) = await read_topic(tansu.bootstrap, "traced", 1)
    headers = dict(record.headers)
    assert headers["ce_traceparent"] == TRACED["traceparent"].encode()
    assert headers["traceparent"].startswith(TRACED["traceparent"][:36].encode())  # the same trace
    assert headers["traceparent"] != headers["ce_traceparent"]


async def test_kafka_sink_unreachable_is_retryable_and_recovers(tmp_path, sinks, read_topic):
    broker = TansuBroker(tmp_path / "late", port=free_port())
    url = f"kafka://{broker.bootstrap}/late"
    sink = await sinks(url)  # start() does not fail while the cluster is down
    with pytest.raises(HandlerError) as error:
        await sink.invoke(EVENT, 1)
    assert error.value.retryable and url in str(error.value)
    broker.start()
    try:
        await sink.invoke(EVENT, 10)
        (record,) = await read_topic(broker.bootstrap, "late", 1)
        assert record.value == EVENT.payload
    finally:
        await sink.stop()
        broker.stop()


def test_kafka_sink_urls_need_a_topic():
    with pytest.raises(ValueError, match=r"kafka://127\.0\.0\.1:9092"):
        open_sink("kafka://127.0.0.1:9092")


# -- NATS ------------------------------------------------------------------------------


@pytest.fixture
async def reader(nats_server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_nats_sink_publishes_binary_mode_per_the_nats_binding(nats_server, reader, sinks):
    subscription = await reader.subscribe("orders.created")
    await reader.flush()
    sink = await sinks(f"{nats_server.url}/orders.created")
    await sink.invoke(TRACED, 5)
    message = await subscription.next_msg(timeout=5)
    assert message.headers["ce-id"] == "e-1"
    assert message.headers["ce-datacontenttype"] == "application/octet-stream"
    assert message.headers["ce-subject"] == "order%201%20%E2%82%AC"
    assert message.data == EVENT.payload
    assert read_message(message.headers, message.data, "m") == TRACED
    # the event's own trace context, and the hop's as a W3C header (the same trace, a new parent id)
    assert message.headers["ce-traceparent"] == TRACED["traceparent"]
    assert message.headers["traceparent"][:36] == TRACED["traceparent"][:36] != message.headers["traceparent"]


async def test_nats_sink_structured_mode(nats_server, reader, sinks):
    subscription = await reader.subscribe("structured")
    await reader.flush()
    sink = await sinks(f"{nats_server.url}/structured", {"structured": True})
    await sink.invoke(EVENT, 5)
    message = await subscription.next_msg(timeout=5)
    assert message.headers == {"Content-Type": "application/cloudevents+json"}
    assert JSONFormat().read(None, message.data).get_data() == EVENT.payload


async def test_nats_sink_jetstream_waits_for_the_ack_and_deduplicates(nats_server, reader, sinks):
    jetstream = reader.jetstream()
    await jetstream.add_stream(name="OUT", subjects=["out.>"])
    sink = await sinks(f"{nats_server.url}/out.events?jetstream=true")
    await sink.invoke(EVENT, 5)
    await sink.invoke(EVENT, 5)  # a retry of the same event
    info = await jetstream.stream_info("OUT")
    assert info.state.messages == 1
    stored = await jetstream.get_msg("OUT", 1)
    assert stored.headers["Nats-Msg-Id"] == "e-1@/shop" and stored.data == EVENT.payload


async def test_nats_sink_jetstream_without_a_stream_is_retryable(nats_server, sinks):
    sink = await sinks(f"{nats_server.url}/nowhere?jetstream=true")
    with pytest.raises(HandlerError, match="no JetStream stream stores subject nowhere") as error:
        await sink.invoke(EVENT, 2)
    assert error.value.retryable


async def test_nats_sink_unreachable_is_retryable_and_recovers(tmp_path, sinks):
    server = NatsServer(tmp_path / "late", port=free_port())
    url = f"{server.url}/late"
    sink = await sinks(url, {"nats": {"connect_timeout": "200ms", "reconnect_delay": "100ms"}})
    with pytest.raises(HandlerError) as error:
        await sink.invoke(EVENT, 1)
    assert error.value.retryable and url in str(error.value)
    server.start()
    try:
        client = await nats.connect(server.url)
        subscription = await client.subscribe("late")
        await client.flush()
        await sink.invoke(EVENT, 5)
        assert (await subscription.next_msg(timeout=5)).data == EVENT.payload
        await client.close()
    finally:
        await sink.stop()
        server.stop()


async def test_nats_sink_survives_a_server_restart(nats_server, sinks):
    sink = await sinks(f"{nats_server.url}/again", {"nats": {"reconnect_delay": "100ms"}})
    await sink.invoke(EVENT, 5)
    nats_server.restart()
    client = await nats.connect(nats_server.url)
    subscription = await client.subscribe("again")
    await client.flush()
    async with asyncio.timeout(20):
        while True:  # the sink says "retry" until its connection is back, as a sidecar would hear
            try:
                await sink.invoke(EVENT, 1)
                break
            except HandlerError as exc:
                assert exc.retryable
    assert (await subscription.next_msg(timeout=5)).data == EVENT.payload
    await client.close()


def test_nats_sink_urls_refuse_wildcards_and_inline_credentials():
    with pytest.raises(ValueError, match="wildcard"):
        open_sink("nats://127.0.0.1:4222/orders.>")
    with pytest.raises(ValueError, match="credentials"):
        open_sink("nats://user:pw@127.0.0.1:4222/orders")
