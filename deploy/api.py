"""The control API under `/v1` (OpenAPI at `/docs`), protected by bearer tokens with scopes:
the mesh's own token and `admin` tokens may do everything, `read` tokens the GET routes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fmesh.broker.identity import Identity, Principal
from fmesh.broker.policy import control_refusal
from fmesh.deploy.api_errors import JSONAnswer, answers, errors
from fmesh.deploy.body_limit import ControlBodyLimit
from fmesh.deploy.bundle import MAX_BUNDLE_BYTES
from fmesh.deploy.control import ControlPlane
from fmesh.deploy.dashboard import SecurityHeaders, add_dashboard_routes
from fmesh.deploy.invoke_api import add_invoke_route
from fmesh.deploy.live import LiveStreams
from fmesh.deploy.membership import totals
from fmesh.deploy.operations import NodeOperations
from fmesh.deploy.query_check import refuse_unknown_query
from fmesh.deploy.sessions import Sessions
from fmesh.deploy.trail_api import add_trail_routes
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fmesh.bindings.http import media_type
from fmesh.errors import DeployError, EventTooLarge, StoreError
from fmesh.ratelimit import parse_rate

Digest = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="sha256 of the bundle, as `fmesh deploy` packs it")]


class StrictBody(BaseModel):
    """A request body taken as its schema says: no `true` for 1, no "yes" for true."""

    model_config = ConfigDict(strict=True)


class ApplyRequest(StrictBody):
    model_config = ConfigDict(strict=True, extra="forbid")  # `function:` for `functions:` is a 422, not a no-op

    functions: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name → {spec: manifest function, bundle: sha256 of its code}")
    subscriptions: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name → {spec}")
    triggers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name → {spec}")
    bridges: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name → {spec}")
    peers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name → {spec}")
    prune: bool = Field(False, description="delete deployed resources that are not in this request")
    verify: bool = Field(True, description="start each new or changed function once before it takes events; "
                         "if one does not start, nothing is deployed")


class ReplayRequest(StrictBody):
    ids: list[int] = Field(default_factory=list)
    function: str | None = Field(None, description="replay every dead letter of this function")


class TokenRequest(StrictBody):
    name: str = Field(description="lowercase letters, digits and '-'; events it publishes say token:<name>")
    scope: str = Field("publish", description="publish (POST / only), read (GET routes) or admin (everything)")
    allow: dict[str, Any] | None = Field(None, description="filter on what it may publish, as a subscription's")
    rate: str | float | None = Field(None, description="rate limit of what it publishes: 100/s, 600/m")
    burst: int | None = Field(None, ge=1, description="events at once within the rate limit")


def require_token(identity: Identity, sessions: Sessions | None = None):  # type: ignore[no-untyped-def]
    """A dependency: the caller's principal, refused with 401 (unknown) or 403 (out of scope).
    Without a bearer token, a dashboard session cookie will do (see fmesh.deploy.sessions)."""
    bearer = HTTPBearer(auto_error=False)

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if credentials is not None:
            principal = identity.bearer(credentials.credentials)
        else:
            principal = sessions.principal(request) if sessions is not None else None
        if principal is None:
            raise HTTPException(401, "missing or wrong bearer token: pass --token or set FMESH_TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        refusal = control_refusal(principal, request.method)
        if refusal is not None:
            raise HTTPException(403, refusal)
        return principal

    return check


def counted(node: NodeOperations, subscription: str) -> dict[str, Any]:
    """What a subscription's attempts came to, counted across redeploys and restarts."""
    counts = node.tallies.of(subscription)
    return {"delivered": counts.delivered, "failed": counts.failed, "retried": counts.retried,
            "redirected": counts.redirected, "replies": counts.replies, "latency_ms": counts.latency_ms()}


def filter_error_fields(node: NodeOperations, subscription: str) -> dict[str, Any]:
    """How many events a subscription's filter could not be evaluated on (counted as no match), and the last error."""
    errors = node.filter_errors(subscription)
    return {"filter_errors": errors.count, "last_filter_error": errors.last}


def function_status(node: NodeOperations, item: Any, pending: int, dead: int) -> dict[str, Any]:
    pool, delivery = item.pool, item.delivery
    return {
        "name": item.name, "version": item.version,
        "replicas": pool.ready + pool.starting + pool.draining,
        "ready": pool.ready, "starting": pool.starting, "desired": pool.desired,
        "inflight": delivery.inflight, "waiting": pool.waiting, "pending": pending,
        **counted(node, f"function:{item.name}"),
        "dead_lettered": dead, "last_error": delivery.last_error,
        "cold_start_last_ms": pool.cold_start_last_ms, "cold_start_median_ms": pool.cold_start_median_ms,
        "out_of_memory": item.out_of_memory, "retiring_versions": item.retiring,
        **filter_error_fields(node, f"function:{item.name}"),
    }


