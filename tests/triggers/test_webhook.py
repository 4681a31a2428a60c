"""The HTTP webhook trigger, called through its ASGI app."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fmesh.triggers.clock import ManualClock
from fmesh.triggers.config import HttpTriggerConfig
from fmesh.triggers.webhook import WebhookTrigger

from fmesh.bindings.http import write_binary, write_structured
from fmesh.errors import TriggerConfigError
from fmesh.events import Event

NOW = 1_700_000_000.0
SECRET = "It's a Secret to Everybody"


@pytest.fixture
async def hook(recorder, monkeypatch) -> AsyncIterator[Callable]:
    """`hook(**config)`: a started webhook trigger at /hooks/test and a client for it."""
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("HOOK_TOKEN", "token-1")
    monkeypatch.setenv("HOOK_TOKEN_2", "token-2")
    clients: list[httpx.AsyncClient] = []

    async def make(**config) -> tuple[WebhookTrigger, httpx.AsyncClient]:
        trigger = WebhookTrigger("test", HttpTriggerConfig(path="/hooks/test", **config), recorder,
                                 ManualClock(NOW))
        await trigger.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=trigger.app), base_url="http://mesh")
        clients.append(client)
        return trigger, client

    yield make
    for client in clients:
        await client.aclose()


def github_signature(body: bytes, secret: str = SECRET) -> str:
    """As GitHub documents it: sha256= and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_a_plain_request_is_wrapped_with_its_bytes_and_content_type(hook, recorder):
    trigger, client = await hook()
    body = b"\x89PNG\r\n\x1a\n\x00binary"
    response = await client.post("/hooks/test", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 202
    (event,) = recorder.events
    assert response.json() == {"id": event.id}
    assert (event.type, event.source, event["datacontenttype"], event.payload) == (
        "dev.fmesh.webhook", "/hooks/test", "image/png", body)
    assert trigger.status().events_in == 1 and trigger.status().kind == "http"


async def test_type_and_id_come_from_the_configured_headers(hook, recorder):
    _, client = await hook(type_header="X-GitHub-Event", type_prefix="com.github.", id_header="X-GitHub-Delivery",
                           source="https://github.com/acme/shop")
    headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
               "content-type": "application/json"}
    await client.post("/hooks/test", content=b'{"action":"opened"}', headers=headers)
    await client.post("/hooks/test", content=b"{}", headers={"content-type": "application/json"})
    with_headers, without = recorder.events
    assert (with_headers.type, with_headers.id, with_headers.source) == (
        "com.github.pull_request", "72d3162e-cc78-11e3-81ab-4c9367dc0958", "https://github.com/acme/shop")
    assert with_headers.data == {"action": "opened"}
    assert without.type == "dev.fmesh.webhook" and without.id != with_headers.id


async def test_header_values_are_read_as_the_utf8_they_were_sent_in(hook, recorder):
    """Raw UTF-8 in the type header became `cafÃ©` (ASGI's one character per byte); bytes that
    are not UTF-8 at all were stored that way too. Now the first is `café`, the second a 400."""
    _, client = await hook(type_header="X-Event", type_prefix="com.shop.")
    response = await client.post("/hooks/test", content=b"{}", headers=[(b"x-event", "café".encode())])
    assert response.status_code == 202 and recorder.events[0].type == "com.shop.café"
    response = await client.post("/hooks/test", content=b"{}", headers=[(b"x-event", b"caf\xe9")])
    assert response.status_code == 400 and "header x-event holds bytes that are not UTF-8" in response.json()["error"]
    assert len(recorder.events) == 1


async def test_json_nested_past_the_ingress_depth_is_a_400_as_at_the_ingress(hook, recorder):
    _, client = await hook()
    deep = b"[" * 300 + b"]" * 300
    response = await client.post("/hooks/test", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]
    as_text = await client.post("/hooks/test", content=deep, headers={"content-type": "text/plain"})
    assert as_text.status_code == 202 and len(recorder.events) == 1  # not JSON: its bytes, as sent


async def test_a_cloudevent_is_taken_as_it_is(hook, recorder):
    _, client = await hook()
    event = Event({"specversion": "1.0", "id": "c-1", "source": "/crm", "type": "com.crm.lead",
                   "datacontenttype": "application/json"}, b'{"name":"Ada"}')
    for headers, body in (write_binary(event), write_structured(event)):
        response = await client.post("/hooks/test", content=body, headers=headers)
        assert response.json() == {"id": "c-1"}
    assert recorder.events == [event, event]


