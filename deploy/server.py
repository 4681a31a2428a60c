"""What `fmesh up` runs: a node, its control plane and API, served by uvicorn."""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fmesh.deploy.api import create_app
from fmesh.deploy.bundle import BundleLimits
from fmesh.deploy.claims import listen, lock_data_dir
from fmesh.deploy.control import ControlPlane
from fmesh.deploy.deployer import PackedFunction, apply_request, packed_function, size_warning, summarize
from fmesh.deploy.http_config import client_limits, run_fast, uvicorn_level, uvicorn_log_config
from fmesh.deploy.ingress_link import IngressLink
from fmesh.deploy.ingress_workers import IngressWorkers
from fmesh.deploy.manifest import check_references, load_manifest
from fmesh.deploy.node import Node
from fmesh.deploy.shutdown import MeshServer
from fmesh.deploy.tls import uvicorn_tls_options

from fmesh import meshlog
from fmesh.collector import tune_for_serving
from fmesh.errors import FmeshError, StartupError
from fmesh.permissions import keep_files_private
from fmesh.settings import (
    NodeSettings,
    load_or_create_mesh_id,
    load_or_create_token,
    settings_document,
    settings_from_document,
    token_path,
)
from fmesh.wording import plural

log = meshlog.get("fmesh.deploy")

def build(settings: NodeSettings) -> tuple[Node, ControlPlane, str]:
    token = load_or_create_token(settings.data_dir, settings.token)
    settings.mesh_id_given = settings.mesh_id_given or bool(settings.mesh_id)
    settings.mesh_id = load_or_create_mesh_id(settings.data_dir, settings.mesh_id)
    node = Node(settings)
    node.trust_control_token(token)
    control = ControlPlane(node, bundle_limits=BundleLimits(settings.max_bundle_bytes, settings.max_bundle_files),
                           bundle_grace=settings.bundle_grace)
    node.control_app = app = create_app(node, control, settings.metrics_public)
    node.on_end_streams.append(app.state.live.end)
    return node, control, token


async def deploy_local(control: ControlPlane, manifest_path: Path,
                       progress: Callable[[str], None] = lambda line: None) -> str:
    """Apply a manifest from this machine without going through HTTP."""
    manifest = load_manifest(manifest_path)
    check_references(manifest, manifest_path, set(control.functions) | set(control.deployed["bridge"]))
    packed = []
    for name, function in manifest.functions.items():
        if function.folder is None:
            continue  # external
        bundle = packed_function(name, function, manifest_path)
        if (warning := size_warning(bundle)) is not None:
            progress(f"warning: {warning}")  # as `fmesh deploy` says it
        await control.bundles.put(bundle.digest, bundle.data)
        await control.dependencies.install(control.bundles.path(bundle.digest), progress)
        packed.append(PackedFunction(name, bundle.digest, b"", 0))  # the code is stored: not held till the apply
    request = apply_request(manifest, packed, manifest_path.parent.resolve())
    changes = await control.apply({"function": request["functions"], "subscription": request["subscriptions"],
                                   "trigger": request["triggers"], "bridge": request["bridges"],
                                   "peer": request["peers"]})
    return summarize([c.__dict__ for c in changes])


async def serve(settings: NodeSettings, manifest: Path | None, sockets: list[socket.socket],
                tls: dict[str, Any] | None = None) -> int:
    """Run the mesh on `sockets` until a signal stops it; 0 when it stopped cleanly."""
    node, control, _ = build(settings)

    async def on_start() -> None:
        # What the start loaded (modules, the app, the node) lives as long as the mesh: out
        # of the collector's sight, a full collection no longer walks it. Walking it took
        # 50-80 ms of the loop under load, a latency spike for every event then. Before the
        # restore: functions and their deliveries come and go, and must stay collectable.
        # Collected first, so that no garbage of the start is frozen with it. Then the young
        # generation's threshold goes above what one busy turn leaves alive (fmesh/collector.py).
        gc.collect()
        gc.freeze()
        tune_for_serving()
        restored = await control.restore()
        node.run_in_background("follow the deployed state", control.follow())
        url = f"{settings.scheme}://{settings.host}:{settings.port}"
        say(f"fmesh mesh up on {url}  (events: POST {url}/, control: {url}/v1, docs: {url}/docs)")
        say(f"  mesh id {node.mesh_id}; store {node.store_url}; data dir {settings.data_dir}")
        say(f"  {ingress_auth_line(settings, node.ingress_auth_mode)}")
        say(f"  {metrics_line(settings)}")
        if settings.tls_client_ca:
            say(f"  mTLS: every client needs a certificate signed by {settings.tls_client_ca}")
        if settings.otlp_endpoint:
            say(f"  tracing: a span per hop, exported over OTLP/HTTP to {settings.otlp_endpoint}")
        if not settings.token:
            say(f"  control API token in {token_path(settings.data_dir)}")
        if restored:
            say(f"  restored {plural(restored, 'deployed resource')}")
        if manifest is not None:
            summary = await deploy_local(control, manifest, lambda line: say(f"  {line}"))
            say(f"  deployed {manifest}: {summary}")

    node.on_start.append(on_start)
    options: dict[str, Any] = {"http": client_limits(settings).protocol("auto"), **(tls or {}),
                               "timeout_keep_alive": settings.keepalive_timeout}
    before_stop = None
    if settings.ingress_workers > 0:
        sockets, before_stop = hand_port_to_workers(settings, node, sockets)
        # Only the workers connect: their limits and TLS hold; a pooled connection is theirs to close.
        options = {"http": "auto", "timeout_keep_alive": 3600}
    # ws="none": the mesh serves no WebSocket, and an upgrade request is then plain HTTP
    # that meets the header limits and timeouts like any other (an upgrade skipped them).
    config = uvicorn.Config(node, host=settings.host, port=settings.port, lifespan="on", ws="none",
                            log_level=uvicorn_level(settings.log_level), access_log=False, loop="auto",
                            log_config=uvicorn_log_config(settings.log_format), **options)
    server = MeshServer(config, node, settings.shutdown_grace, before_stop)
    try:
        await server.serve(sockets=sockets)
    except SystemExit:  # uvicorn's way out of a failed start, which the node has already said
        if node.start_failed:
            return 1
        raise
    log.info(server.stopped_line())
    return 0 if server.clean else 1


