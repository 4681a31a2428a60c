"""The HTTP ingress, driven in-process over ASGI with the in-memory event log."""

from __future__ import annotations

import json

import httpx
import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.v1.event import CloudEvent
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog

BINARY = {"ce-id": "1", "ce-source": "/test", "ce-type": "com.example", "ce-specversion": "1.0"}


@pytest.fixture
async def setup():
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("sub", compile_shorthand({}))
    ingress = Ingress(broker.publish, max_event_bytes=1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress), base_url="http://mesh") as client:
        yield client, log


async def stored(log):
    return [d.event for d in await log.claim("sub", 100)]


async def test_binary_mode_is_stored_with_payload_bytes_untouched(setup):
    client, log = setup
    body = b'{ "spaced" :  true }'
    response = await client.post("/", headers={**BINARY, "content-type": "application/json", "ce-region": "eu%2Fwest"},
                                 content=body)
    assert response.status_code == 202 and response.json() == {"id": "1"}
    [event] = await stored(log)
    assert event.payload == body
    assert event["region"] == "eu/west"  # percent-decoded
    assert "time" not in event  # nothing added that the sender did not send


async def test_structured_mode_from_the_sdk(setup):
    client, log = setup
    sent = CloudEvent({"type": "com.example", "source": "/sdk", "subject": "s1"}, {"n": 1})
    message = sdk_http.to_structured_event(sent)
    response = await client.post("/", headers=message.headers, content=message.body)
    assert response.status_code == 202
    [event] = await stored(log)
    assert event.id == sent.get_id() and event["subject"] == "s1" and event.data == {"n": 1}


async def test_batch_mode_is_all_or_nothing(setup):
    client, log = setup
    good = {"specversion": "1.0", "id": "a", "source": "/s", "type": "t"}
    response = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                                 content=json.dumps([good, {**good, "id": "b"}]))
    assert response.status_code == 202 and response.json()["accepted"] == 2
    bad = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                            content=json.dumps([{**good, "id": "c"}, {"id": "d", "source": "/s"}]))
    assert bad.status_code == 400 and "batch item 1" in bad.json()["error"]
    assert [e.id for e in await stored(log)] == ["a", "b"]


@pytest.mark.parametrize(("missing", "attribute"), [
    ("ce-id", "id"), ("ce-source", "source"), ("ce-type", "type"), ("ce-specversion", "specversion")])
async def test_missing_required_attribute_is_400_naming_it(setup, missing, attribute):
    client, log = setup
    headers = {k: v for k, v in BINARY.items() if k != missing}
    response = await client.post("/", headers=headers, content=b"")
    assert response.status_code == 400
    assert response.json()["attribute"] == attribute
    assert f"missing required attribute '{attribute}'" in response.json()["error"]
    assert await stored(log) == []


async def test_wrong_specversion_is_400(setup):
    client, _ = setup
    response = await client.post("/", headers={**BINARY, "ce-specversion": "0.3"})
    assert response.status_code == 400 and "specversion" in response.json()["error"]


async def test_broken_structured_json_is_400(setup):
    client, _ = setup
    response = await client.post("/", headers={"content-type": "application/cloudevents+json"}, content=b'{"id": ')
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


async def test_bad_time_and_bad_extension_name_are_400(setup):
    client, _ = setup
    response = await client.post("/", headers={**BINARY, "ce-time": "yesterday"})
    assert response.status_code == 400 and response.json()["attribute"] == "time"
    response = await client.post("/", headers={"content-type": "application/cloudevents+json"},
                                 content=json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                                                     "Bad-Name": "x"}))
    assert response.status_code == 400 and "bad-name" in response.json()["error"].lower()


async def test_oversized_event_is_413(setup):
    client, log = setup
    response = await client.post("/", headers=BINARY, content=b"x" * 1025)
    assert response.status_code == 413 and "exceeds the limit of 1024 bytes" in response.json()["error"]
    assert await stored(log) == []


async def test_unreadable_content_type_is_415(setup):
    client, _ = setup
    response = await client.post("/", headers={"content-type": "text/plain"}, content=b"hello")
    assert response.status_code == 415 and "text/plain" in response.json()["error"]


async def test_only_post_is_allowed(setup):
    client, _ = setup
    response = await client.get("/")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


async def test_a_store_failure_is_503_and_not_acknowledged():
    from fmesh.errors import StoreError

    async def failing_publish(events):
        raise StoreError("disk full")

    transport = httpx.ASGITransport(app=Ingress(failing_publish))
    async with httpx.AsyncClient(transport=transport, base_url="http://mesh") as client:
        response = await client.post("/", headers=BINARY)
    assert response.status_code == 503 and "disk full" in response.json()["error"]


# -- strings that are not Unicode, and the mesh's own extensions --------------------------------

STRUCTURED = {"content-type": "application/cloudevents+json"}
LONE_SURROGATE = "\\ud800"  # the JSON escape of a lone UTF-16 surrogate: parses, but is no text


