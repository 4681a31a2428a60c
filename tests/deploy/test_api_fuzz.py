"""Schemathesis against the control API's own OpenAPI, in-process on a node with a
memory:// store: no route answers 5xx, and every answer (status, media type, body) is one
the schema documents; without a token every route is a documented 401, with a read token
every write a documented 403. A throwaway mesh: DELETE and purge are fuzzed too.

CI runs FMESH_FUZZ_EXAMPLES (default 10) cases per operation and generation mode; set it
higher to fuzz longer. Hypothesis is derandomized, so a run is the same run each time."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fmesh.deploy.server import build
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from fmesh.settings import NodeSettings

schemathesis.serializer.alias("application/gzip", "application/octet-stream")  # bundles: bytes as they come

EXAMPLES = int(os.environ.get("FMESH_FUZZ_EXAMPLES", "10"))
TOKEN = "fuzz-admin-token"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
CONFORMS = [status_code_conformance, content_type_conformance, response_schema_conformance]
TALLY: Counter = Counter()


def accepting(*statuses: str) -> dict:
    return {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409",
                                                                          *statuses]}}}


# A well-formed request the mesh may still refuse, and rightly: bodies holding specs the schema
# leaves open (manifest items, filters, rates) may not validate (422), and random bytes are
# not the tar.gz of the digest they are put at (400).
SEMANTIC = [{"include-path-regex": "^/v1/(apply|tokens|dead-letters/replay)$", **accepting("422")},
            {"include-name": "PUT /v1/bundles/{digest}", **accepting("400")}]


class StartedOnce:
    """The node as schemathesis sees it. Its pytest plugin ends every ASGI lifespan after
    each test, and a node does not start twice: this starts the node at the first lifespan
    and stops it only at the one `stop` ends."""

    def __init__(self, node: Any) -> None:
        self.node, self.started, self.stopping = node, False, False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.node(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if not self.started:
                    await self.node.start()
                    self.started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.stopping:
                    await self.node.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def stop(self) -> None:
        self.stopping = True
        with asgi.get_client(self):  # a lifespan (again) to end
            pass
        asgi.shutdown_lifespans()


def node_for_fuzzing(data_dir: Path) -> Any:
    node, _, _ = build(NodeSettings(data_dir=data_dir, store="memory://", token=TOKEN, launcher="subprocess"))
    return node


def operation_labels() -> list[str]:
    """`GET /v1/status` and the rest, read from the schema of a node that never starts."""
    with tempfile.TemporaryDirectory() as folder:
        node = node_for_fuzzing(Path(folder))
        shutil.rmtree(node.run_dir)
        return [f"{method.upper()} {path}" for path, ops in node.control_app.openapi()["paths"].items()
                for method in ops]


LABELS = operation_labels()
# Streams answer for as long as the client listens: a fuzz case would never end. Their refusals
# are checked below, and their answers by the tests of what they stream.
STREAMS = {"GET /v1/events/stream"}
FINITE = [label for label in LABELS if label not in STREAMS]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The schema bound to a started node (schemathesis runs its lifespan): with the admin
    token, without one, and a read token to call with."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    node = StartedOnce(node_for_fuzzing(data_dir))
    admin = SchemathesisConfig.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
                                          "operations": SEMANTIC})
    found = {"admin": schemathesis.openapi.from_asgi("/openapi.json", node, config=admin),
             "anonymous": schemathesis.openapi.from_asgi("/openapi.json", node)}
    found["client"] = lambda: asgi.get_client(node)
    with found["client"]() as client:
        created = client.post("/v1/tokens", json={"name": "reader", "scope": "read"},
                              headers={"authorization": f"Bearer {TOKEN}"})
    found["read token"] = created.json()["token"]
    yield found
    node.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    print("\nAPI fuzz cases per target:", dict(sorted(TALLY.items())))


def operation(schema: Any, label: str) -> Any:
    method, path = label.split(" ", 1)
    return schema[path][method]


@pytest.mark.timeout(120 + EXAMPLES)
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("label", FINITE)
def test_no_operation_answers_5xx_or_outside_its_schema(schemas, label, mode):
    @FUZZ
    @given(case=operation(schemas["admin"], label).as_strategy(mode))
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        TALLY[f"{label} {mode.value}"] += 1
        case.call_and_validate()

    fuzz()


@pytest.mark.parametrize("label", LABELS)
def test_without_a_token_every_operation_is_a_documented_401(schemas, label):
    @settings(FUZZ, max_examples=min(EXAMPLES, 5))
    @given(case=operation(schemas["anonymous"], label).as_strategy())
    def call(case) -> None:  # type: ignore[no-untyped-def]
        TALLY[f"{label} no token"] += 1
        response = case.call()
        assert response.status_code == 401 and response.headers["www-authenticate"] == ["Bearer"]
        case.validate_response(response, checks=CONFORMS)

    call()


@pytest.mark.parametrize("label", [label for label in LABELS if not label.startswith(("GET ", "HEAD "))])
def test_a_read_token_may_not_change_anything(schemas, label):
    @settings(FUZZ, max_examples=min(EXAMPLES, 5))
    @given(case=operation(schemas["anonymous"], label).as_strategy())
    def call(case) -> None:  # type: ignore[no-untyped-def]
        TALLY[f"{label} read token"] += 1
        response = case.call(headers={"authorization": f"Bearer {schemas['read token']}"})
        assert response.status_code == 403, response.text
        case.validate_response(response, checks=CONFORMS)

    call()


def test_a_deployed_subscription_is_listed_shown_and_deleted_as_documented(schemas):
    """Random names rarely hit a deployed one: this deploys one and goes through its routes."""
    schema = schemas["admin"]
    spec = {"to": "http://127.0.0.1:9/never", "filter": {"type": "com.example.fuzz"}}
    with schemas["client"]() as client:
        applied = client.post("/v1/apply", json={"subscriptions": {"audit": {"spec": spec}}},
                              headers={"authorization": f"Bearer {TOKEN}"})
    assert applied.status_code == 200, applied.text
    for label, path_parameters, status in [("GET /v1/subscriptions", None, 200),
                                           ("GET /v1/subscriptions/{name}", {"name": "audit"}, 200),
                                           ("GET /v1/status", None, 200),
                                           ("DELETE /v1/subscriptions/{name}", {"name": "audit"}, 200),
                                           ("GET /v1/subscriptions/{name}", {"name": "audit"}, 404)]:
        case = operation(schema, label).Case(path_parameters=path_parameters,
                                             headers={"authorization": f"Bearer {TOKEN}"})
        response = case.call_and_validate(excluded_checks=[ignored_auth])  # it takes this token for a made-up one
        assert response.status_code == status, (label, response.text)


@pytest.mark.parametrize(("params", "problem"), [
    ({"filter": "type"}, "string_pattern_mismatch"), ({"filter": "Type=x"}, "string_pattern_mismatch"),
    ({"cesql": "type = "}, "invalid CESQL expression"), ({"cesql": "type LIKE"}, "invalid CESQL expression")])
def test_the_event_stream_refuses_what_it_cannot_watch_for(schemas, params, problem):
    with schemas["client"]() as client:
        answer = client.get("/v1/events/stream", params=params, headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 422 and problem in answer.text


def test_a_real_mesh_process_answers_within_its_schema(mesh):
    """The same checks over HTTP against `fmesh up` (uvicorn in front), two cases each."""
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": mesh.token}}},
                                           "operations": SEMANTIC})
    schema = schemathesis.openapi.from_url(mesh.url + "/openapi.json", config=config)
    failures = [failure for label in FINITE for mode in GenerationMode
                if (failure := fuzz_over_http(schema, label, mode)) is not None]
    assert not failures, "\n\n".join(failures)


def fuzz_over_http(schema: Any, label: str, mode: GenerationMode) -> str | None:
    """A few cases of one operation; what schemathesis found, or None."""
    @settings(FUZZ, max_examples=min(EXAMPLES, 2))
    @given(case=operation(schema, label).as_strategy(mode))
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        TALLY[f"{label} {mode.value} over HTTP"] += 1
        case.call_and_validate(timeout=10)

    try:
        fuzz()
    except Exception as exc:  # noqa: BLE001 - each operation's failure is listed, then the test fails
        return f"{label} ({mode.value}): {exc}"
    return None
