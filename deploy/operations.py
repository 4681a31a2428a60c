"""What the control plane (the API, the resource kinds, the metrics) may ask of a node.

One small interface, so the control plane never reaches into the node's store, broker
or runtime: whichever engine is behind the node, and however many nodes share it, these
are the questions and the commands.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from fmesh.broker.broker import BridgedStats
from fmesh.broker.filters import Filter, FilterErrors
from fmesh.broker.identity import Identity, PeerCredential
from fmesh.broker.policy import Rule
from fmesh.broker.tallies import Tallies
from fmesh.broker.tokens import Tokens
from fmesh.broker.trail.recorder import TrailRecorder
from fmesh.runtime.logs import LogStore
from fmesh.runtime.runtime import FunctionSpec, FunctionStatus, SinkSpec, SinkStatus
from fmesh.triggers.base import TriggerStatus
from fmesh.triggers.config import TriggerEntry

from fmesh.contracts import BlobStore, DeadLetter, StateStore
from fmesh.events import Event


class NodeOperations(Protocol):
    mesh_id: str
    node_id: str
    data_dir: Path
    state: StateStore          # the deployed resources, shared by every node on the store
    identity: Identity         # who the control API's callers are
    tokens: Tokens
    trail: TrailRecorder | None   # where events went; None when the mesh keeps no trail
    tallies: Tallies              # counts of what happened to events (kept across restarts)

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def store_url(self) -> str: ...

    @property
    def ingress_auth_mode(self) -> str: ...

    @property
    def preloaded(self) -> frozenset[str]: ...

    @property
    def logs(self) -> LogStore: ...

    @property
    def bridged_in(self) -> BridgedStats: ...

    # -- status ------------------------------------------------------------------------------

    def function_status(self) -> list[FunctionStatus]: ...

    def code_in_use(self) -> set[Path]:
        """The folders of the code the versions running here use (retiring ones included)."""

    def sink_status(self) -> list[SinkStatus]: ...

    def trigger_status(self) -> list[TriggerStatus]: ...

    def has_sink(self, subscription: str) -> bool: ...

    def external_target(self, function: str) -> str | None: ...

    def filter_errors(self, subscription: str) -> FilterErrors: ...

    async def pending(self, subscription: str) -> int: ...

    async def backlog(self, subscription: str) -> tuple[int, float | None]: ...

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node on the store (id, address, last heartbeat, replicas per function)."""

    def run_in_background(self, name: str, work: Coroutine[Any, Any, None]) -> None: ...

    # -- dead letters ------------------------------------------------------------------------

    async def dead_letter_counts(self) -> dict[str, int]: ...

    async def dead_letters(self, subscription: str | None, limit: int) -> list[DeadLetter]: ...

    async def replay(self, ids: list[int]) -> tuple[list[DeadLetter], list[int]]: ...

    async def purge_dead_letters(self, subscription: str | None) -> int: ...

    # -- deploying ---------------------------------------------------------------------------

    async def verify(self, spec: FunctionSpec) -> None: ...

    async def invoke(self, function: str, event: Event) -> Event | None:
        """One attempt at `event` by a function running here, as its sidecar would make it
        (replica start, timeout), no retries; its reply, not published (HandlerError if it fails)."""

    def runs_here(self, function: str) -> bool: ...

    @property
    def event_limits(self) -> tuple[int, int]:
        """The largest event in bytes, and the most extensions, this node takes."""

    def open_sink(self, sink: SinkSpec) -> object: ...

    def check_peer(self, name: str, credential: PeerCredential) -> None: ...

    def keep_routing(self, subscription: str, filter: Filter, ordered: bool = False) -> None: ...

    async def forget_route(self, subscription: str) -> None: ...

    async def deploy_function(self, spec: FunctionSpec, filter: Filter, reply_to: SinkSpec | str | None = None,
                              dead_letter: SinkSpec | None = None) -> None: ...

    async def remove_function(self, name: str) -> None: ...

    async def deploy_subscription(self, sink: SinkSpec, filter: Filter,
                                  dead_letter: SinkSpec | None = None) -> None: ...

    async def remove_subscription(self, subscription: str) -> None: ...

    async def stop_delivering(self, subscription: str) -> None: ...

    async def deploy_trigger(self, name: str, entry: TriggerEntry) -> None: ...

    async def remove_trigger(self, name: str) -> None: ...

    def build_trigger(self, name: str, entry: TriggerEntry) -> object: ...

    def deploy_peer(self, name: str, credential: PeerCredential, rule: Rule) -> None: ...

    def remove_peer(self, name: str) -> None: ...
