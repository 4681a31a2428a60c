"""The control API in-process: what its OpenAPI promises, and the error bodies it answers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fmesh.deploy.body_limit import MAX_CONTROL_BODY_BYTES
from fmesh.deploy.server import build
from fmesh.runtime.runtime import SinkSpec

from fmesh.settings import NodeSettings

TOKEN = "api-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    node, _, _ = build(NodeSettings(data_dir=tmp_path / "data", store="memory://", token=TOKEN, launcher="subprocess"))
    await node.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(node), base_url="http://mesh") as client:
            yield client
    finally:
        await node.stop()


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each operation of the OpenAPI, by its label (`GET /v1/status`)."""
    settings = NodeSettings(data_dir=tmp_path_factory.mktemp("data"), store="memory://", token=TOKEN,
                            launcher="subprocess")
    node, _, _ = build(settings)
    shutil.rmtree(node.run_dir)  # the schema is all this node is for: it never starts
    spec = node.control_app.openapi()
    return {f"{method.upper()} {path}": op for path, ops in spec["paths"].items() for method, op in ops.items()}


def test_every_route_documents_401_and_403_with_the_error_body(ops):
    for label, op in ops.items():
        for status in ("401", "403"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, label


@pytest.mark.parametrize(("label", "statuses"), [
    ("GET /v1/functions/{name}", {"200", "401", "403", "404", "422"}),
    ("DELETE /v1/subscriptions/{name}", {"200", "401", "403", "404", "409", "422"}),
    ("HEAD /v1/bundles/{digest}", {"200", "401", "403", "404", "422"}),
    ("PUT /v1/bundles/{digest}", {"200", "400", "401", "403", "413", "422"}),
    ("POST /v1/bundles/{digest}/prepare", {"200", "401", "403", "404", "422"}),
    ("POST /v1/apply", {"200", "400", "401", "403", "422"}),
    ("GET /v1/functions/{name}/logs", {"200", "401", "403", "404", "422"}),
    ("POST /v1/dead-letters/replay", {"200", "400", "401", "403", "422", "503"}),
    ("POST /v1/tokens", {"201", "400", "401", "403", "409", "422"}),
    ("DELETE /v1/tokens/{name}", {"200", "401", "403", "404", "422"}),
    ("GET /v1/status", {"200", "401", "403", "422"}),
])
def test_each_route_documents_the_statuses_it_answers(ops, label, statuses):
    assert set(ops[label]["responses"]) == statuses


def test_422_is_documented_as_the_one_error_body(ops):
    op = ops["POST /v1/apply"]
    assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}


