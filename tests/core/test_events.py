from __future__ import annotations

import json

import pytest

from fmesh.bindings.http import read_events, write_binary, write_structured
from fmesh.durations import parse_duration
from fmesh.events import Event, decode_data, encode_data, new_event


@pytest.mark.parametrize(("text", "seconds"), [
    ("200ms", 0.2), ("5s", 5), ("1m30s", 90), ("2h", 7200), ("PT1S", 1), ("PT1M30S", 90), ("P1D", 86400),
    (3, 3), (0.5, 0.5), ("0", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5x", "PT", "-1s", "1.5.2s", True])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_event_offers_item_access_and_decoded_data():
    event = new_event("t", "/s", {"a": 1}, subject="x", region="eu")
    assert event["type"] == "t" and event["region"] == "eu" and event.get("nope") is None
    assert event.data == {"a": 1} and "region" in event


@pytest.mark.parametrize(("payload", "content_type", "data"), [
    (b'{"a": 1}', "application/json", {"a": 1}),
    (b'{"a": 1}', None, {"a": 1}),
    (b"plain", "text/plain", "plain"),
    (b"\xff\x00", "application/octet-stream", b"\xff\x00"),
    (b"not json", "application/json", "not json"),
    (None, "application/json", None),
])
def test_data_decodes_like_the_sdk(payload, content_type, data):
    assert decode_data(payload, content_type) == data


def test_encode_data():
    assert encode_data({"a": 1}, "application/json") == b'{"a":1}'
    assert encode_data("hi", "text/plain") == b"hi"
    assert encode_data("hi", "application/json") == b'"hi"'
    assert encode_data(b"\x00", None) == b"\x00"


@pytest.mark.parametrize("payload,content_type", [
    (b"\x00\x01\xfe\xff", "application/octet-stream"), (b"caf\xc3\xa9\n", "text/plain; charset=utf-8"),
    (b'{"k":[1,2]}', "application/json")])
def test_binary_and_structured_round_trips_keep_bytes(payload, content_type):
    event = Event({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "datacontenttype": content_type,
                   "time": "2026-01-02T03:04:05.123456Z", "count": 3, "flag": True}, payload)
    headers, body = write_binary(event)
    assert body == payload
    assert read_events({k.lower(): v for k, v in headers.items()}, body)[0].payload == payload
    headers, body = write_structured(event)
    back = read_events({k.lower(): v for k, v in headers.items()}, body)[0]
    assert back.payload == payload and back["count"] == 3 and back["flag"] is True


def test_format_duration_writes_what_people_write():
    from fmesh.durations import format_duration

    assert [format_duration(s) for s in (0.2, 1, 90, 3600, 86400, 90061)] == ["200ms", "1s", "1m30s", "1h", "1d",
                                                                               "1d1h1m1s"]


def test_encode_data_writes_what_json_lacks_in_its_json_form():
    import dataclasses
    import datetime
    import decimal
    import enum
    import pathlib
    import uuid

    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Point:
        x: int

    value = {"t": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "d": datetime.date(2026, 1, 2),
             "h": datetime.time(3, 4), "u": uuid.UUID(int=2), "n": decimal.Decimal("0.1"),
             "p": pathlib.PurePosixPath("/a/b"), "s": frozenset([1]), "e": Colour.RED, "pt": Point(3)}
    assert json.loads(encode_data(value, "application/json")) == {
        "t": "2026-01-02T03:04:05Z", "d": "2026-01-02", "h": "03:04:00", "u": "00000000-0000-0000-0000-000000000002",
        "n": "0.1", "p": "/a/b", "s": [1], "e": "red", "pt": {"x": 3}}


def test_encode_data_refuses_an_object_without_a_json_form_and_names_its_type():
    with pytest.raises(TypeError, match="cannot turn builtins.object into JSON data"):
        encode_data({"x": object()}, "application/json")


def test_encode_data_sorts_sets_names_classes_and_copies_no_dataclass_field():
    import dataclasses
    import datetime
    import threading

    @dataclasses.dataclass
    class Holder:
        lock: object

    assert encode_data({"s": {"b", "c", "a"}, "mixed": {1}}, None) == b'{"s":["a","b","c"],"mixed":[1]}'
    assert encode_data(datetime.datetime(2026, 1, 2, 3, 4), None) == b'"2026-01-02T03:04:00"'  # naive: no zone
    with pytest.raises(TypeError, match="cannot turn the class .*Holder into JSON data"):
        encode_data({"x": Holder}, None)
    with pytest.raises(TypeError, match="cannot turn _thread.lock into JSON data"):  # not a deep copy's error
        encode_data(Holder(threading.Lock()), None)


def test_binary_headers_already_read_as_text_pass_unchanged():
    """httpx (sinks, replies, the CLI's client) decodes header values as UTF-8 itself."""
    [event] = read_events({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t",
                           "ce-subject": "café €"}, b"")
    assert event["subject"] == "café €"
