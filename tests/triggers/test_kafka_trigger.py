"""The Kafka trigger against a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from external import TansuBroker, free_port
from fmesh.triggers.config import KafkaTriggerConfig
from fmesh.triggers.kafka import KafkaTrigger

from fmesh.bindings.kafka import write_binary, write_structured
from fmesh.events import Event

HERE = Path(__file__).parent


def config(bootstrap: str, topic: str | list[str], **extra) -> KafkaTriggerConfig:
    fast = {"start": "earliest", "probe_interval": "200ms", "reconnect_delay": "100ms",
            "reconnect_max_delay": "1s", "session_timeout": "2s"}
    return KafkaTriggerConfig(bootstrap=bootstrap, topic=topic, **{**fast, **extra})


@pytest.fixture
async def running() -> AsyncIterator:
    """`running(trigger)` starts a trigger and stops it at the end of the test."""
    started: list[KafkaTrigger] = []

    async def run(trigger: KafkaTrigger) -> KafkaTrigger:
        await trigger.start()
        started.append(trigger)
        return trigger

    yield run
    for trigger in started:
        await trigger.stop()


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def test_plain_records_become_events_and_are_committed(tansu, producer, recorder, running,
                                                              eventually):
    sent = [await producer.send_and_wait("clicks", f"click {i}".encode(), key=b"user-1") for i in range(3)]
    trigger = await running(KafkaTrigger("clicks", config(tansu.bootstrap, "clicks"), recorder))
    events = await recorder.wait_for(3)
    partition = sent[0].partition
    assert [e.id for e in events] == [f"clicks-{partition}-{m.offset}" for m in sent]
    assert [e.payload for e in events] == [b"click 0", b"click 1", b"click 2"]
    assert {e.source for e in events} == {f"kafka://{tansu.bootstrap}/clicks"}
    assert {e.type for e in events} == {"dev.fmesh.kafka.message"}
    assert {e["partitionkey"] for e in events} == {"user-1"}
    tp = TopicPartition("clicks", partition)
    await eventually(lambda: trigger.status().lag == 0, what="lag 0")
    assert await committed(tansu.bootstrap, "fmesh.clicks", tp) == sent[-1].offset + 1
    status = trigger.status()
    assert (status.kind, status.state, status.events_in) == ("kafka", "connected", 3)
    assert status.last_event_at is not None and status.detail["group"] == "fmesh.clicks"


async def test_cloudevents_in_binary_and_structured_mode_are_taken_as_they_are(
        tansu, producer, recorder, running):
    event = Event({"specversion": "1.0", "id": "order-1", "source": "/shop", "type": "com.shop.order",
                   "datacontenttype": "application/octet-stream", "partitionkey": "c-9"}, b"\x00\x01\xff")
    for message in (write_binary(event), write_structured(event)):
        await producer.send_and_wait("orders", message.value, key=message.key.encode(),
                                     headers=list(message.headers.items()))
    by_sdk = sdk_kafka.to_binary(CloudEvent({"type": "com.sdk", "source": "/sdk", "id": "s-1"}, {"a": 1}),
                                 JSONFormat())
    await producer.send_and_wait("orders", by_sdk.value, headers=list(by_sdk.headers.items()))
    await running(KafkaTrigger("orders", config(tansu.bootstrap, "orders"), recorder))
    events = await recorder.wait_for(3)
    binary, structured = [e for e in events if e.id == "order-1"]
    (sdk,) = [e for e in events if e.id == "s-1"]
    assert binary == event and structured == event
    assert (sdk.type, sdk.source, sdk.data) == ("com.sdk", "/sdk", {"a": 1})


async def test_a_broken_cloudevent_is_wrapped_and_marked(tansu, producer, recorder, running, caplog):
    await producer.send_and_wait("bad", b"x", headers=[("ce_type", b"t"), ("ce_specversion", b"1.0")])
    trigger = await running(KafkaTrigger("bad", config(tansu.bootstrap, "bad"), recorder))
    (event,) = await recorder.wait_for(1)
    assert event.type == "dev.fmesh.kafka.message" and event.payload == b"x"
    assert "'id'" in event["fmeshinvalid"]
    assert trigger.status().detail["invalid"] == 1
    [said] = [r for r in caplog.records if "could not be read as a CloudEvent" in r.getMessage()]
    assert said.fmesh_fields["trigger"] == "bad" and said.fmesh_fields["event_id"] == event.id


async def test_several_topics_in_one_group(tansu, producer, recorder, running):
    await producer.send_and_wait("a-topic", b"a")
    await producer.send_and_wait("b-topic", b"b")
    await running(KafkaTrigger("ab", config(tansu.bootstrap, ["a-topic", "b-topic"]), recorder))
    events = await recorder.wait_for(2)
    assert sorted(e.payload for e in events) == [b"a", b"b"]


async def test_records_the_log_refuses_are_not_committed_and_come_again(tansu, producer, recorder,
                                                                         running):
    sent = await producer.send_and_wait("refused", b"keep me")
    recorder.refusals = 1_000_000
    first = await running(KafkaTrigger("refused", config(tansu.bootstrap, "refused"), recorder))
    await recorder.until(lambda: recorder.refused >= 2, what="two refused publishes")
    status = first.status()
    assert status.state == "retrying" and "event log refused" in status.last_error
    await first.stop()
    tp = TopicPartition("refused", sent.partition)
    assert await committed(tansu.bootstrap, "fmesh.refused", tp) is None
    recorder.refusals = 0
    await running(KafkaTrigger("refused", config(tansu.bootstrap, "refused"), recorder))
    (event,) = await recorder.wait_for(1)
    assert event.payload == b"keep me"


async def test_lag_counts_records_not_yet_committed(tansu, producer, recorder, running, eventually):
    await producer.send_and_wait("lagging", b"0", key=b"k")
    trigger = await running(KafkaTrigger("lagging", config(tansu.bootstrap, "lagging"), recorder))
    await recorder.wait_for(1)
    recorder.refusals = 1_000_000
    for i in range(4):
        await producer.send_and_wait("lagging", str(i).encode(), key=b"k")
    await eventually(lambda: trigger.status().lag == 4, what="lag 4")


async def test_an_unreachable_broker_is_retried_and_the_trigger_recovers(tmp_path, recorder, running,
                                                                           eventually):
    broker = TansuBroker(tmp_path / "late", port=free_port())
    trigger = await running(KafkaTrigger("late", config(broker.bootstrap, "late"), recorder))
    await eventually(lambda: trigger.status().last_error, what="an error")
    status = trigger.status()
    assert status.state == "retrying"
    assert f"kafka://{broker.bootstrap}" in status.last_error
    broker.start()
    try:
        await eventually(lambda: trigger.status().state == "connected", what="connected")
        async with with_producer(broker.bootstrap) as producer:
            await producer.send_and_wait("late", b"hello")
        (event,) = await recorder.wait_for(1)
        assert event.payload == b"hello"
    finally:
        await trigger.stop()
        broker.stop()


async def test_a_restarted_broker_is_reconnected_and_consumption_resumes(tansu, recorder, running,
                                                                          eventually):
    async with with_producer(tansu.bootstrap) as producer:
        await producer.send_and_wait("resume", b"before")
    trigger = await running(KafkaTrigger("resume", config(tansu.bootstrap, "resume"), recorder))
    await recorder.wait_for(1)
    tansu.kill()
    await eventually(lambda: trigger.status().state == "retrying", what="retrying")
    assert f"kafka://{tansu.bootstrap}" in trigger.status().last_error
    tansu.start()  # tansu keeps nothing: the topic and the group's offsets start over
    async with with_producer(tansu.bootstrap) as producer:
        await producer.send_and_wait("resume", b"after")
    await recorder.until(lambda: b"after" in [e.payload for e in recorder.events], what="the new record")
    await eventually(lambda: trigger.status().state == "connected", what="connected")


class with_producer:
    """A started producer for `async with`, stopped afterwards."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")

    async def __aenter__(self) -> AIOKafkaProducer:
        await self.producer.start()
        return self.producer

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()