def sent_as_json(media: str) -> bool:
    """`application/json` or any `+json` media type: what FastAPI parses as JSON (not `text/json`)."""
    return media == "application/json" or media.endswith("+json")


def create_app(node: NodeOperations, control: ControlPlane, public_metrics: bool = True) -> FastAPI:
    """The control app; `public_metrics` False puts /metrics and the API docs behind a read token."""
    app = FastAPI(title="fmesh control API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=JSONAnswer,
                  responses=errors(401, 403, 422))  # every route in the schema takes a token, and no unknown query
    sessions = Sessions(node.identity)
    # After the token (a caller without one learns nothing), a typo in a query refused (deploy/query_check.py)
    auth = [Depends(require_token(node.identity, sessions)), Depends(refuse_unknown_query)]
    add_doc_routes(app, [] if public_metrics else auth)
    app.add_middleware(ControlBodyLimit)
    app.add_middleware(SecurityHeaders)  # outermost: on the limit's 413 too

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own, and the router's 404 and 405
    async def _error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONAnswer({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A body sent without a JSON content type reaches validation as bytes, in any encoding
        problems = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda raw: raw.decode("utf-8", "replace")})
        first = problems[0] if problems else {"loc": [], "msg": "does not validate"}
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"{first['msg']}{more}"
        if first["loc"] == ["body"] and not sent_as_json(media_type(request.headers)):
            message = f"{message}: send a JSON object with content-type: application/json"
        return JSONAnswer({"error": f"{where}: {message}", "detail": problems}, 422)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "mesh": node.mesh_id}  # a bridge asks, to keep loops from starting

    @app.get("/metrics", include_in_schema=False, dependencies=[] if public_metrics else auth)
    async def metrics() -> Response:
        """Prometheus text format. No payloads or secrets, but the names of functions and
        triggers and how busy they are: public only where --public-metrics says so."""
        from fmesh.deploy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE  # prometheus_client: on first use
        from fmesh.deploy.metrics import gather_depths, metrics_text

        return Response(metrics_text(node, await gather_depths(node)), media_type=METRICS_CONTENT_TYPE)

    for kind in control.kinds:
        add_resource_routes(app, control, kind, auth)

    @app.head("/v1/bundles/{digest}", dependencies=auth, response_class=Response, summary="Is this bundle here?",
              responses={200: {"description": "it is"}, 404: {"description": "it is not, nor in the store"},
                         **errors(422)})
    async def has_bundle(digest: Digest) -> Response:
        return Response(status_code=200 if await _has(control, digest) else 404)

    @app.put("/v1/bundles/{digest}", dependencies=auth, summary="Upload a function's code (tar.gz)",
             responses=errors(400, 413, 422), openapi_extra={"requestBody": {"required": True, "content": {
                 "application/gzip": {"schema": {"type": "string", "format": "binary"}}}}})
    async def put_bundle(digest: Digest, request: Request) -> dict[str, Any]:
        try:
            await control.bundles.put(digest, await read_upload(request, MAX_BUNDLE_BYTES))
        except EventTooLarge as exc:
            raise HTTPException(413, f"bundle of {exc.size} bytes or more exceeds {exc.limit}") from exc
        except (ValueError, OSError) as exc:
            raise HTTPException(400, f"bundle refused: {exc}") from exc
        return {"bundle": digest}

    @app.post("/v1/bundles/{digest}/prepare", dependencies=auth, response_class=Response,
              summary="Install a bundle's requirements.txt; streams pip's output as JSON lines",
              responses={**answers("application/x-ndjson"), **errors(404, 422)})
    async def prepare(digest: Digest) -> StreamingResponse:
        try:
            lines = await control.prepare(digest)
        except (DeployError, ValueError) as exc:
            raise HTTPException(404, str(exc)) from exc

        async def stream():  # type: ignore[no-untyped-def]
            try:
                async for line in lines:
                    yield json.dumps({"line": line}) + "\n"
            except DeployError as exc:
                yield json.dumps({"ok": False, "error": str(exc)}) + "\n"
                return
            yield json.dumps({"ok": True}) + "\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    @app.post("/v1/apply", dependencies=auth, summary="Deploy functions", responses=errors(400, 422))
    async def apply(request: ApplyRequest) -> dict[str, Any]:
        try:
            changes = await control.apply({"function": request.functions, "subscription": request.subscriptions,
                                           "trigger": request.triggers, "bridge": request.bridges,
                                           "peer": request.peers},
                                          request.prune, request.verify)
        except DeployError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"changes": [asdict(c) for c in changes], "warnings": control.warnings()}

    @app.get("/v1/status", dependencies=auth, summary="Replicas and delivery counts per function")
    async def status() -> dict[str, Any]:
        dead = await node.dead_letter_counts()
        items = []
        for item in node.function_status():
            pending = await node.pending(f"function:{item.name}")
            items.append(function_status(node, item, pending, dead.get(f"function:{item.name}", 0)))
        sinks, bridges = [], []
        for s in node.sink_status():
            item = {"name": s.name, "url": s.url, **counted(node, s.name), "inflight": s.delivery.inflight,
                    "pending": await node.pending(s.name), "dead_lettered": dead.get(s.name, 0),
                    "last_error": s.delivery.last_error, **filter_error_fields(node, s.name)}
            if s.bridge is None:
                sinks.append(item)
            else:
                bridges.append(await bridge_status(node, item, s.bridge, s.delivery.delivered))
        triggers = [asdict(t) for t in node.trigger_status()]
        nodes = await node.nodes()
        return {"mesh": node.mesh_id, "node": node.node_id, "nodes": nodes, "totals": totals(nodes),
                "broken": control.broken, "functions": items, "sinks": sinks, "bridges": bridges,
                "bridged_in": dict(node.tallies.bridged), "triggers": triggers, "store": node.store_url,
                "unrouted": node.tallies.unrouted, "events_in": dict(sorted(node.tallies.events_in.items()))}

    @app.get("/v1/functions/{name}/logs", dependencies=auth, summary="A function's stdout and stderr",
             response_class=Response, responses={**answers("text/plain"), **errors(404, 422)})
    async def logs(name: str, lines: int = Query(200, ge=0, le=100_000), follow: bool = False) -> Response:
        if name not in control.functions:
            raise HTTPException(404, f"no function named {name!r}")
        past = node.logs.tail(name, lines)
        if not follow:
            return Response("".join(past), media_type="text/plain; charset=utf-8")

        async def stream():  # type: ignore[no-untyped-def]
            for line in past:
                yield line
            async for line in node.logs.follow(name):
                yield line

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    @app.get("/v1/dead-letters", dependencies=auth, summary="Events that exhausted their delivery policy",
             responses=errors(422))
    async def dead_letters(function: str | None = None, limit: int = Query(1000, ge=1, le=100_000)) -> dict:
        letters = await node.dead_letters(subscription_of(function), limit)
        return {"dead_letters": [dead_letter_json(d) for d in letters]}

    @app.post("/v1/dead-letters/replay", dependencies=auth, summary="Deliver dead letters again",
              responses=errors(400, 422, 503))
    async def replay(request: ReplayRequest) -> dict[str, Any]:
        if not request.ids and not request.function:
            raise HTTPException(422, "name the dead letters to replay: ids, or a function")
        ids = list(request.ids)
        if request.function:
            ids += [d.id for d in await node.dead_letters(subscription_of(request.function), 100_000)]
        try:
            letters, unrouted = await node.replay(ids)
        except StoreError as exc:
            raise HTTPException(503, f"nothing replayed: {exc}") from exc
        missing = set(request.ids) - {d.id for d in letters} - set(unrouted)
        return {"replayed": len(letters), "not_found": sorted(missing), "not_routed": unrouted}

    @app.delete("/v1/dead-letters", dependencies=auth, summary="Purge dead letters", responses=errors(422))
    async def purge(function: str | None = None) -> dict[str, Any]:
        return {"purged": await node.purge_dead_letters(subscription_of(function))}

    add_token_routes(app, node, auth)
    add_trail_routes(app, node, auth)
    add_invoke_route(app, node, control, auth)
    app.state.live = LiveStreams(status)  # the dashboard's live view: what /v1/status says, every second
    add_dashboard_routes(app, sessions, node.identity, auth, app.state.live)
    return app


