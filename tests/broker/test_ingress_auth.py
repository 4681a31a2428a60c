"""Who may publish at the ingress, in-process over ASGI with the in-memory event log: every
refusal has its own status and stores nothing, and every stored event says who sent it."""

from __future__ import annotations

import json

import httpx
import pytest
from fmesh.broker.broker import Broker
from fmesh.broker.filters import compile_shorthand
from fmesh.broker.identity import ADMIN, Identity, PeerCredential, Principal, token_digest
from fmesh.broker.ingress import Ingress
from fmesh.broker.memory_log import MemoryEventLog
from fmesh.broker.policy import Gate, Rule, default_mode

from fmesh.ratelimit import TokenBucket
from fmesh.signing import sign_request

BINARY = {"ce-id": "1", "ce-source": "/test", "ce-type": "com.shop.order", "ce-specversion": "1.0"}
BATCH = "application/cloudevents-batch+json"
SECRET = b"eu-signing-secret"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def identity(clock):
    identity = Identity(clock)
    identity.add_bearer(token_digest("admin-token"), ADMIN)
    identity.set_peer("eu", PeerCredential(token="eu-token"))
    identity.set_peer("us", PeerCredential(secret=SECRET, tolerance=300))
    identity.add_bearer(token_digest("read-token"), Principal("token:viewer", "read"))
    return identity


async def client_for(gate: Gate, max_event_bytes: int = 4096):
    log = MemoryEventLog()
    broker = Broker(log)
    broker.subscribe("sub", compile_shorthand({}))
    app = Ingress(broker.publish, max_event_bytes, gate)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mesh"), log


@pytest.fixture
async def required(identity):
    gate = Gate(identity, "required")
    client, log = await client_for(gate)
    async with client:
        yield client, log, gate


async def stored(log):
    return [d.event for d in await log.claim("sub", 100)]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def signed(body: bytes, now: float, peer: str = "us", secret: bytes = SECRET) -> dict[str, str]:
    return {"x-fmesh-peer": peer, **sign_request(secret, body, now)}


async def test_no_token_is_401_and_nothing_is_stored(required):
    client, log, _ = required
    response = await client.post("/", headers=BINARY, content=b"x")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert "known callers" in response.json()["error"]
    assert await stored(log) == []


async def test_wrong_token_is_401_and_nothing_is_stored(required):
    client, log, _ = required
    for header in ("Bearer nope", "Basic dXNlcjpwdw==", "Bearer "):
        response = await client.post("/", headers={**BINARY, "authorization": header})
        assert response.status_code == 401, header
    assert await stored(log) == []


async def test_a_peer_with_its_token_is_stamped_on_its_events(required):
    client, log, _ = required
    response = await client.post("/", headers={**BINARY, **bearer("eu-token")})
    assert response.status_code == 202
    [event] = await stored(log)
    assert event["fmeshsender"] == "peer:eu"


async def test_the_mesh_token_publishes_as_admin(required):
    client, log, _ = required
    assert (await client.post("/", headers={**BINARY, **bearer("admin-token")})).status_code == 202
    assert [e["fmeshsender"] for e in await stored(log)] == ["admin"]


@pytest.mark.parametrize("mode", ["binary", "structured", "batch"])
async def test_a_forged_sender_is_replaced_by_the_real_principal(required, mode):
    client, log, _ = required
    forged = {"specversion": "1.0", "id": "f", "source": "/s", "type": "t", "fmeshsender": "admin"}
    if mode == "binary":
        headers, body = {**BINARY, "ce-fmeshsender": "admin"}, b""
    elif mode == "structured":
        headers, body = {"content-type": "application/cloudevents+json"}, json.dumps(forged).encode()
    else:
        headers, body = {"content-type": BATCH}, json.dumps([forged, {**forged, "id": "g"}]).encode()
    assert (await client.post("/", headers={**headers, **bearer("eu-token")}, content=body)).status_code == 202
    assert {e["fmeshsender"] for e in await stored(log)} == {"peer:eu"}


async def test_a_signed_request_from_a_peer_is_accepted(required, clock):
    client, log, _ = required
    body = json.dumps({"specversion": "1.0", "id": "s1", "source": "/us", "type": "t"}).encode()
    headers = {"content-type": "application/cloudevents+json", **signed(body, clock.now - 10)}
    assert (await client.post("/", headers=headers, content=body)).status_code == 202
    assert [e["fmeshsender"] for e in await stored(log)] == ["peer:us"]


async def test_a_bad_signature_is_401_and_nothing_is_stored(required, clock):
    client, log, _ = required
    body = json.dumps({"specversion": "1.0", "id": "s1", "source": "/us", "type": "t"}).encode()
    headers = {"content-type": "application/cloudevents+json"}
    tampered = signed(body, clock.now)
    wrong_secret = signed(body, clock.now, secret=b"guess")
    for extra, content in ((tampered, body.replace(b"s1", b"s2")), (wrong_secret, body)):
        response = await client.post("/", headers={**headers, **extra}, content=content)
        assert response.status_code == 401 and "wrong signature" in response.json()["error"]
    unknown = await client.post("/", headers={**headers, **signed(body, clock.now, peer="mars")}, content=body)
    assert unknown.status_code == 401 and "mars" in unknown.json()["error"]
    assert await stored(log) == []