def test_media_types_are_documented_as_answered(ops):
    assert set(ops["GET /v1/functions/{name}/logs"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(ops["POST /v1/bundles/{digest}/prepare"]["responses"]["200"]["content"]) == {"application/x-ndjson"}
    assert "content" not in ops["HEAD /v1/bundles/{digest}"]["responses"]["200"]
    body = ops["PUT /v1/bundles/{digest}"]["requestBody"]
    assert body["required"] and set(body["content"]) == {"application/gzip"}


async def test_a_request_that_does_not_validate_says_which_field_in_error(api):
    response = await api.post("/v1/tokens", json={"scope": "read"}, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "body.name: Field required" and body["detail"][0]["loc"] == ["body", "name"]


async def test_a_body_that_is_not_json_is_a_documented_400(api):
    response = await api.post("/v1/apply", content=b"1\xff\xfe", headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/apply", "/v1/dead-letters/replay"])
@pytest.mark.parametrize("content_type", [None, "text/plain"])
async def test_a_body_sent_without_a_json_content_type_is_a_422_saying_so(api, path, content_type):
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    for body in (b"\xff\xfe", b'{"name": "x"}'):  # bytes in no encoding, and JSON not declared as such
        response = await api.post(path, content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert "send a JSON object with content-type: application/json" in response.json()["error"]
    response = await api.get("/v1/status", headers=AUTH)  # the connection's app is still serving
    assert response.status_code == 200


async def test_an_unknown_path_or_method_answers_the_error_body(api):
    response = await api.get("/v1/functions/a/b", headers=AUTH)
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = await api.post("/v1/status", headers=AUTH)
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}


async def test_a_query_parameter_a_route_does_not_take_is_a_422_naming_it(api):
    """FastAPI ignores it: `?limt=5` answered every dead letter, as if the limit had been read."""
    response = await api.get("/v1/dead-letters", params={"limt": "5"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"] == ("query.limt: not a parameter of GET /v1/dead-letters "
                                        "(it takes function, limit)")
    response = await api.get("/v1/status", params={"verbose": "1", "all": ""}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"] == ("query.all: not a parameter of GET /v1/status (it takes none); "
                                        "also unknown: verbose")


async def test_invoke_refuses_an_unknown_query_parameter_too(api):
    response = await api.post("/v1/functions/nope/invoke", params={"x": "2"}, headers=AUTH, content=b"{}")
    assert response.status_code == 422
    assert response.json()["error"].startswith("query.x: not a parameter of POST /v1/functions/{name}/invoke")


async def test_apply_refuses_a_key_it_does_not_take(api):
    """`function:` for `functions:` used to deploy nothing and answer 200."""
    response = await api.post("/v1/apply", json={"function": {}}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"].startswith("body.function:")


async def test_the_query_parameters_a_route_takes_still_work(api):
    response = await api.get("/v1/dead-letters", params={"limit": "5", "function": "f"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["dead_letters"] == []
    response = await api.get("/v1/events", params={"unrouted": "true", "limit": "3"}, headers=AUTH)
    assert response.status_code == 200


async def test_an_unknown_query_parameter_without_a_token_is_still_a_401(api):
    response = await api.get("/v1/status", params={"verbose": "1"})
    assert response.status_code == 401


async def test_pages_and_metrics_outside_v1_ignore_query_parameters(api):
    assert (await api.get("/healthz", params={"probe": "1"})).status_code == 200
    assert (await api.get("/metrics", params={"format": "text"})).status_code == 200


async def test_a_replay_takes_ids_not_booleans(api):
    """Found by schemathesis: `"ids": [false]` used to replay dead letter 0."""
    response = await api.post("/v1/dead-letters/replay", json={"ids": [False]}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"].startswith("body.ids.0:")


async def test_apply_takes_booleans_as_booleans(api):
    response = await api.post("/v1/apply", json={"prune": "yes"}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"].startswith("body.prune:")


async def test_a_digest_that_is_not_a_sha256_is_refused_as_documented(api, ops):
    assert ops["PUT /v1/bundles/{digest}"]["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{64}$"
    response = await api.put("/v1/bundles/body", content=b"x", headers=AUTH)
    assert response.status_code == 422 and response.json()["error"].startswith("path.digest:")
    response = await api.put("/v1/bundles/" + "0" * 64, content=b"x", headers=AUTH)
    assert response.status_code == 400 and "bundle refused" in response.json()["error"]


async def test_a_control_body_past_the_limit_is_a_413_before_the_token_is_checked(api):
    """A 20 MB /v1/apply used to be read whole, by anybody who could reach the port."""
    big = b'{"functions": {}, "pad": "' + b"x" * MAX_CONTROL_BODY_BYTES + b'"}'
    for headers in ({**AUTH, "content-type": "application/json"}, {"content-type": "application/json"}):
        response = await api.post("/v1/apply", content=big, headers=headers)
        assert response.status_code == 413, response.text
        assert response.json()["error"].endswith(f"exceeds the control API's limit of {MAX_CONTROL_BODY_BYTES} bytes")
        assert response.headers["cache-control"] == "no-store"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b" " * (MAX_CONTROL_BODY_BYTES // 4)

    response = await api.post("/v1/tokens", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413 and "limit of" in response.json()["error"]


async def test_a_control_body_under_the_limit_still_reaches_its_route(api):
    body = b'{"name": "ci", "scope": "read"}' + b" " * (MAX_CONTROL_BODY_BYTES - 100)
    response = await api.post("/v1/tokens", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 201, response.text
    response = await api.put("/v1/bundles/" + "0" * 64, content=b"x" * (MAX_CONTROL_BODY_BYTES + 1), headers=AUTH)
    assert response.status_code == 400 and "bundle refused" in response.json()["error"]  # its own, larger bound


@pytest.mark.parametrize("body", [b'{"function\\ud800": {}}', b'{"prune": "\\udcff"}'])
async def test_a_lone_surrogate_in_what_a_422_echoes_back_is_written_escaped_not_a_500(api, body):
    """JSON's `\\ud800` decodes to a string UTF-8 cannot write; the 422 that echoed it back
    raised UnicodeEncodeError while being written, and the caller got a 500."""
    response = await api.post("/v1/apply", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"], response.text  # valid JSON, the surrogate written as its escape


async def test_a_spec_with_a_lone_surrogate_is_refused_naming_where(api):
    """Sent as JSON (not through the CLI's manifest check): env `A: "\\ud800"` was taken, and the
    replica died setting it before it connected."""
    spec = b'{"handler": "h.py:f", "env": {"A": "\\ud800"}}'
    body = b'{"functions": {"a": {"spec": ' + spec + b', "bundle": "' + b"0" * 64 + b'"}}}'
    response = await api.post("/v1/apply", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("function a: env.A: '\\ud800' is not valid Unicode")


async def test_a_mesh_opens_its_sinks_to_replies_as_big_as_the_events_it_takes(tmp_path):
    """`--max-event-bytes` raised the ingress's limit, not the 1 MiB a sink reads of a reply."""
    settings = NodeSettings(data_dir=tmp_path / "data", store="memory://", token=TOKEN, launcher="subprocess",
                            max_event_bytes=3 * 2**20)
    node, _, _ = build(settings)
    await node.start()
    try:
        sink = node.runtime.open_sink(SinkSpec("subscription:s", "http://127.0.0.1:9/"))
        assert sink.max_answer_bytes == node.ingress.max_event_bytes == 3 * 2**20
    finally:
        await node.stop()