def add_doc_routes(app: FastAPI, auth: list) -> None:
    """/openapi.json, /docs (Swagger UI) and /redoc, as FastAPI serves them, behind `auth`
    (none: public). Private docs still load in a browser for whoever sends a token; the
    Swagger page itself then fetches /openapi.json without one, so read that with a token."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=auth)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


async def bridge_status(node: NodeOperations, item: dict[str, Any], stats: Any, delivered: int) -> dict[str, Any]:
    """A bridge as `fmesh status` shows it: state, backlog, how long the oldest has waited;
    forwarded and looped since it started (`delivered`: by its sidecar, since then)."""
    backlog, oldest = await node.backlog(item["name"])
    if stats.state == "connected":
        item = {**item, "last_error": None}  # an old failure, since mended, is no news
    return {**item, "name": item["name"].split(":", 1)[1], "state": stats.state, "peer_mesh": stats.peer_mesh,
            "backlog": backlog, "oldest_waiting_s": None if oldest is None else round(time.time() - oldest, 1),
            "looped": stats.looped, "forwarded": delivered}  # a loop is not-sent, not delivered


def add_token_routes(app: FastAPI, node: NodeOperations, auth: list) -> None:
    """GET /v1/tokens, POST /v1/tokens (the token is in the answer, and nowhere else), DELETE /v1/tokens/{name}."""

    @app.get("/v1/tokens", dependencies=auth, summary="Tokens (names, scopes and rules; never the tokens)")
    async def list_tokens() -> dict[str, Any]:
        return {"tokens": [r.public() for _, r in sorted(node.tokens.records.items())]}

    @app.post("/v1/tokens", dependencies=auth, status_code=201, summary="Make a token; it is shown only here",
              responses=errors(400, 409, 422))
    async def create_token(request: TokenRequest) -> dict[str, Any]:
        if request.name in node.tokens.records:
            raise HTTPException(409, f"there is already a token named {request.name!r}: "
                                f"revoke it first (fmesh tokens revoke {request.name})")
        try:
            rate = parse_rate(request.rate) if request.rate is not None else None
            record, token = await node.tokens.create(request.name, request.scope, request.allow, rate, request.burst)
        except (DeployError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from exc
        return {**record.public(), "token": token}

    @app.delete("/v1/tokens/{name}", dependencies=auth, summary="Revoke a token: it stops working at once",
                responses=errors(404, 422))
    async def revoke_token(name: str) -> dict[str, Any]:
        if not await node.tokens.revoke(name):
            raise HTTPException(404, f"no token named {name!r}")
        return {"revoked": name}


def add_resource_routes(app: FastAPI, control: ControlPlane, kind: str, auth: list) -> None:
    """GET /v1/<kind>s, GET and DELETE /v1/<kind>s/{name}, for functions, subscriptions and triggers."""
    deployed = control.deployed[kind]

    async def list_all() -> dict[str, Any]:
        return {f"{kind}s": [describe(r) for _, r in sorted(deployed.items())]}

    async def get_one(name: str) -> dict[str, Any]:
        if name not in deployed:
            raise HTTPException(404, f"no {kind} named {name!r}")
        return describe(deployed[name])

    async def delete_one(name: str) -> dict[str, Any]:
        try:
            deleted = await control.delete(kind, name)
        except DeployError as exc:
            raise HTTPException(409, str(exc)) from exc
        if not deleted:
            raise HTTPException(404, f"no {kind} named {name!r}")
        return {"deleted": name}

    app.get(f"/v1/{kind}s", dependencies=auth, summary=f"Deployed {kind}s")(list_all)
    app.get(f"/v1/{kind}s/{{name}}", dependencies=auth, summary=f"One {kind}", responses=errors(404, 422))(get_one)
    app.delete(f"/v1/{kind}s/{{name}}", dependencies=auth, summary=f"Delete a {kind}",
               responses=errors(404, 409, 422))(delete_one)


def subscription_of(function: str | None) -> str | None:
    """`hello` means the function's subscription; a full name (`subscription:audit`) is kept."""
    if function is None:
        return None
    return function if ":" in function else f"function:{function}"


