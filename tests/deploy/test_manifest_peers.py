"""`peers:` and a function's `allow:` in the manifest: what validates, and the errors that
say file, line and field when something does not."""

from __future__ import annotations

import pytest
from fmesh.broker.router import Router
from fmesh.deploy.manifest import parse_manifest

from fmesh.errors import ManifestError, TriggerConfigError

PEERS = """\
peers:
  eu:
    auth: {token_env: EU_TOKEN}
    allow: {type: {prefix: com.shop.}}
    rate: {rate: 100/s, burst: 200}
  us:
    auth: {hmac_secret_file: /run/secrets/us, tolerance: 60s}
    allow: {filters: [{cesql: "region = 'us'"}]}
  asia:
    auth: {subject: mesh-asia.example.com}
functions:
  orders:
    handler: functions/orders/handler.py:handle
    on: [{type: {prefix: com.shop.}}]
    allow: [peer:eu, token:ci, trigger:orders, anonymous]
"""


def error_for(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as error:
        parse_manifest(text, "fmesh.yaml")
    return error.value


def test_peers_validate_with_their_rules():
    manifest = parse_manifest(PEERS)
    eu, us, asia = manifest.peers["eu"], manifest.peers["us"], manifest.peers["asia"]
    assert eu.rate.rate == 100 and eu.rate.burst == 200
    assert eu.compiled_allow()({"type": "com.shop.order"}) and not eu.compiled_allow()({"type": "com.bank.x"})
    assert us.auth.tolerance == 60 and us.compiled_allow()({"type": "t", "region": "us"})
    assert asia.compiled_allow() is None and asia.auth.subject == "mesh-asia.example.com"


def test_a_peer_secret_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    manifest = parse_manifest(PEERS)
    monkeypatch.setenv("EU_TOKEN", "t0ken")
    assert manifest.peers["eu"].auth.credential("peers.eu.auth").token == "t0ken"
    monkeypatch.delenv("EU_TOKEN")
    with pytest.raises(TriggerConfigError, match=r"peers\.eu\.auth\.token_env: environment variable EU_TOKEN"):
        manifest.peers["eu"].auth.credential("peers.eu.auth")
    secret = tmp_path / "us"
    secret.write_text("s3cret\n")
    us = parse_manifest(PEERS.replace("/run/secrets/us", str(secret))).peers["us"]
    assert us.auth.credential("peers.us.auth").secret == b"s3cret"
    with pytest.raises(TriggerConfigError, match=r"peers\.us\.auth\.hmac_secret_file: cannot read /run/secrets/us"):
        manifest.peers["us"].auth.credential("peers.us.auth")


def test_a_peer_needs_exactly_one_way_to_authenticate_and_never_an_inline_secret():
    error = error_for("peers:\n  eu:\n    auth: {token_env: A, subject: b}\n")
    assert str(error).startswith("fmesh.yaml:3: peers.eu.auth: give exactly one of") and "subject" in str(error)
    inline = error_for("peers:\n  eu:\n    auth: {token: plain-text}\n")
    assert "fmesh.yaml:3: peers.eu.auth.token: unknown field 'token'" in str(inline) and "token_env" in str(inline)
    assert "peers.eu.auth: required field is missing" in str(error_for("peers:\n  eu:\n    allow: {}\n"))


def test_bad_peer_rules_name_their_line():
    bad_rate = error_for("peers:\n  eu:\n    auth: {token_env: A}\n    rate: {rate: fast}\n")
    assert "fmesh.yaml:4: peers.eu.rate.rate: expected a rate such as 100/s" in str(bad_rate)
    bad_allow = error_for("peers:\n  eu:\n    auth: {token_env: A}\n    allow: {type: {like: x}}\n")
    assert "fmesh.yaml:4" in str(bad_allow) and "exact|prefix|suffix" in str(bad_allow)


def test_a_function_allow_routes_only_the_listed_senders():
    function = parse_manifest(PEERS).functions["orders"]
    router = Router()
    router.set("function:orders", function.compiled_filter())
    event = {"type": "com.shop.order", "source": "/s"}
    for sender in ("peer:eu", "token:ci", "trigger:orders", "anonymous"):
        assert router.match({**event, "fmeshsender": sender}) == ["function:orders"], sender
    for sender in ("peer:us", "admin", "function:orders"):
        assert router.match({**event, "fmeshsender": sender}) == [], sender
    assert router.match(event) == []  # an event nobody stamped is from no listed sender
    assert router.match({**event, "type": "com.other", "fmeshsender": "peer:eu"}) == []


def test_a_function_without_allow_takes_events_from_anyone():
    function = parse_manifest(PEERS.replace("    allow: [peer:eu, token:ci, trigger:orders, anonymous]\n", "")) \
        .functions["orders"]
    assert function.compiled_filter()({"type": "com.shop.x", "fmeshsender": "peer:whoever"})


def test_allow_entries_must_be_senders():
    error = error_for(PEERS.replace("token:ci", "ci"))
    assert "fmesh.yaml:15: functions.orders.allow: 'ci' is not a sender" in str(error)
    assert "at least one" in str(error_for(PEERS.replace("[peer:eu, token:ci, trigger:orders, anonymous]", "[]")))


def test_a_webhook_trigger_takes_a_rate():
    manifest = parse_manifest("triggers:\n  hook: {http: {path: /hooks/x, rate: {rate: 10/s, burst: 20}}}\n")
    assert manifest.triggers["hook"].http.rate.rate == 10
