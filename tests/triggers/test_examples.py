"""The examples' trigger and sink settings, run through the real adapters."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nats
import yaml
from aiokafka import AIOKafkaProducer
from fmesh.broker.memory_state import MemoryState
from fmesh.runtime.sinks import open_sink
from fmesh.triggers.clock import ManualClock
from fmesh.triggers.config import TriggerEntry
from fmesh.triggers.registry import build_trigger

from fmesh.bindings.nats import read_message
from fmesh.events import Event

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def manifest(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name / "fmesh.yaml").read_text())


def handler(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handle


def test_every_example_trigger_validates():
    for name in ("kafka-to-nats", "cron"):
        for entry in manifest(name)["triggers"].values():
            TriggerEntry.model_validate(entry)


async def test_kafka_to_nats_carries_a_record_to_the_subject(tansu, nats_server, recorder):
    spec = manifest("kafka-to-nats")
    trigger_config = spec["triggers"]["clicks"]["kafka"] | {"bootstrap": tansu.bootstrap, "session_timeout": "2s"}
    reply_to = spec["functions"]["enrich"]["reply_to"].replace("nats://127.0.0.1:4222", nats_server.url)
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
    await producer.start()
    await producer.send_and_wait("clicks", b'{"user": "ann", "url": "https://shop.example/pricing?x=1"}', key=b"ann")
    await producer.stop()
    trigger = build_trigger("clicks", TriggerEntry.model_validate({"kafka": trigger_config}), recorder,
                            MemoryState())
    await trigger.start()
    try:
        (event,) = await recorder.wait_for(1)
    finally:
        await trigger.stop()
    reply_data = handler("kafka-to-nats")(event)
    assert reply_data == {"user": "ann", "page": "/pricing", "record": event.id}
    reply = Event({"specversion": "1.0", "id": "r-1", "source": "/fmesh/functions/enrich",
                   "type": f"{event.type}.reply", "datacontenttype": "application/json"},
                  json.dumps(reply_data).encode())
    client = await nats.connect(nats_server.url)
    subscription = await client.subscribe("clicks.enriched")
    await client.flush()
    sink = open_sink(reply_to)
    await sink.start()
    try:
        await sink.invoke(reply, 5)
        message = await subscription.next_msg(timeout=5)
    finally:
        await sink.stop()
        await client.close()
    assert read_message(message.headers, message.data, "m").data == reply_data


async def test_the_cron_example_ticks_into_its_handler(recorder, capsys):
    config = TriggerEntry.model_validate(manifest("cron")["triggers"]["heartbeat"])
    clock = ManualClock(1_700_000_001.0)
    trigger = build_trigger("heartbeat", config, recorder, MemoryState(), clock)
    await trigger.start()
    try:
        clock.set(await clock.next_sleeper())
        (event,) = await recorder.wait_for(1)
    finally:
        await trigger.stop()
    handler("cron")(event)
    assert "tick heartbeat-2023-11-14T22:13:30Z" in capsys.readouterr().out