async def read_upload(request: Request, limit: int) -> bytes:
    """The request body, refusing (EventTooLarge) as soon as it passes `limit`: Content-Length first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise EventTooLarge(int(declared), limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise EventTooLarge(size, limit)
            chunks.append(chunk)
    except ClientDisconnect:  # a deploy cut short: nothing to store, nobody to tell
        raise HTTPException(400, f"the upload ended after {size} bytes") from None
    return b"".join(chunks)


async def _has(control: ControlPlane, digest: str) -> bool:
    try:
        return await control.bundles.fetch(digest)
    except ValueError:
        return False


def describe(resource: Any) -> dict[str, Any]:
    extra = {"bundle": resource.bundle} if resource.bundle else {}
    return {"name": resource.name, "version": resource.version, **extra,
            **resource.spec.model_dump(mode="json", exclude_none=True)}


def dead_letter_json(letter: Any) -> dict[str, Any]:
    return {"id": letter.id, "subscription": letter.subscription, "attempts": letter.attempts,
            "reason": letter.reason, "status": letter.status, "error": letter.error,
            "failed_at": letter.failed_at, "event": {"attributes": letter.event.attributes,
                                                     "data": _data_text(letter.event.payload)}}


def _data_text(payload: bytes | None) -> str | None:
    if payload is None:
        return None
    return payload.decode("utf-8", "replace")