async def test_an_expired_timestamp_is_401_so_a_captured_request_cannot_be_replayed(required, clock):
    client, log, _ = required
    body = json.dumps({"specversion": "1.0", "id": "s1", "source": "/us", "type": "t"}).encode()
    headers = {"content-type": "application/cloudevents+json", **signed(body, clock.now)}
    assert (await client.post("/", headers=headers, content=body)).status_code == 202
    clock.now += 301  # the same request, captured and sent again later
    replayed = await client.post("/", headers=headers, content=body)
    assert replayed.status_code == 401 and "from now" in replayed.json()["error"]
    assert len(await stored(log)) == 1


async def test_a_read_token_may_not_publish(required):
    client, log, _ = required
    response = await client.post("/", headers={**BINARY, **bearer("read-token")})
    assert response.status_code == 403 and "scope read" in response.json()["error"]
    assert await stored(log) == []


async def test_a_batch_with_one_event_outside_the_allow_rule_is_403_and_stores_none(required):
    client, log, gate = required
    gate.set_rule("peer:eu", Rule(allow=compile_shorthand({"type": {"prefix": "com.shop."}})))
    good = {"specversion": "1.0", "id": "a", "source": "/eu", "type": "com.shop.order"}
    bad = {**good, "id": "b", "type": "com.bank.transfer"}
    response = await client.post("/", headers={"content-type": BATCH, **bearer("eu-token")},
                                 content=json.dumps([good, bad]))
    assert response.status_code == 403
    assert "peer:eu" in response.json()["error"] and "com.bank.transfer" in response.json()["error"]
    assert await stored(log) == []
    ok = await client.post("/", headers={"content-type": BATCH, **bearer("eu-token")}, content=json.dumps([good]))
    assert ok.status_code == 202 and [e.id for e in await stored(log)] == ["a"]


async def test_past_its_rate_a_principal_gets_429_with_retry_after(identity):
    now = [0.0]
    gate = Gate(identity, "required")
    gate.set_rule("peer:eu", Rule(bucket=TokenBucket(rate=2, burst=3, clock=lambda: now[0])))
    client, log = await client_for(gate)
    async with client:
        statuses = [(await client.post("/", headers={**BINARY, "ce-id": str(i), **bearer("eu-token")})).status_code
                    for i in range(4)]
        assert statuses == [202, 202, 202, 429]
        refused = await client.post("/", headers={**BINARY, **bearer("eu-token")})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "rate limit" in refused.json()["error"]
        other = await client.post("/", headers={**BINARY, "ce-id": "admin", **bearer("admin-token")})
        assert other.status_code == 202  # one principal's limit is not another's
        now[0] += 0.5
        assert (await client.post("/", headers={**BINARY, "ce-id": "later", **bearer("eu-token")})).status_code == 202
        assert len(await stored(log)) == 5


async def test_a_batch_counts_every_event_against_the_rate(identity):
    now = [0.0]
    gate = Gate(identity, "required")
    gate.set_rule("peer:eu", Rule(bucket=TokenBucket(rate=10, burst=10, clock=lambda: now[0])))
    client, _ = await client_for(gate)
    event = {"specversion": "1.0", "source": "/eu", "type": "t"}
    async with client:
        batch = json.dumps([{**event, "id": str(i)} for i in range(25)])
        assert (await client.post("/", headers={"content-type": BATCH, **bearer("eu-token")},
                                  content=batch)).status_code == 202
        refused = await client.post("/", headers={**BINARY, **bearer("eu-token")})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"  # 15 events over: 1.6 s


async def test_checks_run_in_order_size_before_auth_before_parse(required):
    client, log, _ = required
    too_big = await client.post("/", headers=BINARY, content=b"x" * 5000)
    assert too_big.status_code == 413  # its Content-Length says so before anyone is asked who they are
    unparsable = await client.post("/", headers={"content-type": "text/plain"}, content=b"hi")
    assert unparsable.status_code == 401
    authorised = await client.post("/", headers={"content-type": "text/plain", **bearer("eu-token")}, content=b"hi")
    assert authorised.status_code == 415
    assert (await client.get("/")).status_code == 405
    assert await stored(log) == []


async def test_optional_lets_anonymous_in_but_still_refuses_wrong_credentials(identity):
    client, log = await client_for(Gate(identity, "optional"))
    async with client:
        assert (await client.post("/", headers={**BINARY, "ce-fmeshsender": "peer:eu"})).status_code == 202
        assert (await client.post("/", headers={**BINARY, **bearer("nope")})).status_code == 401
        assert (await client.post("/", headers={**BINARY, "ce-id": "2", **bearer("eu-token")})).status_code == 202
    assert [e["fmeshsender"] for e in await stored(log)] == ["anonymous", "peer:eu"]


