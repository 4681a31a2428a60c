"""What `fmesh up` runs: a node, its control plane and API, served by uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import uvicorn
from rich.console import Console

from fmesh.deploy.api import create_app
from fmesh.deploy.bundle import pack
from fmesh.deploy.control import ControlPlane
from fmesh.deploy.deployer import PackedFunction, apply_request, summarize
from fmesh.deploy.manifest import load_manifest
from fmesh.node import Node
from fmesh.settings import NodeSettings, load_or_create_token, token_path


def build(settings: NodeSettings) -> tuple[Node, ControlPlane, str]:
    token = load_or_create_token(settings.data_dir, settings.token)
    node = Node(settings)
    control = ControlPlane(node)
    node.control_app = create_app(node, control, token)
    return node, control, token


async def deploy_local(control: ControlPlane, manifest_path: Path,
                       progress: Callable[[str], None] = lambda line: None) -> str:
    """Apply a manifest from this machine without going through HTTP."""
    manifest = load_manifest(manifest_path)
    packed = []
    for name, function in manifest.functions.items():
        digest, data = pack(manifest_path.parent / function.folder)
        control.bundles.put(digest, data)
        await control.dependencies.install(control.bundles.path(digest), progress)
        packed.append(PackedFunction(name, digest, b"", 0))
    request = apply_request(manifest, packed)
    changes = await control.apply({"function": request["functions"], "subscription": request["subscriptions"],
                                   "trigger": request["triggers"]})
    return summarize([c.__dict__ for c in changes])


async def serve(settings: NodeSettings, manifest: Path | None, console: Console) -> None:
    if manifest is not None:
        load_manifest(manifest)  # refuse a bad manifest before anything starts
    node, control, _ = build(settings)

    async def on_start() -> None:
        restored = await control.restore()
        url = f"http://{settings.host}:{settings.port}"
        console.print(f"[bold green]fmesh[/] mesh up on {url}  (events: POST {url}/, control: {url}/v1, "
                      f"docs: {url}/docs)")
        console.print(f"  store {node.log.url}; data dir {settings.data_dir}")
        if not settings.token:
            console.print(f"  control API token in {token_path(settings.data_dir)}")
        if restored:
            console.print(f"  restored {restored} deployed resource(s)")
        if manifest is not None:
            summary = await deploy_local(control, manifest, lambda line: console.print(f"  [dim]{line}[/]"))
            console.print(f"  deployed {manifest}: {summary}")

    node.on_start.append(on_start)
    config = uvicorn.Config(node, host=settings.host, port=settings.port, lifespan="on",
                            log_level="warning", access_log=False, loop="auto", http="auto")
    await uvicorn.Server(config).serve()
