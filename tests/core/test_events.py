from __future__ import annotations

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
