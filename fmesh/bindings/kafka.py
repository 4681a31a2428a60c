"""The CloudEvents Kafka binding, through the SDK's `cloudevents.core.bindings.kafka`.

A record is read as follows: any `ce_` header means binary mode; a `content-type`
header of `application/cloudevents...` means structured mode (the Kafka binding
requires that header for structured records); anything else is not a CloudEvent, and
the trigger wraps it (`wrap_record`). Binary-mode data stays byte-exact (RAW_FORMAT).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from cloudevents.core.bindings import kafka as sdk_kafka

from fmesh.bindings.common import canonical, canonical_booleans, from_millis, reading, text_or_base64, wrapped_event
from fmesh.bindings.json_format import JSON_FORMAT
from fmesh.events import RAW_FORMAT, Event, checked_time, from_sdk, strict_factory, to_sdk, to_sdk_decoded
from fmesh.tracecontext import message_context

KafkaMessage = sdk_kafka.KafkaMessage
STRUCTURED_PREFIX = "application/cloudevents"
TIME_HEADER = "ce_time"


class Record(Protocol):
    """What the binding needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Iterable[tuple[str, bytes]]


@dataclass(frozen=True)
class Wrapping:
    """How records that are not CloudEvents become events."""

    cluster: str                   # kafka://host:port, the start of each event's source
    type: str
    content_type: str | None = None


def header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, bytes]:
    return {name: value for name, value in headers if value is not None}


def content_type(headers: dict[str, bytes]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    return value.decode("utf-8", "replace") if value is not None else None


def is_cloudevent(headers: dict[str, bytes]) -> bool:
    if any(name.lower().startswith(sdk_kafka.CE_PREFIX) for name in headers):
        return True
    return (content_type(headers) or "").lower().startswith(STRUCTURED_PREFIX)


def read_record(record: Record) -> Event:
    """The CloudEvent in a record that is one (see `is_cloudevent`); InvalidEvent if broken."""
    headers = header_map(record.headers)
    message = KafkaMessage(headers=headers, key=record.key, value=record.value or b"")
    where = f"record {record_id(record)}"
    with reading(where):
        if (content_type(headers) or "").lower().startswith(STRUCTURED_PREFIX):
            return from_sdk(sdk_kafka.from_structured(message, JSON_FORMAT, strict_factory))
        return read_binary(message)


def read_binary(message: KafkaMessage) -> Event:
    """A binary-mode record; `time` is taken from its header as sent, not through a datetime."""
    time = next((value for name, value in message.headers.items() if name.lower() == TIME_HEADER), None)
    others = {name: value for name, value in message.headers.items() if name.lower() != TIME_HEADER}
    event = from_sdk(sdk_kafka.from_binary(KafkaMessage(others, message.key, message.value), RAW_FORMAT,
                                           strict_factory))
    if time is not None:
        event.attributes["time"] = checked_time(unquote(time.decode("utf-8")))
    return event


def wrap_record(record: Record, wrapping: Wrapping) -> Event:
    """A plain record as an event: the value bytes as data, the key as `partitionkey`."""
    headers = header_map(record.headers)
    return wrapped_event(
        id=record_id(record), source=f"{wrapping.cluster}/{record.topic}", type=wrapping.type,
        payload=record.value, content_type=content_type(headers) or wrapping.content_type,
        time=from_millis(record.timestamp),
        partitionkey=text_or_base64(record.key) if record.key is not None else None, **message_context(headers))


def record_id(record: Record) -> str:
    return f"{record.topic}-{record.partition}-{record.offset}"


def write_binary(event: Event) -> KafkaMessage:
    """`event` in binary mode: `ce_` headers, the payload bytes as the value, key = partitionkey."""
    return sdk_kafka.to_binary(canonical_booleans(to_sdk(event)), RAW_FORMAT, partition_key)


def write_structured(event: Event) -> KafkaMessage:
    """`event` in structured mode: the JSON event format as the value, key = partitionkey."""
    return sdk_kafka.to_structured(to_sdk_decoded(event), JSON_FORMAT, partition_key)


def partition_key(sdk_event: Any) -> str | None:
    value = sdk_event.get_attributes().get(sdk_kafka.PARTITIONKEY_ATTR)
    return None if value is None else canonical(value)