async def test_off_looks_at_no_credentials_and_stamps_anonymous(identity):
    client, log = await client_for(Gate(identity, "off"))
    async with client:
        assert (await client.post("/", headers={**BINARY, "ce-fmeshsender": "admin", **bearer("nope")})).status_code \
            == 202
    assert [e["fmeshsender"] for e in await stored(log)] == ["anonymous"]


async def test_a_client_certificate_names_its_peer(identity):
    identity.set_peer("asia", PeerCredential(subject="mesh-asia.example.com"))
    gate = Gate(identity, "required")
    by_san = {"subject": ((("commonName", "someone"),),), "subjectAltName": (("DNS", "mesh-asia.example.com"),)}
    assert gate.identify({}, {"extensions": {"tls": {"peercert": by_san}}}) == Principal("peer:asia", "peer")
    by_cn = {"subject": ((("commonName", "mesh-asia.example.com"),),)}
    assert gate.identify({}, {"extensions": {"tls": {"peercert": by_cn}}}).name == "peer:asia"
    stranger = {"subject": ((("commonName", "stranger"),),)}
    with pytest.raises(PermissionError, match="known callers"):
        gate.identify({}, {"extensions": {"tls": {"peercert": stranger}}})


def test_a_credential_belongs_to_one_principal(identity):
    with pytest.raises(ValueError, match="already peer:eu's"):
        identity.set_peer("eu2", PeerCredential(token="eu-token"))
    identity.set_peer("eu", PeerCredential(token="new-eu-token"))  # a peer may change its own
    assert identity.bearer("eu-token") is None and identity.bearer("new-eu-token").name == "peer:eu"


@pytest.mark.parametrize(("host", "mode"), [("127.0.0.1", "off"), ("::1", "off"), ("localhost", "off"),
                                            ("127.0.0.2", "off"), ("0.0.0.0", "required"), ("10.0.0.5", "required"),
                                            ("mesh.example.com", "required")])
def test_default_mode_is_off_only_on_loopback(host, mode):
    assert default_mode(host) == mode


# -- found by a hostile review: signed headers, pre-seeded duplicates, odd timestamps -----------

async def test_a_signed_request_in_binary_mode_is_refused_for_its_headers_are_not_signed(required, clock):
    client, log, _ = required
    headers = {**BINARY, **signed(b"", clock.now)}  # ce-* headers could be rewritten in a replay
    response = await client.post("/", headers=headers, content=b"")
    assert response.status_code == 401 and "in the body" in response.json()["error"]
    assert await stored(log) == []


@pytest.mark.parametrize("timestamp", ["9" * 5000, b"\xb2", "0" * 4301, "1e9", "+1700000000"])
async def test_a_timestamp_that_is_not_a_few_ascii_digits_is_401_not_500(required, timestamp):
    client, log, _ = required
    headers = {"content-type": BATCH, "x-fmesh-peer": "us", "x-fmesh-timestamp": timestamp,
               "x-fmesh-signature": "sha256=00"}
    response = await client.post("/", headers=headers, content=b"[]")
    assert response.status_code == 401 and "timestamp" in response.json()["error"]


async def test_only_a_peer_may_say_where_an_event_has_been(identity):
    gate = Gate(identity, "required")
    log = MemoryEventLog()
    broker = Broker(log, "here")
    broker.subscribe("sub", compile_shorthand({}))
    app = Ingress(broker.publish, 4096, gate)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mesh") as client:
        # An admin (not a peer) tries to pre-seed the id a peer will forward, and to fake a loop.
        for path in ("cloud-a", "here"):
            seeded = await client.post("/", headers={**BINARY, "ce-fmeshpath": path, **bearer("admin-token")})
            assert seeded.status_code == 202
        forwarded = await client.post("/", headers={**BINARY, "ce-fmeshpath": "cloud-a", **bearer("eu-token")})
        assert forwarded.status_code == 202
    events = await stored(log)
    assert [(e.get("fmeshsender"), e.get("fmeshpath")) for e in events] == [
        ("admin", None), ("admin", None), ("peer:eu", "cloud-a")]
    assert broker.bridged.duplicates == 0 and broker.bridged.looped == 0


async def test_a_peer_retrying_is_a_duplicate_only_of_its_own_event():
    log = MemoryEventLog()
    broker = Broker(log, "here")
    broker.subscribe("sub", compile_shorthand({}))

    def forwarded(sender: str):
        from fmesh.events import Event

        return Event({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "fmeshpath": "there",
                      "fmeshsender": sender})

    for sender in ("peer:eu", "peer:us", "peer:eu"):
        await broker.publish([forwarded(sender)])
    assert [e["fmeshsender"] for e in await stored(log)] == ["peer:eu", "peer:us"]
    assert broker.bridged.duplicates == 1


def test_client_certificates_make_auth_required_by_default_even_on_loopback():
    assert default_mode("127.0.0.1") == "off"
    assert default_mode("127.0.0.1", client_certificates=True) == "required"
