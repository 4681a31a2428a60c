"""A Kafka trigger publishing into a SQLite event log until it is killed.

Run by test_kafka_trigger.py as a separate process, so the test can SIGKILL it in the
middle of consuming and check, after a restart on the same file, that no record was lost.

    python kafka_to_sqlite.py <bootstrap> <topic> <sqlite file>
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from fmesh.broker.sqlite_log import SqliteEventLog
from fmesh.triggers.config import KafkaTriggerConfig
from fmesh.triggers.kafka import KafkaTrigger

from fmesh.events import Event

SUBSCRIPTION = "function:sink"


async def main(bootstrap: str, topic: str, path: str) -> None:
    log = SqliteEventLog(path)
    await log.open()

    async def publish(events: Sequence[Event]) -> None:
        await log.append([(event, [SUBSCRIPTION]) for event in events])

    config = KafkaTriggerConfig(bootstrap=bootstrap, topic=topic, start="earliest", batch_size=10,
                                group="sigkill-test", session_timeout="2s")
    trigger = KafkaTrigger("sigkill", config, publish)
    await trigger.start()
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
