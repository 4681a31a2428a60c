"""The control API refuses query parameters its routes do not take.

FastAPI ignores a parameter no route declares, so `GET /v1/dead-letters?limt=5` would
answer all of them as if the limit had been read: a typo that changes the answer without
a word. Under `/v1` such a request is a 422 that names the parameter and what the route
takes. The dashboard's pages and `/metrics` keep ignoring them (cache-busting queries,
a scraper's `params`).
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

CHECKED_PREFIX = "/v1/"

_taken_by: dict[int, frozenset[str]] = {}  # id(route) -> its query parameters; routes live as long as the app


def taken(route: APIRoute) -> frozenset[str]:
    """The query parameters a route reads, its dependencies' included, by the name sent."""
    names = _taken_by.get(id(route))
    if names is None:
        names = _taken_by[id(route)] = frozenset(_query_names(route.dependant))
    return names


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def refuse_unknown_query(request: Request) -> None:
    """A dependency: 422 for a query parameter the matched `/v1` route does not take."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute) or not route.path.startswith(CHECKED_PREFIX):
        return
    names = taken(route)
    unknown = sorted(set(request.query_params) - names)
    if unknown:
        takes = f"it takes {', '.join(sorted(names))}" if names else "it takes none"
        raise HTTPException(422, f"query.{unknown[0]}: not a parameter of {request.method} {route.path} "
                                 f"({takes})" + (f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""))
