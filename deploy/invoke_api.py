"""`POST /v1/functions/{name}/invoke` (`fmesh invoke`): one event straight to one function,
past the filters, and its reply in the answer, for trying a function out.

The event takes the path a delivery takes from the sidecar on (a replica started if none
runs, the function's timeout), as one attempt without retries; its reply comes back here
instead of being published, and nothing of it is stored.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request, Response
from fmesh.broker.identity import SENDER, Principal
from fmesh.deploy.api_errors import errors
from fmesh.deploy.control import ControlPlane
from fmesh.deploy.operations import NodeOperations

from fmesh.asgi import header_dict
from fmesh.bindings.http import read_events, utf8_attributes, write_binary
from fmesh.errors import EventTooLarge, HandlerError, HandlerTimeout, InvalidEvent, UnsupportedContentType
from fmesh.events import PATH, Event, TooManyExtensions


def add_invoke_route(app: FastAPI, node: NodeOperations, control: ControlPlane, auth: list) -> None:
    @app.post("/v1/functions/{name}/invoke", summary="Send one event straight to a function; answers its reply",
              response_class=Response,
              responses={200: {"description": "the reply, a CloudEvent in binary mode"},
                         204: {"description": "the function returned no reply"},
                         **errors(400, 404, 409, 413, 415, 422, 502, 503, 504)},
              openapi_extra={"requestBody": {"required": True, "description": "one CloudEvent, binary or "
                                             "structured mode", "content": {"application/cloudevents+json": {}}}},
              dependencies=auth[1:])  # the token is auth[0], taken as the principal below
    async def invoke(name: str, request: Request, principal: Principal = auth[0]) -> Response:
        check_runs(node, control, name)
        event = await read_event(node, request)
        event.attributes[SENDER] = principal.name  # as the ingress stamps it; only peers say where it has been
        event.attributes.pop(PATH, None)
        try:
            reply = await node.invoke(name, event)
        except HandlerTimeout as exc:
            raise HTTPException(504, f"function {name}: {exc}") from exc
        except HandlerError as exc:
            raise HTTPException(502, f"function {name} failed: {exc}") from exc
        except KeyError:  # removed while the event waited
            raise HTTPException(404, f"no function named {name!r}") from None
        if reply is None:
            return Response(status_code=204)
        headers, body = write_binary(reply)
        return Response(body, headers=headers)


def check_runs(node: NodeOperations, control: ControlPlane, name: str) -> None:
    """404 for a function that is not deployed; 409 for one no node of the mesh runs; 503 for
    one that does not run on this node now."""
    resource = control.functions.get(name)
    broken = control.broken.get(f"function/{name}")
    if resource is None and broken is None:
        raise HTTPException(404, f"no function named {name!r}")
    if resource is not None and getattr(resource.spec, "external", False):
        raise HTTPException(409, f"function {name} is external: it runs outside the mesh, behind `fmesh sidecar`; "
                                 "send it an event with `fmesh send` instead")
    if broken is not None or not node.runs_here(name):
        raise HTTPException(503, f"function {name} does not run on this node now"
                                 + (f": {broken}" if broken else ""))


async def read_event(node: NodeOperations, request: Request) -> Event:
    from fmesh.deploy.api import read_upload  # api.py imports this module

    limit, max_extensions = node.event_limits
    try:
        body = await read_upload(request, limit)
        events = read_events(utf8_attributes(header_dict(request.scope)), body, max_extensions)
    except (EventTooLarge, TooManyExtensions) as exc:
        raise HTTPException(413, str(exc)) from exc
    except UnsupportedContentType as exc:
        raise HTTPException(415, str(exc)) from exc
    except InvalidEvent as exc:
        raise HTTPException(400, str(exc)) from exc
    if len(events) != 1:
        raise HTTPException(400, f"invoke takes one event, got a batch of {len(events)}")
    return events[0]
