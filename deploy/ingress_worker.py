"""An ingress worker: a process of its own that serves the mesh's HTTP port beside the
others (`fmesh up --ingress-workers N`), so that reading and parsing events, most of
their cost at the ingress, runs on another core than the mesh's store and deliveries.

Events (`POST /`) are read and parsed here and handed to the mesh over the ingress link;
every other request is proxied to the mesh. The mesh starts its workers, gives them its
listening sockets, and replaces one that exits; a worker whose mesh is gone stops.

    python -m fmesh.deploy.ingress_worker --options-fd N   (the mesh runs this)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fmesh.broker.ingress_front import IngressFront
from fmesh.deploy.http_config import client_limits, run_fast, uvicorn_level, uvicorn_log_config
from fmesh.deploy.ingress_link import LinkClient
from fmesh.deploy.proxy import Proxy
from fmesh.deploy.tls import uvicorn_tls_options
from fmesh.runtime.forking import prctl

from fmesh import meshlog
from fmesh.asgi import Receive, Scope, Send, refused_headers
from fmesh.collector import tune_for_serving
from fmesh.errors import FmeshError, StartupError
from fmesh.permissions import keep_files_private
from fmesh.settings import NodeSettings, settings_from_document

PR_SET_PDEATHSIG = 1
log = meshlog.get("fmesh.deploy")


class WorkerApp:
    """The worker's ASGI app: events to the front, the rest to the proxy."""

    def __init__(self, settings: NodeSettings, link: Path, mesh_http: Path, max_event_bytes: int) -> None:
        self.settings = settings
        self.server: uvicorn.Server | None = None
        self.link = LinkClient(link, on_lost=self._mesh_gone)
        self.front = IngressFront(self.link.hand_on, max_event_bytes, settings.max_extensions)
        self.proxy = Proxy(mesh_http)

    def _mesh_gone(self) -> None:
        if self.server is not None and not self.server.should_exit:
            log.info("the mesh closed this ingress worker's link: stopping")
            self.server.should_exit = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if await refused_headers(scope, send, self.settings.max_header_bytes, self.settings.max_headers):
            return
        await (self.front if scope["path"] == "/" else self.proxy)(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.link.connect()
                except OSError as exc:
                    log.error(f"this ingress worker cannot reach the mesh: {exc}")
                    await send({"type": "lifespan.startup.failed", "message": ""})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.link.close()
                await self.proxy.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def serve(settings: NodeSettings, options: dict[str, Any], sockets: list[socket.socket]) -> int:
    app = WorkerApp(settings, Path(options["link"]), Path(options["mesh_http"]), options["max_event_bytes"])
    limits = client_limits(settings)
    limits.max_connections = max(1, limits.max_connections // options["workers"])  # the mesh's cap, shared
    tls = uvicorn_tls_options(settings)
    config = uvicorn.Config(app, lifespan="on", ws="none", log_level=uvicorn_level(settings.log_level),
                            access_log=False, loop="auto", log_config=uvicorn_log_config(settings.log_format),
                            timeout_keep_alive=settings.keepalive_timeout,
                            timeout_graceful_shutdown=max(0.1, settings.shutdown_grace / 2),
                            **{"http": limits.protocol("auto"), **tls})
    app.server = server = uvicorn.Server(config)
    tune_for_serving()
    await server.serve(sockets=sockets)
    return 0


def read_options(argv: list[str]) -> dict[str, Any]:
    if len(argv) != 2 or argv[0] != "--options-fd" or not argv[1].isdigit():
        raise StartupError("usage: python -m fmesh.deploy.ingress_worker --options-fd N (`fmesh up` runs it)")
    with os.fdopen(int(argv[1]), "rb") as pipe:
        return json.loads(pipe.read())


def main(argv: list[str]) -> int:
    keep_files_private()
    meshlog.configure()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the mesh gone without a word: stop too
    try:
        options = read_options(argv)
        settings = settings_from_document(options["settings"])
        meshlog.configure(settings.log_format, settings.log_level)
        sockets = [socket.socket(fileno=fd) for fd in options["sockets"]]
        return run_fast(serve(settings, options, sockets))
    except (FmeshError, OSError, ValueError) as exc:
        log.error(f"ingress worker: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