async def test_an_invalid_cloudevent_is_refused_with_400(hook, recorder):
    _, client = await hook()
    response = await client.post("/hooks/test", content=b"x", headers={"ce-specversion": "1.0", "ce-type": "t"})
    assert response.status_code == 400 and "'id'" in response.json()["error"]
    assert recorder.events == []


async def test_a_github_signature_is_checked_over_the_raw_body(hook, recorder):
    trigger, client = await hook(auth={"hmac_secret_env": "HOOK_SECRET"})
    body = b'{"zen":"Keep it logically awesome."}'
    good = await client.post("/hooks/test", content=body,
                             headers={"X-Hub-Signature-256": github_signature(body)})
    assert good.status_code == 202
    for headers in ({"X-Hub-Signature-256": github_signature(body, "wrong secret")},
                    {"X-Hub-Signature-256": github_signature(body + b" ")},
                    {"X-Hub-Signature-256": github_signature(body)[len("sha256="):]},
                    {"X-Hub-Signature-256": "sha256=not-hex"},
                    {}):
        response = await client.post("/hooks/test", content=body, headers=headers)
        assert response.status_code == 401, headers
        assert "error" in response.json()
    assert len(recorder.events) == 1
    assert trigger.status().detail["refused_unauthorized"] == 5


async def test_a_timestamped_signature_covers_timestamp_dot_body_and_refuses_replays(hook, recorder):
    _, client = await hook(auth={"hmac_secret_env": "HOOK_SECRET", "hmac_header": "X-Signature",
                                 "hmac_prefix": "v1=", "timestamp_header": "X-Timestamp",
                                 "timestamp_tolerance": "5m"})
    body = b"payload"

    def signed(timestamp: int, signed_body: bytes = body) -> dict[str, str]:
        digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + signed_body, hashlib.sha256).hexdigest()
        return {"X-Timestamp": str(timestamp), "X-Signature": f"v1={digest}"}

    fresh = await client.post("/hooks/test", content=body, headers=signed(int(NOW) - 60))
    assert fresh.status_code == 202
    replayed = await client.post("/hooks/test", content=body, headers=signed(int(NOW) - 301))
    future = await client.post("/hooks/test", content=body, headers=signed(int(NOW) + 301))
    body_only = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    unbound = await client.post("/hooks/test", content=body,
                                headers={"X-Timestamp": str(int(NOW)), "X-Signature": f"v1={body_only}"})
    moved = {**signed(int(NOW) - 60), "X-Timestamp": str(int(NOW))}  # timestamp changed after signing
    tampered = await client.post("/hooks/test", content=body, headers=moved)
    missing = await client.post("/hooks/test", content=body, headers={"X-Signature": signed(int(NOW))["X-Signature"]})
    assert [r.status_code for r in (replayed, future, unbound, tampered, missing)] == [401] * 5
    assert "replayed" in replayed.json()["error"]
    assert len(recorder.events) == 1


@pytest.mark.parametrize("timestamp", ["\u00b2".encode(), b"9" * 5000, b"1e9", b"+1700000000", b"-5", b""])
async def test_a_webhook_timestamp_that_is_not_a_few_ascii_digits_is_401_not_500(hook, recorder, timestamp):
    _, client = await hook(auth={"hmac_secret_env": "HOOK_SECRET", "hmac_header": "X-Signature",
                                 "timestamp_header": "X-Timestamp"})
    response = await client.post("/hooks/test", content=b"payload",
                                 headers={"X-Timestamp": timestamp, "X-Signature": "sha256=00"})
    assert response.status_code == 401 and "timestamp" in response.json()["error"]
    assert recorder.events == []


async def test_a_cloudevent_webhook_with_too_many_extensions_is_a_413(hook, recorder):
    _, client = await hook()
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t",
               **{f"ce-x{i}": "v" for i in range(65)}}
    response = await client.post("/hooks/test", headers=headers)
    assert response.status_code == 413 and "65 extension attributes" in response.json()["error"]
    assert recorder.events == []


async def test_base64_signatures_and_other_algorithms(hook, recorder):
    import base64
    _, client = await hook(auth={"hmac_secret_env": "HOOK_SECRET", "hmac_algorithm": "sha512",
                                 "hmac_encoding": "base64", "hmac_prefix": "", "hmac_header": "X-Sig"})
    body = b"abc"
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha512).digest()).decode()
    assert (await client.post("/hooks/test", content=body, headers={"X-Sig": signature})).status_code == 202
    assert (await client.post("/hooks/test", content=body, headers={"X-Sig": signature[:-4] + "AAA="})
            ).status_code == 401


