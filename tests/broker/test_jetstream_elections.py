"""Writes on JetStream wait out a stream with no leader, as a cluster has for a moment when
it has just started or lost the server that led the stream: the write finds no responder
(NoStreamResponseError), and is tried again for a few seconds rather than failing. Here a
real nats-server's stream is taken away (or answers for some subjects only) for half a
second, which answers a write the same way."""

from __future__ import annotations

import asyncio

import nats
from fmesh.broker.jetstream.engine import DUPLICATE_WINDOW
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from fmesh.events import new_event


async def test_a_state_write_waits_for_its_stream_to_answer_again(jetstream):
    store = await jetstream.store()
    state = store.state
    assert await state.put("mesh/id", b"first") > 0
    bucket = state.engine.names.state
    client = await nats.connect(jetstream.server.url)
    try:
        js = client.jetstream()
        await js.delete_stream(f"KV_{bucket}")  # no stream answers on the bucket's subjects now

        async def back_in_half_a_second() -> None:
            await asyncio.sleep(0.5)
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))

        returning = asyncio.ensure_future(back_in_half_a_second())
        assert await state.create("mesh/id", b"second") > 0
        await returning
        assert (await state.get("mesh/id")).value == b"second"
    finally:
        await client.close()


async def test_appended_deliveries_wait_for_their_stream_and_are_stored_once(jetstream):
    """The deliveries stream answers for subscription a's subjects only, then for all: a
    batch for a and b is stored whole, each delivery once (a's found their stream at
    once and are not sent again)."""
    store = await jetstream.store()
    names = store.log.engine.names
    client = await nats.connect(jetstream.server.url)
    try:
        js = client.jetstream()

        def deliveries(subjects: list[str]) -> StreamConfig:
            return StreamConfig(name=names.deliveries, subjects=subjects, retention=RetentionPolicy.WORK_QUEUE,
                                storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW)

        await js.delete_stream(names.deliveries)
        await js.add_stream(deliveries([names.delivery_subject("function:a")]))

        async def all_subjects_in_half_a_second() -> None:
            await asyncio.sleep(0.5)
            await js.update_stream(deliveries([names.delivery_subjects]))

        widening = asyncio.ensure_future(all_subjects_in_half_a_second())
        events = [new_event("t", "/s", {"i": i}) for i in range(20)]
        await store.log.append([(event, ["function:a", "function:b"]) for event in events])
        await widening
        assert (await js.stream_info(names.deliveries)).state.messages == 40
        for sub in ("function:a", "function:b"):
            claimed = await store.log.claim(sub, 100)
            assert sorted(d.event.data["i"] for d in claimed) == list(range(20))
    finally:
        await client.close()