# -- a killed process loses nothing ------------------------------------------------------


def stored_payloads(path: Path) -> set[bytes]:
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return {row[0] for row in db.execute("SELECT payload FROM deliveries")}
    except sqlite3.OperationalError:  # the schema is not there yet
        return set()


def start_consumer(bootstrap: str, topic: str, path: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, str(HERE / "kafka_to_sqlite.py"), bootstrap, topic, str(path)],
                                stdout=out, stderr=subprocess.STDOUT)


async def test_sigkill_while_consuming_loses_no_record(tansu, tmp_path, eventually):
    path, log = tmp_path / "mesh.db", tmp_path / "consumer.log"
    before = [f"before-{i}".encode() for i in range(3000)]
    after = [f"after-{i}".encode() for i in range(500)]
    async with with_producer(tansu.bootstrap) as producer:
        await produce_all(producer, before)
        process = start_consumer(tansu.bootstrap, "sigkill", path, log)
        try:
            await eventually(lambda: len(stored_payloads(path)) >= 300, timeout=60, interval=0.01,
                             what="300 stored records")
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert len(stored_payloads(path)) < len(before), "killed too late: nothing was in flight"
            await produce_all(producer, after)  # while no consumer runs
            process = start_consumer(tansu.bootstrap, "sigkill", path, log)
            await eventually(lambda: stored_payloads(path) >= {*before, *after}, timeout=60,
                             what=f"every record stored:\n{log.read_text()[-2000:]}")
        finally:
            process.kill()
            process.wait(10)


async def produce_all(producer: AIOKafkaProducer, payloads: list[bytes]) -> None:
    sent = [await producer.send("sigkill", payload, key=payload) for payload in payloads]
    await asyncio.gather(*sent)