async def test_bearer_tokens_from_the_environment(hook, recorder):
    _, client = await hook(auth={"bearer_env": ["HOOK_TOKEN", "HOOK_TOKEN_2"]})
    for token in ("token-1", "token-2"):
        response = await client.post("/hooks/test", content=b"x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 202
    for headers in ({"Authorization": "Bearer token-3"}, {"Authorization": "Basic dG9rZW4tMQ=="}, {}):
        response = await client.post("/hooks/test", content=b"x", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert len(recorder.events) == 2


async def test_bearer_and_signature_are_both_required_when_both_are_configured(hook, recorder):
    _, client = await hook(auth={"bearer_env": "HOOK_TOKEN", "hmac_secret_env": "HOOK_SECRET"})
    body = b"both"
    token = {"Authorization": "Bearer token-1"}
    signature = {"X-Hub-Signature-256": github_signature(body)}
    assert (await client.post("/hooks/test", content=body, headers=token)).status_code == 401
    assert (await client.post("/hooks/test", content=body, headers=signature)).status_code == 401
    assert (await client.post("/hooks/test", content=body, headers={**token, **signature})).status_code == 202
    assert len(recorder.events) == 1


async def test_size_method_and_storage_each_have_their_status(hook, recorder):
    trigger, client = await hook(max_body="1KiB")
    assert (await client.post("/hooks/test", content=b"x" * 1025)).status_code == 413
    assert (await client.post("/hooks/test", content=b"x" * 1024)).status_code == 202
    get = await client.get("/hooks/test")
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    recorder.refusals = 1
    refused = await client.post("/hooks/test", content=b"y")
    assert refused.status_code == 503 and "not stored" in refused.json()["error"]
    await trigger.stop()
    assert (await client.post("/hooks/test", content=b"z")).status_code == 503
    assert [e.payload for e in recorder.events] == [b"x" * 1024]


async def test_a_missing_secret_is_a_config_error_naming_the_field(recorder, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = HttpTriggerConfig(path="/hooks/x", auth={"hmac_secret_env": "NOT_SET_ANYWHERE"})
    with pytest.raises(TriggerConfigError, match=r"triggers\.x\.http\.auth\.hmac_secret_env.*NOT_SET_ANYWHERE"):
        WebhookTrigger("x", config, recorder)


async def test_past_its_rate_a_webhook_answers_429_with_retry_after_and_publishes_nothing(hook, recorder):
    trigger, client = await hook(rate={"rate": "1/s", "burst": 2})
    statuses = [(await client.post("/hooks/test", content=b"{}")).status_code for _ in range(3)]
    assert statuses == [202, 202, 429]
    refused = await client.post("/hooks/test", content=b"{}")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "trigger test is over its rate limit" in refused.json()["error"]
    assert len(recorder.events) == 2 and trigger.status().detail["refused_rate_limited"] == 2
    trigger._clock.advance(1.0)
    assert (await client.post("/hooks/test", content=b"{}")).status_code == 202


async def test_events_from_a_trigger_say_which_trigger_whatever_the_source_sent(recorder):
    from fmesh.triggers.registry import build_trigger

    trigger = build_trigger("orders", HttpTriggerConfig(path="/hooks/orders"), recorder, state=None)
    await trigger.start()
    event = Event({"specversion": "1.0", "id": "c-1", "source": "/crm", "type": "t", "fmeshsender": "admin"}, None)
    headers, body = write_binary(event)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=trigger.app), base_url="http://mesh") as client:
        assert (await client.post("/hooks/orders", content=body, headers=headers)).status_code == 202
        assert (await client.post("/hooks/orders", content=b"plain")).status_code == 202
    assert [e["fmeshsender"] for e in recorder.events] == ["trigger:orders", "trigger:orders"]


async def test_events_from_a_trigger_get_a_trace_context_unless_they_carry_one(recorder):
    from fmesh.triggers.registry import build_trigger

    from fmesh.tracecontext import parse_traceparent

    trigger = build_trigger("orders", HttpTriggerConfig(path="/hooks/orders"), recorder, state=None)
    await trigger.start()
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = Event({"specversion": "1.0", "id": "c-1", "source": "/crm", "type": "t", "traceparent": given}, None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=trigger.app), base_url="http://mesh") as client:
        assert (await client.post("/hooks/orders", content=b"plain")).status_code == 202
        headers, body = write_binary(event)
        assert (await client.post("/hooks/orders", content=body, headers=headers)).status_code == 202
        headers["ce-traceparent"] = given.upper()
        refused = await client.post("/hooks/orders", content=body, headers=headers)
    made, kept = recorder.events
    assert parse_traceparent(made["traceparent"]).sampled and kept["traceparent"] == given
    assert refused.status_code == 400 and "'traceparent'" in refused.json()["error"]
    assert "00-<32 lowercase hex trace id" in refused.json()["error"]
