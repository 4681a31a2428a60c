"""What the ingress refuses of a hostile or careless client, and what it keeps exactly:
size with headers counted, extension counts, nesting, integers, base64, content mode, time."""

from __future__ import annotations

import json

import httpx
import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog

from fmesh.bindings.http import write_binary, write_structured

BINARY = {"ce-id": "1", "ce-source": "/test", "ce-type": "com.example", "ce-specversion": "1.0"}
BASE = {"specversion": "1.0", "id": "1", "source": "/test", "type": "com.example"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


@pytest.fixture
async def setup():
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("sub", compile_shorthand({}))
    ingress = Ingress(broker.publish, max_event_bytes=64 * 1024, max_extensions=8)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress), base_url="http://mesh") as client:
        yield client, log


async def stored(log):
    return [d.event for d in await log.claim("sub", 100)]


async def test_ce_headers_count_towards_the_event_size(setup):
    client, log = setup
    answer = await client.post("/", headers={**BINARY, "ce-subject": "s" * 40_000}, content=b"x" * 30_000)
    assert answer.status_code == 413
    assert "exceeds the limit of 65536 bytes" in answer.json()["error"]
    assert await stored(log) == []
    assert (await client.post("/", headers={**BINARY, "ce-subject": "s" * 30_000}, content=b"x" * 30_000)
            ).status_code == 202


async def test_a_header_past_the_whole_limit_is_refused_before_the_body(setup):
    client, log = setup
    answer = await client.post("/", headers={**BINARY, "ce-subject": "s" * 70_000}, content=b"x")
    assert answer.status_code == 413 and answer.json()["limit"] == 65536


@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
async def test_more_extensions_than_allowed_is_a_413_in_every_mode(setup, mode):
    client, log = setup
    extensions = {f"x{i}": "v" for i in range(9)}
    if mode == "binary":
        answer = await client.post("/", headers={**BINARY, **{f"ce-{k}": v for k, v in extensions.items()}})
    elif mode == "structured":
        answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, **extensions}))
    else:
        answer = await client.post("/", headers=BATCH, content=json.dumps([BASE, {**BASE, **extensions}]))
    assert answer.status_code == 413
    assert answer.json()["error"] == "event has 9 extension attributes, more than the limit of 8"
    assert await stored(log) == []
    eight = {f"x{i}": "v" for i in range(8)}
    assert (await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, **eight}))).status_code == 202


@pytest.mark.parametrize("depth", [300, 990, 5000, 30_000])
@pytest.mark.parametrize("mode", ["structured", "batch"])
async def test_deep_nesting_is_a_400_that_says_so(setup, mode, depth):
    client, log = setup
    data = "[" * depth + "]" * depth
    event = '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + "}"
    body = event if mode == "structured" else f"[{event}]"
    answer = await client.post("/", headers=STRUCTURED if mode == "structured" else BATCH, content=body.encode())
    assert answer.status_code == 400
    assert "nested too deeply: data may nest at most 256 levels" in answer.json()["error"]


async def test_data_nested_within_the_limit_is_kept(setup):
    client, log = setup
    data = "[" * 256 + "]" * 256
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "data": json.loads(data)}))
    assert answer.status_code == 202
    [event] = await stored(log)
    assert json.loads(event.payload) == json.loads(data)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63, 10**40])
async def test_integers_outside_the_cloudevents_range_are_refused(setup, value):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "count": value}))
    assert answer.status_code == 400 and answer.json()["attribute"] == "count"
    assert "outside the CloudEvents Integer range" in answer.json()["error"]


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0])
async def test_integers_inside_the_range_stay_integers(setup, value):
    client, log = setup
    assert (await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "count": value}))).status_code == 202
    [event] = await stored(log)
    assert event["count"] == value and type(event["count"]) is int


@pytest.mark.parametrize("value", ["!!!!", "aGVsbG8", "aGVsbG8=x", 12, None])
async def test_invalid_data_base64_is_a_400(setup, value):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "data_base64": value}))
    if value is None:  # null is "no data"
        assert answer.status_code == 202
        return
    assert answer.status_code == 400 and answer.json()["attribute"] == "data_base64"
    assert await stored(log) == []


async def test_data_and_data_base64_together_are_refused(setup):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "data": 1, "data_base64": "AA=="}))
    assert answer.status_code == 400 and "not both" in answer.json()["error"]


async def test_base64_with_line_breaks_is_read(setup):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "data_base64": "aGVs\nbG8="}))
    assert answer.status_code == 202
    [event] = await stored(log)
    assert event.payload == b"hello"


