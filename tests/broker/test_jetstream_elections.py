"""State writes on JetStream wait out a stream with no leader, as a cluster has for a moment
when it has just started or lost the server that led the stream: the write finds no
responder (NoStreamResponseError), and is tried again for a few seconds rather than failing.
Here a real nats-server's state stream is taken away for half a second, which answers a
write the same way."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import KeyValueConfig


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