def hand_port_to_workers(settings: NodeSettings, node: Node, public: list[socket.socket],
                         ) -> tuple[list[socket.socket], Callable[[float], Awaitable[None]]]:
    """Serve the port from ingress workers: the mesh itself listens on a Unix socket in its
    run dir (the workers' proxy) and on the ingress link. The socket it serves, and what
    stops the workers."""
    link_path, http_path = node.run_dir / "ingress.sock", node.run_dir / "http.sock"
    internal = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    internal.bind(str(http_path))
    internal.listen(2048)
    workers = IngressWorkers(settings, public, link_path, http_path)
    link = IngressLink(node.ingress, workers.is_worker)

    async def start_workers() -> None:
        await link.start(link_path)
        await workers.start(node.ingress.max_event_bytes)  # as the node fitted it to the store
        count = settings.ingress_workers
        say(f"  {plural(count, 'ingress worker')} {'serves' if count == 1 else 'serve'} the port; "
            "this process stores and delivers")

    async def stop_workers(timeout: float) -> None:
        await workers.stop(timeout)
        await link.close()
        for sock in public:
            sock.close()

    node.on_start.append(start_workers)
    return [internal], stop_workers


def ingress_auth_line(settings: NodeSettings, mode: str) -> str:
    """The startup line saying who may publish, and why it is so when it is the default."""
    where = "with --tls-client-ca" if settings.tls_client_ca else f"on {settings.host}"
    why = "" if settings.ingress_auth else f", the default {where} (--ingress-auth to change)"
    meaning = {"off": "anyone who reaches this address may publish; credentials are not looked at",
               "optional": "callers with credentials are checked, callers without publish as anonymous",
               "required": "publishing without a token, signature or peer certificate gets 401"}[mode]
    return f"ingress auth {mode}{why}: {meaning}"


def metrics_line(settings: NodeSettings) -> str:
    """The startup line saying who may read /metrics and the API docs, and why by default."""
    why = "" if settings.public_metrics is not None else f", the default on {settings.host}"
    if settings.metrics_public:
        return (f"/metrics, /openapi.json and /docs public{why} (--no-public-metrics to change): anyone who "
                "reaches this address may read them; /v1 needs a token")
    return (f"/metrics, /openapi.json and /docs need a read or admin token{why} (--public-metrics to change); "
            "/healthz is public")


def say(line: str) -> None:
    log.say(line)


def exec_server(settings: NodeSettings, manifest: Path | None) -> None:
    """Replace this process (same pid) with a lean `python -m fmesh.deploy.server`: the
    CLI's own libraries (typer, rich) would otherwise stay in the mesh's memory for good.

    The settings, token included, go through an inherited pipe: a command line is
    readable by every local user (`ps`, /proc/*/cmdline)."""
    payload = json.dumps({**settings_document(settings), "manifest": str(manifest) if manifest else None}).encode()
    read_end, write_end = os.pipe()
    os.write(write_end, payload)  # a few hundred bytes: far below what a pipe buffers
    os.close(write_end)
    os.set_inheritable(read_end, True)
    os.execv(sys.executable, [sys.executable, "-m", "fmesh.deploy.server", "--settings-fd", str(read_end)])


def read_settings(argv: list[str]) -> tuple[NodeSettings, Path | None]:
    """The settings `exec_server` sent: `--settings-fd N`, N a pipe to read them from."""
    if len(argv) != 2 or argv[0] != "--settings-fd" or not argv[1].isdigit():
        raise StartupError("usage: python -m fmesh.deploy.server --settings-fd N (run `fmesh up` instead)")
    try:
        with os.fdopen(int(argv[1]), "rb") as pipe:
            options = json.loads(pipe.read())
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot read the settings from fd {argv[1]}: {exc}; run `fmesh up` instead") from exc
    manifest_path = options.pop("manifest", None)
    settings = settings_from_document(options)
    return settings, Path(manifest_path) if manifest_path else None


def main(argv: list[str]) -> int:
    """Own the data dir, then the port, and only then read or write anything in the data dir.

    Everything the mesh writes is private to its user (umask 0o077, see fmesh.permissions)."""
    keep_files_private()
    meshlog.configure()  # text until the settings say otherwise
    try:
        settings, manifest = read_settings(argv)
        meshlog.configure(settings.log_format, settings.log_level)
        tls = uvicorn_tls_options(settings)  # a missing or wrong file: said before anything is claimed
        with lock_data_dir(settings.data_dir, settings.port) as lock:
            if lock.note:
                log.info(lock.note)
            sockets = listen(settings.host, settings.port)
            if manifest is not None:
                load_manifest(manifest)  # refuse a bad manifest before anything starts
            return run_fast(serve(settings, manifest, sockets, tls))
    except FmeshError as exc:
        log.error(str(exc))
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
