"""The event trail on the control API: `/v1/trail/{id}` (`fmesh trace`), `/v1/events`
(`fmesh events list`) and `/v1/events/stream` (`fmesh events tail`, server-sent events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse
from fmesh.broker.filters import MATCH_ALL, Filter, FilterError, all_of, compile_dialect
from fmesh.broker.trail.live import Ended, Listener, LiveFeed, Record, TooManyWatchers
from fmesh.broker.trail.recorder import TrailRecorder
from fmesh.deploy.api_errors import errors
from fmesh.deploy.operations import NodeOperations
from pydantic import StringConstraints

from fmesh.durations import format_duration
from fmesh.wording import plural

Pair = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{1,20}=")]  # attribute=value
PING_EVERY = 15.0  # seconds between keep-alive comments on a quiet stream
NO_TRAIL = "this mesh keeps no event trail (it runs with --trail-retention 0)"


def add_trail_routes(app: FastAPI, node: NodeOperations, auth: list) -> None:
    @app.get("/v1/trail/{event_id:path}", dependencies=auth, summary="Where an event went (fmesh trace)",
             responses=errors(404, 422))
    async def trail(event_id: str) -> dict[str, Any]:
        entries = await _trail(node).trace(event_id)
        if not entries:
            recorder = _trail(node)
            kept = f"{plural(recorder.max_events, 'event')}, for {format_duration(recorder.retention)}"
            raise HTTPException(404, f"no event with id {event_id!r} in the trail (it keeps the last {kept})")
        return {"trail": entries}

    @app.get("/v1/events", dependencies=auth, summary="Recent events, newest first (fmesh events list)",
             responses=errors(404, 422))
    async def events(unrouted: bool = Query(False, description="only those that matched no subscription"),
                     limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"events": await _trail(node).recent(limit, unrouted)}

    @app.get("/v1/events/stream", dependencies=auth, summary="Events and their outcomes as they happen (SSE)",
             response_class=StreamingResponse, responses={**errors(404, 422, 503),
                                                          200: {"content": {"text/event-stream": {}}}})
    async def stream(filter: list[Pair] = Query([], description="attribute=value, each must match"),
                     cesql: str | None = Query(None, description="a CESQL expression the event must match"),
                     function: str | None = Query(None, description="only what concerns this function"),
                     ) -> StreamingResponse:
        watch = Watch(_event_filter(filter, cesql), f"function:{function}" if function else None)
        feed = _trail(node).live
        try:
            listener = feed.listen()
        except TooManyWatchers as exc:
            raise HTTPException(503, str(exc)) from exc
        return StreamingResponse(_sse(watch, listener, feed), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _trail(node: NodeOperations) -> TrailRecorder:
    if node.trail is None:
        raise HTTPException(404, NO_TRAIL)
    return node.trail


def _event_filter(pairs: list[str], cesql: str | None) -> Filter:
    """`type=com.x` pairs and a CESQL expression, as one filter; 422 naming what is wrong."""
    parts = []
    try:
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise FilterError("filter", f"expected attribute=value, got {pair[:80]!r}")
            parts.append(compile_dialect({"exact": {name: value}}, "filter"))
        if cesql is not None:
            parts.append(compile_dialect({"cesql": cesql}, "cesql"))
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from exc
    return all_of(parts) if parts else MATCH_ALL


class Watch:
    """What one watcher asked to see."""

    def __init__(self, events: Filter, subscription: str | None) -> None:
        self.events = events
        self.subscription = subscription

    def wants(self, record: Record) -> bool:
        if self.subscription is not None:
            concerned = getattr(record.what, "routed", None) or (getattr(record.what, "subscription", None),)
            if self.subscription not in concerned:
                return False
        try:
            return self.events(record.event.attributes)
        except Exception:  # noqa: BLE001 - a filter that cannot judge an event does not show it
            return False


async def _sse(watch: Watch, listener: Listener, feed: LiveFeed) -> AsyncIterator[bytes]:
    try:
        yield b": watching\n\n"  # the answer starts at once: the client knows it is connected
        while True:
            try:
                record = await listener.next(PING_EVERY)
            except Ended:
                return
            if record is None:
                yield b": ping\n\n"
            elif watch.wants(record):
                yield sse_message(record, listener)
    finally:
        feed.forget(listener)


def sse_message(record: Record, listener: Listener) -> bytes:
    body = record.what._asdict()
    body["type"] = record.event.type
    if "routed" in body:
        body["routed"] = list(body["routed"])
    if listener.missed:
        body["missed"] = listener.missed  # records this watcher fell too far behind to get
    return f"event: {record.kind}\ndata: {json.dumps(body, ensure_ascii=True)}\n\n".encode()
