"""How a mesh process serves HTTP: uvicorn's logging, the limits on each client, and the
event loop; shared by the mesh and its ingress workers (and light: no FastAPI here)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from fmesh.deploy.connections import ClientLimits, default_max_connections

from fmesh.settings import NodeSettings


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's loggers through the mesh's formatter, text or json, and each of their
    messages at most once per 10 s: a client sending malformed HTTP cannot flood the log."""
    formatter = "fmesh.meshlog.JsonFormatter" if log_format == "json" else "fmesh.meshlog.TextFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "mesh", "stream": "ext://sys.stderr",
               "filters": ["repeats"]}
    return {"version": 1, "disable_existing_loggers": False,
            "filters": {"repeats": {"()": "fmesh.meshlog.QuietRepeats"}},
            "formatters": {"mesh": {"()": formatter}},
            "handlers": {"mesh": handler},
            "loggers": {name: {"handlers": ["mesh"], "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}


def uvicorn_level(level: str) -> str:
    """uvicorn says little worth reading below a warning (each start, each request)."""
    return level if level == "error" else "warning"


def client_limits(settings: NodeSettings) -> ClientLimits:
    """What a slow or idle client may hold (header, body and keep-alive time, a connection)."""
    return ClientLimits(header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
                        min_body_rate=settings.min_body_rate, max_header_bytes=settings.max_header_bytes,
                        max_connections=settings.max_connections or default_max_connections())


def run_fast(coroutine: Coroutine[Any, Any, int]) -> int:
    """asyncio.run on uvloop when it is installed (uvicorn[standard] brings it): the mesh's
    loop is created here, so uvicorn's own loop choice would come too late."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


