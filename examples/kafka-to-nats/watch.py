"""Print what arrives on the NATS subject clicks.enriched, as CloudEvents (Ctrl-C to stop)."""

import asyncio

import nats

from fmesh.bindings.nats import read_message


async def main() -> None:
    client = await nats.connect("nats://127.0.0.1:4222")
    subscription = await client.subscribe("clicks.enriched")
    print("waiting on clicks.enriched ...", flush=True)
    try:
        async for message in subscription.messages:
            event = read_message(message.headers, message.data, f"message on {message.subject}")
            print({k: v for k, v in message.headers.items()}, flush=True)
            print(f"  -> {event['type']} {event['id']}: {event.data!r}", flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