async def test_the_content_type_decides_structured_mode_over_stray_ce_headers(setup):
    client, log = setup
    answer = await client.post("/", headers={**STRUCTURED, "ce-id": "stray", "ce-type": "stray"},
                               content=json.dumps({**BASE, "id": "real", "data": {"n": 1}}))
    assert answer.status_code == 202 and answer.json() == {"id": "real"}
    [event] = await stored(log)
    assert event.type == "com.example" and event.data == {"n": 1}


TIMES = ["2026-01-01T00:00:00.734Z", "2026-01-01T00:00:00.123456789Z", "2016-12-31T23:59:60Z",
         "2026-06-01t12:00:00+05:30", "2026-02-28T23:00:00-00:00", "0001-01-01T00:00:00Z",
         "2026-01-01T00:00:00." + "1" * 30 + "Z"]


@pytest.mark.parametrize("time", TIMES)
@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
async def test_time_is_kept_exactly_as_sent_and_written_on_unchanged(setup, mode, time):
    client, log = setup
    if mode == "binary":
        answer = await client.post("/", headers={**BINARY, "ce-time": time})
    elif mode == "structured":
        answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "time": time}))
    else:
        answer = await client.post("/", headers=BATCH, content=json.dumps([{**BASE, "time": time}]))
    assert answer.status_code == 202, answer.text
    [event] = await stored(log)
    assert event["time"] == time
    assert write_binary(event)[0]["ce-time"] == time
    assert json.loads(write_structured(event)[1])["time"] == time


@pytest.mark.parametrize("time", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z",
                                  "2026-01-01T24:00:00Z", "2026-01-01T00:00:61Z", "2026-01-01 00:00:00Z",
                                  "2026-01-01T00:00:00", "2026-01-01T00:00:00+25:00", "²026-01-01T00:00:00Z",
                                  "yesterday", "\uff12\uff10\uff12\uff16-01-01T00:00:00Z"])
async def test_a_time_that_is_not_rfc3339_is_a_400_naming_time(setup, time):
    client, log = setup
    for answer in [await client.post("/", headers={**BINARY, "ce-time": time.encode("utf-8")}),
                   await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "time": time}))]:
        assert answer.status_code == 400 and answer.json()["attribute"] == "time", answer.text


async def test_a_time_that_is_not_a_string_is_a_400(setup):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "time": 1700000000}))
    assert answer.status_code == 400 and answer.json()["attribute"] == "time"


@pytest.mark.parametrize("data", ["NaN", "[Infinity, -Infinity]", "1e999999", "-1e400"])
async def test_what_python_reads_but_json_has_not_is_a_400(setup, data):
    client, log = setup
    body = '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + "}"
    for headers, content in [(STRUCTURED, body), (BATCH, f"[{body}]")]:
        answer = await client.post("/", headers=headers, content=content)
        assert answer.status_code == 400 and "is not valid JSON" in answer.json()["error"], answer.text


async def test_an_integer_too_long_to_read_is_a_400_in_plain_words(setup):
    client, log = setup
    body = '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + "9" * 5000 + "}"
    answer = await client.post("/", headers=STRUCTURED, content=body)
    assert answer.status_code == 400 and "a number too long to read" in answer.json()["error"]


@pytest.mark.parametrize("depth", [257, 5000])
async def test_binary_json_data_nested_too_deep_is_a_400(setup, depth):
    client, log = setup
    body = ("[" * depth + "]" * depth).encode()
    answer = await client.post("/", headers={**BINARY, "content-type": "application/json"}, content=body)
    assert answer.status_code == 400 and answer.json()["attribute"] == "data"
    assert await stored(log) == []


async def test_binary_data_that_is_not_json_or_within_the_depth_is_kept_as_sent(setup):
    client, log = setup
    for body in [b"[" * 300, b"[" * 256 + b"]" * 256, b"{not json"]:
        answer = await client.post("/", headers={**BINARY, "content-type": "application/json"}, content=body)
        assert answer.status_code == 202
        assert (await stored(log))[-1].payload == body


async def test_a_datacontenttype_that_cannot_be_a_header_is_a_400(setup):
    client, log = setup
    answer = await client.post("/", headers=STRUCTURED, content=json.dumps({**BASE, "datacontenttype": "text/\u00e9"}))
    assert answer.status_code == 400 and answer.json()["attribute"] == "datacontenttype"
