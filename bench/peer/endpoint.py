"""The peer's ingress: what a user writes without fmesh. A FastAPI route parses each
binary-mode CloudEvent with the cloudevents SDK (validating it, as fmesh's ingress
does), publishes it to NATS JetStream in binary mode (attributes as `ce-*` NATS
headers, data as the body) and answers 202 once JetStream acked the publish, so an
accepted event is as durable as one fmesh accepted.

Run under uvicorn with uvloop and httptools (see pipeline.py); environment:
PEER_NATS_URL, PEER_SUBJECT.
"""

import os
from contextlib import asynccontextmanager

import nats
from cloudevents.core.bindings.http import HTTPMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from fastapi import FastAPI, Request, Response

FORMAT = JSONFormat()
SUBJECT = os.environ.get("PEER_SUBJECT", "bench.events")
JETSTREAM = {}


@asynccontextmanager
async def lifespan(app):
    client = await nats.connect(os.environ.get("PEER_NATS_URL", "nats://127.0.0.1:4222"))
    JETSTREAM["js"] = client.jetstream()
    yield
    await client.drain()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/", status_code=202)
async def ingest(request: Request) -> Response:
    body = await request.body()
    try:
        event = from_binary(HTTPMessage(dict(request.headers), body), FORMAT)
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds for a bad event
        return Response(f'{{"error": "{type(exc).__name__}"}}', status_code=400, media_type="application/json")
    message = to_binary(event, FORMAT)
    await JETSTREAM["js"].publish(SUBJECT, message.body, headers=message.headers)  # waits for the PubAck
    return Response(b'{"id":"%s"}' % event.get_id().encode(), status_code=202, media_type="application/json")
