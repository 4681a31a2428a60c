"""Produce one record to the `clicks` topic: python produce.py '{"user": "ann", ...}' [key]."""

import asyncio
import sys

from aiokafka import AIOKafkaProducer


async def main(value: str, key: str | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait("clicks", value.encode(), key=key.encode() if key else None)
        print(f"produced to clicks partition {sent.partition} offset {sent.offset}")
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