@pytest.mark.parametrize("attribute", ["subject", "id", "partitionkey", "source"])
async def test_a_lone_surrogate_in_a_structured_attribute_is_a_400_naming_it(setup, attribute):
    client, log = setup
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    body = json.dumps(event)[:-1] + f', "{attribute}": "{LONE_SURROGATE}"}}'
    response = await client.post("/", headers=STRUCTURED, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["attribute"] == attribute and "not valid Unicode" in response.json()["error"]
    assert await stored(log) == []


async def test_a_lone_surrogate_in_structured_data_or_a_batch_is_a_400(setup):
    client, log = setup
    event = '{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": {"a": "' + LONE_SURROGATE + '"}}'
    response = await client.post("/", headers=STRUCTURED, content=event)
    assert response.status_code == 400 and response.json()["attribute"] == "data"
    batch = '[{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "' + LONE_SURROGATE + '"}]'
    response = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"}, content=batch)
    assert response.status_code == 400 and "batch item 0" in response.json()["error"]
    assert await stored(log) == []


async def test_a_percent_encoded_header_that_is_not_utf8_is_a_400_naming_the_attribute(setup):
    client, log = setup
    response = await client.post("/", headers={**BINARY, "ce-subject": "%ED%A0%80"})  # a surrogate, UTF-8 encoded
    assert response.status_code == 400 and response.json()["attribute"] == "subject"
    assert await stored(log) == []


@pytest.mark.parametrize(("header", "value", "character"), [
    ("ce-id", "m14n%0d%0aX-Inj: 1", "U+000D"), ("ce-source", "/s%00", "U+0000"),
    ("ce-type", "com.example%1b[31m", "U+001B"), ("ce-subject", "a%C2%85b", "U+0085"),
    ("ce-region", "eu%0Awest", "U+000A")])
async def test_a_control_character_in_any_attribute_is_a_400_naming_it(setup, header, value, character):
    client, log = setup
    response = await client.post("/", headers={**BINARY, header: value})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["attribute"] == header[3:] and character in body["error"]
    structured = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "line\nbreak"}
    response = await client.post("/", headers=STRUCTURED, content=json.dumps(structured))
    assert response.status_code == 400 and response.json()["attribute"] == "subject"
    assert await stored(log) == []


async def test_a_batch_that_repeats_an_event_is_a_400_naming_both_items(setup):
    client, log = setup
    item = {"specversion": "1.0", "id": "b2", "source": "/x", "type": "t"}
    other_source = {**item, "source": "/y"}  # the same id from another source is another event
    response = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                                 content=json.dumps([item, other_source, item]))
    assert response.status_code == 400 and response.json()["attribute"] == "id"
    assert "batch item 2 repeats the source and id of item 0" in response.json()["error"]
    assert await stored(log) == []
    response = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                                 content=json.dumps([item, other_source]))
    assert response.status_code == 202 and response.json()["accepted"] == 2


@pytest.mark.parametrize("value", ["-40", "x", "1.5", "99999999999999"])
async def test_a_malformed_hop_count_from_outside_is_a_400(setup, value):
    client, log = setup
    response = await client.post("/", headers={**BINARY, "ce-fmeshhops": value})
    assert response.status_code == 400 and response.json()["attribute"] == "fmeshhops"
    structured = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "fmeshattempts": -1}
    response = await client.post("/", headers=STRUCTURED, content=json.dumps(structured))
    assert response.status_code == 400 and response.json()["attribute"] == "fmeshattempts"
    assert await stored(log) == []


async def test_a_well_formed_hop_count_is_kept_as_an_integer(setup):
    client, log = setup
    response = await client.post("/", headers={**BINARY, "ce-fmeshhops": "3"})
    assert response.status_code == 202
    [event] = await stored(log)
    assert event["fmeshhops"] == 3


async def test_json_nested_too_deeply_is_a_400_in_every_mode():
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("sub", compile_shorthand({}))
    transport = httpx.ASGITransport(app=Ingress(broker.publish, max_event_bytes=1024 * 1024))
    client = httpx.AsyncClient(transport=transport, base_url="http://mesh")
    deep = "[" * 100_000 + "]" * 100_000
    structured = '{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": ' + deep + "}"
    answer = await client.post("/", headers=STRUCTURED, content=structured)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    answer = await client.post("/", headers={"content-type": "application/cloudevents-batch+json"}, content=deep)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    assert await stored(log) == []
    await client.aclose()


async def test_raw_utf8_in_an_attribute_header_is_read_as_utf8(setup):
    client, log = setup
    response = await client.post("/", headers=[*BINARY.items(), ("ce-subject", "café".encode()),
                                               ("ce-region", "zürich".encode())])
    assert response.status_code == 202, response.text
    [event] = await stored(log)
    assert event["subject"] == "café" and event["region"] == "zürich"


async def test_raw_bytes_that_are_not_utf8_in_an_attribute_header_are_a_400_naming_it(setup):
    client, log = setup
    response = await client.post("/", headers=[*BINARY.items(), ("ce-subject", b"caf\xe9")])
    assert response.status_code == 400 and response.json()["attribute"] == "subject"
    assert "not UTF-8" in response.json()["error"] and "percent-encoded" in response.json()["error"]
    assert await stored(log) == []
