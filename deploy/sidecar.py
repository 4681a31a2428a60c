"""`fmesh sidecar`: deliver one external function's events, from the store the nodes share.

The function lives outside fmesh's runners (any language, any host) and serves the
CloudEvents HTTP binding at `--target`, as a Dapr app serves its sidecar. The sidecar is
a node that runs nothing but that function's delivery: it claims the function's
deliveries from the store, applies the function's delivery policy (retries, timeout,
dead letters), and publishes its replies into the mesh, routed by every filter deployed
(it follows the deployed state like any node, so a redeploy reaches it too).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from fmesh.deploy.control import ControlPlane
from fmesh.deploy.node import Node

from fmesh import meshlog
from fmesh.errors import FmeshError
from fmesh.permissions import private_dir
from fmesh.settings import NodeSettings

WAITING_NOTE_EVERY = 30.0  # seconds between reminders that the function is not deployed yet
log = meshlog.get("fmesh.deploy")


async def run_sidecar(function: str, target: str, settings: NodeSettings) -> int:
    try:
        note = private_dir(settings.data_dir)  # its logs hold the function's output
    except OSError as exc:
        log.error(f"cannot use data dir {settings.data_dir}: {exc.strerror}")
        return 1
    if note:
        log.info(note)
    node = Node(settings, address=f"sidecar of {function} → {target}")
    if not node.store.shared:
        log.error(f"fmesh sidecar needs the store the nodes share (nats://...), not {node.store_url}: "
                  "a SQLite or memory store belongs to one mesh process")
        return 2
    node.external_targets[function] = target
    control = ControlPlane(node, serves=function)
    try:
        await node.start()
        await control.restore()
    except FmeshError as exc:
        log.error(str(exc))
        await node.stop(grace=1)
        return 1
    node.run_in_background("follow the deployed state", control.follow())
    log.say(f"fmesh sidecar of {function} delivering to {target}; store {node.store_url}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        _say_what_is_missing(control, function)
        try:
            async with asyncio.timeout(WAITING_NOTE_EVERY):
                await stop.wait()
        except TimeoutError:
            pass
    await node.stop()
    log.say("fmesh sidecar stopped; what it had not delivered stays in the store")
    return 0


def _say_what_is_missing(control: ControlPlane, function: str) -> None:
    deployed = control.functions.get(function)
    if deployed is None:
        log.info(f"waiting: no function {function} is deployed yet (deploy it with `external: true`)",
                 function=function)
    elif not getattr(deployed.spec, "external", False):
        log.warning(f"function {function} is not external: the nodes run it, so this sidecar delivers nothing "
                    "(set `external: true` to serve it here)", function=function)


def data_dir_for(function: str, base: Path) -> Path:
    """A sidecar's own data dir (logs, node id), beside the node's by default."""
    return base / "sidecars" / function
