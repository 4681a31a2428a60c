"""The Kafka and NATS wire bindings, checked against the SDK and the binding specs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from fmesh.bindings import kafka as kafka_binding
from fmesh.bindings import nats as nats_binding
from fmesh.bindings.kafka import Wrapping, is_cloudevent, read_record, wrap_record
from fmesh.errors import InvalidEvent
from fmesh.events import Event

BINARY_PAYLOAD = bytes(range(256))


@dataclass
class Record:
    topic: str = "orders"
    partition: int = 2
    offset: int = 41
    timestamp: int = 1_700_000_000_123
    key: bytes | None = None
    value: bytes | None = b""
    headers: list = field(default_factory=list)


def sample(**extra) -> Event:
    return Event({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "com.shop.order",
                  "time": "2024-05-01T12:00:00Z", "datacontenttype": "application/octet-stream", **extra},
                 BINARY_PAYLOAD)


# -- Kafka -----------------------------------------------------------------------------


def test_kafka_binary_round_trip_keeps_bytes_and_uses_the_partition_key():
    message = kafka_binding.write_binary(sample(partitionkey="customer-7"))
    assert message.key == "customer-7"
    assert message.headers["ce_type"] == b"com.shop.order"
    assert message.headers["content-type"] == b"application/octet-stream"
    assert message.value == BINARY_PAYLOAD
    record = Record(key=message.key.encode(), value=message.value, headers=list(message.headers.items()))
    assert is_cloudevent(dict(record.headers))
    assert read_record(record) == sample(partitionkey="customer-7")


def test_kafka_binary_written_by_the_sdk_is_read():
    event = CloudEvent({"type": "com.x", "source": "/s", "id": "9"}, {"n": 1})
    message = sdk_kafka.to_binary(event, JSONFormat())
    record = Record(value=message.value, headers=list(message.headers.items()))
    read = read_record(record)
    assert (read.id, read.type, read.data) == ("9", "com.x", {"n": 1})


def test_kafka_structured_round_trip_through_the_sdk():
    message = kafka_binding.write_structured(sample(partitionkey="k"))
    assert message.headers == {"content-type": b"application/cloudevents+json"}
    parsed = sdk_kafka.from_structured(message, JSONFormat())
    assert parsed.get_data() == BINARY_PAYLOAD and parsed.get_id() == "e-1"
    record = Record(key=b"k", value=message.value, headers=list(message.headers.items()))
    assert read_record(record) == sample(partitionkey="k")


def test_kafka_booleans_are_written_as_cloudevents_spells_them():
    assert kafka_binding.write_binary(sample(urgent=True)).headers["ce_urgent"] == b"true"


def test_a_plain_record_is_wrapped_with_its_bytes_key_and_position():
    record = Record(key=b"user-1", value=b"\x00raw", headers=[("trace", b"x")])
    assert not is_cloudevent(dict(record.headers))
    event = wrap_record(record, Wrapping("kafka://127.0.0.1:9092", "dev.fmesh.kafka.message"))
    assert event.attributes == {
        "specversion": "1.0", "id": "orders-2-41", "source": "kafka://127.0.0.1:9092/orders",
        "type": "dev.fmesh.kafka.message", "time": "2023-11-14T22:13:20.123000Z", "partitionkey": "user-1"}
    assert event.payload == b"\x00raw"


def test_a_plain_record_from_an_instrumented_producer_keeps_its_trace_context():
    wrapping = Wrapping("kafka://h:1", "t")
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = wrap_record(Record(value=b"v", headers=[("traceparent", given.encode()), ("tracestate", b"k=v")]),
                         wrapping)
    assert (traced["traceparent"], traced["tracestate"]) == (given, "k=v")
    broken = wrap_record(Record(value=b"v", headers=[("traceparent", b"junk"), ("tracestate", b"k=v")]), wrapping)
    assert "traceparent" not in broken and "tracestate" not in broken  # a transport header: ignored, not refused
    bad_state = wrap_record(Record(value=b"v", headers=[("traceparent", given.encode()), ("tracestate", b"K")]),
                            wrapping)
    assert bad_state["traceparent"] == given and "tracestate" not in bad_state


def test_a_wrapped_record_takes_its_content_type_header_or_the_configured_one():
    wrapping = Wrapping("kafka://h:1", "t", content_type="text/csv")
    assert wrap_record(Record(value=b"a,b"), wrapping)["datacontenttype"] == "text/csv"
    with_header = Record(value=b"{}", headers=[("content-type", b"application/json")])
    assert wrap_record(with_header, wrapping)["datacontenttype"] == "application/json"


def test_a_binary_key_that_is_not_text_becomes_base64():
    event = wrap_record(Record(key=b"\xff\xfe", value=b"v"), Wrapping("kafka://h:1", "t"))
    assert event["partitionkey"] == "//4="


def test_a_broken_kafka_cloudevent_is_invalid_naming_the_record():
    record = Record(value=b"x", headers=[("ce_type", b"t"), ("ce_source", b"/s"), ("ce_specversion", b"1.0")])
    with pytest.raises(InvalidEvent, match=r"orders-2-41.*'id'"):
        read_record(record)
    structured = Record(value=b"{not json", headers=[("content-type", b"application/cloudevents+json")])
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        read_record(structured)


# -- NATS ------------------------------------------------------------------------------


def test_nats_header_values_are_percent_encoded_as_the_spec_example():
    assert nats_binding.encode_value("Euro \u20ac \U0001F600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert nats_binding.encode_value('a"b%c/d:e') == "a%22b%25c/d:e"
    assert nats_binding.decode_value("Euro%20%e2%82%ac") == "Euro \u20ac"
    assert nats_binding.decode_value('"quoted \\"x\\" value"') == 'quoted "x" value'


def test_nats_decoding_rejects_invalid_utf8():
    headers = {"ce-specversion": "1.0", "ce-id": "%C0%A0", "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(InvalidEvent, match="UTF-8"):
        nats_binding.read_message(headers, b"", "message on x")


def test_nats_binary_round_trip_maps_every_attribute_to_a_ce_header():
    event = sample(subject="Café order", urgent=True)
    headers, body = nats_binding.write_binary(event)
    assert headers["ce-datacontenttype"] == "application/octet-stream"
    assert headers["ce-subject"] == "Caf%C3%A9%20order"
    assert headers["ce-urgent"] == "true"
    assert "content-type" not in {k.lower() for k in headers}
    assert body == BINARY_PAYLOAD
    read = nats_binding.read_message(headers, body, "message on x")
    assert read == Event({**event.attributes, "urgent": "true"}, BINARY_PAYLOAD)


def test_nats_structured_round_trip_uses_the_sdk_json_format():
    event = Event({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                   "datacontenttype": "application/json"}, b'{"a":1}')
    headers, body = nats_binding.write_structured(event)
    assert headers == {"Content-Type": "application/cloudevents+json"}
    assert JSONFormat().read(None, body).get_data() == {"a": 1}
    assert nats_binding.read_message(headers, body, "m") == event


def test_nats_structured_without_headers_is_read_as_binding_1_0_2_sent_it():
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": "hi",
                       "datacontenttype": "text/plain"}).encode()
    assert nats_binding.read_message(None, body, "m") == Event(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "datacontenttype": "text/plain"}, b"hi")


def test_plain_nats_messages_are_not_cloudevents():
    assert nats_binding.read_message(None, b"21.5", "m") is None
    assert nats_binding.read_message({"Content-Type": "application/json"}, b'{"t": 1}', "m") is None


def test_a_broken_nats_cloudevent_is_invalid():
    with pytest.raises(InvalidEvent, match=r"message on a\.b.*'source'"):
        nats_binding.read_message({"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, b"", "message on a.b")
    with pytest.raises(InvalidEvent, match="time"):
        nats_binding.read_message({"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "/s",
                                   "ce-time": "yesterday"}, b"", "m")


def test_a_lone_surrogate_is_refused_by_the_kafka_and_nats_bindings():
    structured = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"\\ud800"}'
    record = Record(value=structured, headers=[("content-type", b"application/cloudevents+json")])
    with pytest.raises(InvalidEvent, match="subject.*not valid Unicode"):
        read_record(record)
    with pytest.raises(InvalidEvent, match="subject.*not valid Unicode"):
        nats_binding.read_message({}, structured, "message on x")
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-subject": "%ED%A0%80"}
    with pytest.raises(InvalidEvent, match="UTF-8"):
        nats_binding.read_message(headers, b"", "message on x")


def test_a_negative_hop_count_is_refused_by_the_kafka_and_nats_bindings():
    binary = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t"),
              ("ce_fmeshhops", b"-40")]
    with pytest.raises(InvalidEvent, match="fmeshhops"):
        read_record(Record(value=b"", headers=binary))
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-fmeshhops": "-40"}
    with pytest.raises(InvalidEvent, match="fmeshhops"):
        nats_binding.read_message(headers, b"", "message on x")


def test_a_malformed_trace_context_is_refused_by_the_kafka_and_nats_bindings():
    binary = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t"),
              ("ce_traceparent", b"00-0-0-01")]
    with pytest.raises(InvalidEvent, match="traceparent.*expected 00-"):
        read_record(Record(value=b"", headers=binary))
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-tracestate": "=x"}
    with pytest.raises(InvalidEvent, match="tracestate.*key=value") as caught:
        nats_binding.read_message(headers, b"", "message on x")
    assert caught.value.attribute == "tracestate"


def test_json_nested_too_deeply_is_invalid_not_a_crash_in_kafka_and_nats():
    deep = b'{"specversion":"1.0","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidEvent, match="nested too deeply"):
        read_record(Record(value=deep, headers=[("content-type", b"application/cloudevents+json")]))
    with pytest.raises(InvalidEvent, match="nested too deeply"):
        nats_binding.read_message({}, deep, "message on x")
