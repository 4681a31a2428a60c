"""Which nodes run on the store: each node writes a heartbeat under `nodes/<id>`.

A heartbeat says where the node listens, when it was written, and the replicas of each
function the node runs, so `fmesh status` on any node shows every node and the totals
across them. A node whose heartbeat is older than `GONE_AFTER` is shown as gone; one
silent for `FORGET_AFTER` is removed by whichever node notices first.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.contracts import StateStore

log = meshlog.get("fmesh.deploy")

NODES = "nodes/"
HEARTBEAT_EVERY = 2.0   # seconds between heartbeats
GONE_AFTER = 3 * HEARTBEAT_EVERY
FORGET_AFTER = 600.0


def load_or_create_node_id(data_dir: Path) -> str:
    """This node's id, kept in its data dir so a restarted node is the same node."""
    path = data_dir / "node-id"
    if path.exists():
        stored = path.read_text().strip()
        if stored.replace("-", "").isalnum() and stored.isascii() and 0 < len(stored) <= 64:
            return stored
    host = "".join(c for c in socket.gethostname().lower() if c.isascii() and (c.isalnum() or c == "-"))[:30]
    node_id = f"{host or 'node'}-{secrets.token_hex(3)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(node_id + "\n")
    return node_id


class Membership:
    def __init__(self, state: StateStore, node_id: str, address: str,
                 replicas: Callable[[], dict[str, int]], clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.key = NODES + node_id
        self._state = state
        self._address = address
        self._replicas = replicas
        self._clock = clock
        self._started = clock()

    def heartbeat(self) -> bytes:
        return json.dumps({"id": self.node_id, "address": self._address, "started": self._started,
                           "heartbeat": self._clock(), "functions": self._replicas()}).encode()

    async def run(self) -> None:
        """Beat for as long as the node runs; a store that fails is said, and tried again."""
        while True:
            try:
                await self._state.put(self.key, self.heartbeat())
                await self._forget_the_long_gone()
            except Exception as exc:  # noqa: BLE001 - a heartbeat that fails must not end the beating
                log.warning("could not write this node's heartbeat", error=describe(exc))
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _forget_the_long_gone(self) -> None:
        for node in await members(self._state, self._clock()):
            if node["age"] > FORGET_AFTER:
                await self._state.delete(NODES + node["id"])

    async def leave(self) -> None:
        await self._state.delete(self.key)


async def members(state: StateStore, now: float) -> list[dict[str, Any]]:
    """Every node with a heartbeat, oldest-started first, with its age and whether it is up."""
    nodes = []
    for key, entry in (await state.list(NODES)).items():
        try:
            record = json.loads(entry.value)
            beat = float(record["heartbeat"])
            functions = {str(k): int(v) for k, v in dict(record.get("functions", {})).items()}
        except (ValueError, TypeError, KeyError):
            continue  # not a heartbeat fmesh wrote: not a node
        age = max(0.0, now - beat)
        nodes.append({"id": key.removeprefix(NODES), "address": str(record.get("address", "")),
                      "started": record.get("started"), "last_heartbeat": beat, "age": round(age, 1),
                      "state": "up" if age <= GONE_AFTER else "gone", "functions": functions})
    return sorted(nodes, key=lambda n: (n["started"] or 0, n["id"]))


def totals(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Replicas per function across the nodes that are up."""
    summed: dict[str, int] = {}
    for node in nodes:
        if node["state"] == "up":
            for function, replicas in node["functions"].items():
                summed[function] = summed.get(function, 0) + replicas
    return dict(sorted(summed.items()))
