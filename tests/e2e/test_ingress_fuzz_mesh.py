"""Fuzzing a real mesh over real HTTP: every answer satisfies the oracle of
tests/ingress_fuzz.py, and every 202'd event reaches a sink subscribed to everything with
the same attributes and byte-exact data. FMESH_FUZZ_EXAMPLES=N sends N requests."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from hypothesis import assume, given
from ingress_fuzz import Request, any_request, fuzz_settings, fuzz_timeout
from support import wait_for, write_manifest

from fmesh.bindings.http import read_events
from fmesh.errors import FmeshError

# What the mesh itself puts on an event: its sender, hop count, and a trace context where the
# event came without one (that one kept is tests/e2e/test_tracing.py's).
ADDED = {"fmeshsender", "fmeshhops", "traceparent"}


def expected_events(request: Request):
    """What the mesh should have stored: the request read by the same binding, locally."""
    try:
        return read_events(request.header_map(), request.body)
    except FmeshError:
        return []


def fingerprint(event) -> tuple:
    attributes = tuple(sorted((k, str(v)) for k, v in event.attributes.items() if k not in ADDED))
    return attributes, event.payload


@pytest.mark.timeout(fuzz_timeout() and 600)
def test_fuzzed_requests_to_a_real_mesh_are_answered_and_delivered_exactly(mesh, tmp_path, receiver):
    write_manifest(tmp_path, f"""
subscriptions:
  everything:
    filter: {{{{}}}}
    to: {receiver.url}/all
    delivery: {{{{retries: 0}}}}
""")
    mesh.cli("deploy", "-f", str(tmp_path / "fmesh.yaml"))
    accepted: Counter = Counter()
    statuses: Counter = Counter()
    client = httpx.Client(base_url=mesh.url, timeout=30)

    @fuzz_settings(150)
    @given(any_request)
    def one(request: Request) -> None:
        headers = [(k, v) for k, v in request.headers if k.lower() not in (b"content-length", b"host")]
        try:
            answer = client.post("/", headers=headers, content=request.body)
        except (httpx.LocalProtocolError, UnicodeError):
            assume(False)  # the client refuses to send such a header; nothing to learn
        statuses[answer.status_code] += 1
        assert answer.status_code < 500, (answer.status_code, answer.text, request)
        if answer.status_code == 202:
            for event in expected_events(request):
                accepted[fingerprint(event)] += 1
        check_answer_status_only(answer)

    one()
    client.close()
    total = sum(accepted.values())

    def delivered() -> Counter:
        got: Counter = Counter()
        for sent in receiver.to("/all"):
            for event in read_events({k.lower(): v for k, v in sent["headers"].items()}, sent["body"]):
                got[fingerprint(event)] += 1
        return got

    try:
        wait_for(lambda: sum(delivered().values()) >= total, 60, message=f"{total} accepted events at the sink")
    except AssertionError as exc:
        letters = mesh.cli("dead-letters", "--json").stdout
        missing = list(accepted - delivered())[:3]
        raise AssertionError(f"{exc}; missing {missing}; dead letters {letters[:3000]}") from None
    missing = accepted - delivered()
    assert not missing, f"accepted but not delivered as sent: {list(missing)[:3]}"
    print(f"{sum(statuses.values())} requests, answers {dict(sorted(statuses.items()))}; "
          f"{total} events accepted, all delivered as sent")
    assert total > 10, "the fuzzer should get some events through"


def check_answer_status_only(answer: httpx.Response) -> None:
    """The oracle's rule for any answer: a refusal says why. The mesh answers JSON; the HTTP
    parser itself refuses a request it cannot parse with a plain-text 400."""
    if answer.status_code < 400:
        return
    if answer.headers.get("content-type") == "application/json":
        assert isinstance(answer.json().get("error"), str) and answer.json()["error"], answer.text
    else:
        assert answer.status_code == 400 and answer.text == "Invalid HTTP request received.", answer.text
