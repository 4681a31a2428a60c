"""The Kafka trigger: a consumer group whose records become events.

Offsets are committed by hand, and only after the batch they close is durably
published, so a killed mesh loses no record (it may publish some twice; the event id
`topic-partition-offset` of a wrapped record, or the record's own CloudEvent id, lets
consumers drop the duplicates). While the cluster cannot be reached the trigger keeps
retrying with capped backoff and reports state "retrying" with the URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError
from fmesh.triggers.base import Publish, StatusTracker
from fmesh.triggers.config import KafkaTriggerConfig
from fmesh.triggers.kafka_client import client_options
from fmesh.triggers.retry import BackgroundTrigger, Backoff, publish_until_stored

from fmesh.bindings.common import as_invalid, describe
from fmesh.bindings.kafka import Wrapping, is_cloudevent, read_record, wrap_record
from fmesh.errors import BrokerUnreachable, StoreError
from fmesh.events import Event

FETCH_WAIT_MS = 500
REQUEST_TIMEOUT = 10.0      # a commit, start or stop that takes longer means the cluster is gone
UNREACHABLE = (KafkaConnectionError, OSError, TimeoutError)

Batch = Mapping[TopicPartition, Sequence[ConsumerRecord]]


class KafkaTrigger(BackgroundTrigger):
    """`Trigger` over one consumer group on one or more topics."""

    kind = "kafka"

    def __init__(self, name: str, config: KafkaTriggerConfig, publish: Publish) -> None:
        self.name = name
        self.config = config
        self.group = config.group or f"fmesh.{name}"
        self._publish = publish
        self._options = client_options(config, f"triggers.{name}.kafka")
        self._wrapping = Wrapping(config.url, config.type, config.content_type)
        self._status = StatusTracker(name, self.kind)
        self._status.detail.update(topics=list(config.topics), group=self.group)
        self._committed: dict[TopicPartition, int] = {}
        self._unreachable_since: float | None = None
        self._store_refusing = False
        self._probe_timeout = min(REQUEST_TIMEOUT, max(1.0, 5 * config.probe_interval))
        self._task: asyncio.Task | None = None

    def _description(self) -> str:
        return f"kafka trigger {self.name} ({self.config.url})"

    def _restart_backoff(self) -> Backoff:
        return Backoff(self.config.reconnect_delay, self.config.reconnect_max_delay)

    # -- connecting and reconnecting -----------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.config.reconnect_delay, self.config.reconnect_max_delay)
        while True:
            consumer = self._consumer()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await consumer.start()
                backoff.reset()
                await self._consume(consumer)
            except (KafkaError, *UNREACHABLE) as exc:
                self._status.retrying(self._describe(exc))
            finally:
                await self._close(consumer)
            await backoff.wait()

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self.config.topics, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset=self.config.start, max_poll_records=self.config.batch_size,
            session_timeout_ms=round(self.config.session_timeout * 1000),
            heartbeat_interval_ms=round(self.config.session_timeout * 1000 / 3), **self._options)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await asyncio.shield(consumer.stop())
        except (KafkaError, *UNREACHABLE):
            pass  # leaving the group failed: the cluster will expire our membership

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, BrokerUnreachable):
            return str(exc)
        if isinstance(exc, UNREACHABLE):
            return str(BrokerUnreachable(self.config.url, describe(exc)))
        return f"{self.config.url}: {describe(exc)}"

    # -- consuming -----------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch and publish; beside it, probe lag and reachability (even while a publish waits)."""
        self._status.connected()
        self._unreachable_since = None
        self._committed.clear()
        loops = [asyncio.create_task(self._fetch_loop(consumer)), asyncio.create_task(self._probe_loop(consumer))]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in done:
                loop.result()  # re-raise what ended it
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _fetch_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=self.config.batch_size)
            if any(batch.values()):
                await self._publish_batch(batch)
                await self._commit(consumer, batch)

    async def _probe_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._probe(consumer)
            await asyncio.sleep(self.config.probe_interval)

    async def _publish_batch(self, batch: Batch) -> None:
        events = [self._to_event(record) for records in batch.values() for record in records]
        backoff = Backoff(self.config.reconnect_delay, self.config.reconnect_max_delay)
        await publish_until_stored(self._publish, events, backoff, self._store_failed)
        self._store_refusing = False
        self._status.connected()
        self._status.received(len(events))

    def _store_failed(self, error: StoreError) -> None:
        self._store_refusing = True
        self._status.retrying(f"event log refused {self.config.url} records: {error}")

    def _to_event(self, record: ConsumerRecord) -> Event:
        if not is_cloudevent(dict(record.headers)):
            return wrap_record(record, self._wrapping)
        try:
            return read_record(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the trigger
            error = as_invalid(exc, f"record {record.topic}-{record.partition}-{record.offset}")
            return self._status.invalid(wrap_record(record, self._wrapping), error)

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced away: whoever owns the partitions now reads these records again.
            self._status.count("commit_failed")
            self._status.detail["last_commit_error"] = describe(exc)
            return
        self._committed.update(offsets)

    # -- status --------------------------------------------------------------------------

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Measure lag, which doubles as a check that the cluster still answers."""
        partitions = sorted(consumer.assignment())
        try:
            async with asyncio.timeout(self._probe_timeout):
                ends = await consumer.end_offsets(partitions) if partitions else {}
                lag = await self._lag(consumer, ends)
                if not partitions:
                    await consumer.topics()
        except (KafkaError, *UNREACHABLE) as exc:
            self._unreachable(exc)
            return
        self._unreachable_since = None
        if not self._store_refusing:
            self._status.connected()
        self._status.set_lag(lag)
        self._status.detail["partitions"] = len(partitions)

    def _unreachable(self, exc: BaseException) -> None:
        """aiokafka reconnects by itself; a consumer that stays cut off is rebuilt."""
        self._status.retrying(self._describe(exc))
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since > self.config.reconnect_max_delay:
            raise BrokerUnreachable(self.config.url, f"no answer for {now - self._unreachable_since:.0f}s")

    async def _lag(self, consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> int:
        lag = 0
        for tp, end in ends.items():
            if tp not in self._committed:
                committed = await consumer.committed(tp)
                if committed is None:
                    continue  # nothing committed yet: no lag to speak of
                self._committed[tp] = committed
            lag += max(0, end - self._committed[tp])
        return lag
