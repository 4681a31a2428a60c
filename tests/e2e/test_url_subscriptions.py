"""Subscriptions to HTTP URLs through a real mesh: Knative's retry classes, Retry-After,
timeouts, content modes, replies, and sinks for replies and dead letters."""

from __future__ import annotations

import json

from support import wait_for, write_manifest


def subscribe(mesh, tmp_path, receiver, path, delivery="{retries: 3, delay: 20ms}", extra=""):
    manifest = write_manifest(tmp_path, f"""
subscriptions:
  hook:
    filter: {{{{type: order}}}}
    to: {receiver.url}{path}
    delivery: {delivery.replace("{", "{{").replace("}", "}}")}
{extra}""")
    mesh.cli("deploy", "-f", str(manifest))


def send(mesh, **extensions):
    args = ["send", "--type", "order", "--source", "/t", "--data", '{"n": 1}']
    for key, value in extensions.items():
        args += ["--ext", f"{key}={value}"]
    return mesh.cli(*args).stdout.split()[0]


def dead_letters(mesh):
    return json.loads(mesh.cli("dead-letters", "--json").stdout)["dead_letters"]


def sink_status(mesh, name="subscription:hook"):
    return next(s for s in mesh.api("GET", "/v1/status").json()["sinks"] if s["name"] == name)


def test_5xx_and_404_are_retried_until_delivered(mesh, tmp_path, receiver):
    receiver.script("/flaky", (500,), (503,), (404,), (202,))
    subscribe(mesh, tmp_path, receiver, "/flaky")
    event_id = send(mesh)
    wait_for(lambda: sink_status(mesh)["delivered"] == 1, 15, message="delivery after retries")
    requests = receiver.to("/flaky")
    assert len(requests) == 4 and all(r["headers"]["ce-id"] == event_id for r in requests)
    assert sink_status(mesh)["retried"] == 3


def test_400_goes_straight_to_the_dead_letters_with_its_context(mesh, tmp_path, receiver):
    receiver.script("/strict", (400, {"content-type": "text/plain"}, b"field 'n' must be a string"))
    subscribe(mesh, tmp_path, receiver, "/strict")
    event_id = send(mesh)
    wait_for(lambda: dead_letters(mesh), 15, message="the dead letter")
    [letter] = dead_letters(mesh)
    attributes = letter["event"]["attributes"]
    assert len(receiver.to("/strict")) == 1, "a 400 is not worth retrying"
    assert attributes["id"] == event_id and attributes["fmesherrorcode"] == 400
    assert attributes["fmesherrordest"] == "subscription:hook"
    assert "field 'n' must be a string" in attributes["fmesherrordata"]
    assert letter["reason"] == "not retryable" and letter["status"] == 400


def test_429_retry_after_is_honoured(mesh, tmp_path, receiver):
    receiver.script("/busy", (429, {"retry-after": "2"}), (202,))
    subscribe(mesh, tmp_path, receiver, "/busy", "{retries: 2, delay: 10ms}")
    send(mesh)
    wait_for(lambda: len(receiver.to("/busy")) == 2, 15, message="the retry")
    first, second = receiver.to("/busy")
    assert second["at"] - first["at"] >= 1.9


def test_a_subscriber_slower_than_the_timeout_is_retried_then_dead_lettered(mesh, tmp_path, receiver):
    receiver.script("/slow", (202, {}, b"", 3.0))
    subscribe(mesh, tmp_path, receiver, "/slow", "{retries: 1, delay: 10ms, timeout: 300ms}")
    send(mesh)
    wait_for(lambda: dead_letters(mesh), 20, message="the dead letter")
    [letter] = dead_letters(mesh)
    assert letter["attempts"] == 2 and "timed out after 0.3s" in letter["error"]


def test_structured_mode_when_the_subscription_asks(mesh, tmp_path, receiver):
    subscribe(mesh, tmp_path, receiver, "/structured", "{content_mode: structured}")
    event_id = send(mesh, region="eu")
    wait_for(lambda: receiver.to("/structured"), 10, message="the delivery")
    request = receiver.to("/structured")[0]
    assert request["headers"]["content-type"].startswith("application/cloudevents+json")
    body = json.loads(request["body"])
    assert body["id"] == event_id and body["region"] == "eu" and body["data"] == {"n": 1}


def test_binary_mode_is_the_default(mesh, tmp_path, receiver):
    subscribe(mesh, tmp_path, receiver, "/binary")
    event_id = send(mesh)
    wait_for(lambda: receiver.to("/binary"), 10, message="the delivery")
    request = receiver.to("/binary")[0]
    assert request["headers"]["ce-id"] == event_id and json.loads(request["body"]) == {"n": 1}


def test_a_cloudevent_answer_is_published_back_into_the_mesh(mesh, tmp_path, receiver):
    out = tmp_path / "replies.jsonl"
    receiver.script("/enrich", (200, {"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "/enricher",
                                      "ce-type": "order.enriched", "content-type": "application/json"},
                                b'{"enriched": true}'))
    subscribe(mesh, tmp_path, receiver, "/enrich", extra=f"""functions:
  collect:
    handler: {{fixtures}}/record/handler.py:handle
    on: [{{{{type: order.enriched}}}}]
    env: {{{{RECORD_TO: "{out}"}}}}
""")
    send(mesh)
    wait_for(lambda: out.exists(), 15, message="the reply to reach a function")
    seen = json.loads(out.read_text().splitlines()[0])
    assert seen["attributes"]["id"] == "r1" and seen["attributes"]["fmeshhops"] == 1


def test_function_replies_and_dead_letters_can_go_to_urls(mesh, tmp_path, receiver):
    manifest = write_manifest(tmp_path, f"""
functions:
  hello:
    handler: {{functions}}/hello/handler.py:handle
    on: [{{{{type: greet}}}}]
    reply_to: {receiver.url}/replies
  broken:
    handler: {{fixtures}}/fail/handler.py:handle
    on: [{{{{type: doomed}}}}]
    delivery: {{{{retries: 0, dead_letter: "{receiver.url}/dead"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    mesh.cli("send", "--type", "greet", "--source", "/t", "--data", '{"name": "Ann"}')
    doomed = mesh.cli("send", "--type", "doomed", "--source", "/t").stdout.split()[0]
    wait_for(lambda: receiver.to("/replies") and receiver.to("/dead"), 15, message="reply and dead letter")
    reply = receiver.to("/replies")[0]
    assert reply["headers"]["ce-type"] == "greet.reply" and json.loads(reply["body"]) == {"greeting": "Hello, Ann!"}
    dead = receiver.to("/dead")[0]["headers"]
    assert dead["ce-id"] == doomed and dead["ce-fmesherrordest"] == "function:broken"
    assert "always fails" in dead["ce-fmesherrordata"].replace("%20", " ")
