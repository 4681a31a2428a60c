"""A mesh node: the parts wired together behind one HTTP port (what `fmesh up` runs).

This is the composition root, so it lives in `deploy`, which depends on every part (the
shared core depends on none). `POST /` is the CloudEvents ingress; every other path goes
to the control app, which sees the node only through `deploy.operations.NodeOperations`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from fmesh.broker.backlog import Backlog
from fmesh.broker.broker import BridgedStats, Broker, RepliesPublisher
from fmesh.broker.filters import Filter, FilterErrors
from fmesh.broker.identity import ADMIN, Identity, PeerCredential, token_digest
from fmesh.broker.ingress import Ingress
from fmesh.broker.pacing import Pacing
from fmesh.broker.policy import Gate, Rule, default_mode
from fmesh.broker.stores import Store, open_store
from fmesh.broker.tallies import Tallies
from fmesh.broker.tokens import Tokens
from fmesh.broker.trail.memory import MemoryTrail
from fmesh.broker.trail.recorder import TrailRecorder
from fmesh.broker.trail.sqlite import SqliteTrail
from fmesh.deploy.counters import CounterKeeper
from fmesh.deploy.membership import Membership, load_or_create_node_id, members
from fmesh.runtime.logs import LogStore
from fmesh.runtime.runtime import FunctionSpec, FunctionStatus, Runtime, SinkSpec, SinkStatus
from fmesh.runtime.wire import MAX_FRAME
from fmesh.triggers.base import Trigger, TriggerStatus
from fmesh.triggers.config import TriggerEntry
from fmesh.triggers.registry import build_trigger

from fmesh import meshlog
from fmesh.asgi import ASGIApp, Receive, Scope, Send, is_mesh_path, refused_headers, respond
from fmesh.contracts import BlobStore, DeadLetter
from fmesh.errors import Conflict, StartupError, StoreError, TriggerConfigError
from fmesh.events import Event
from fmesh.meshpath import check_mesh_id
from fmesh.permissions import private_dir
from fmesh.settings import NodeSettings, mesh_id_path
from fmesh.tracing import NOOP, Tracer

Hook = Callable[[], Awaitable[None]]
MESH_ID_KEY = "mesh/id"
BACKGROUND_STOP_TIMEOUT = 5.0  # seconds a cancelled background task (or leaving the store) may take
RECORD_MARGIN = 64 * 1024  # bytes of a stored delivery besides the event's body: attributes, bookkeeping
log = meshlog.get("fmesh.deploy")


def owner_of(subscription: str) -> str:
    """The name its reply and dead-letter sinks go by: `subscription:audit` → `subscription-audit`."""
    return subscription.replace(":", "-", 1)


BACKLOG_RESYNC_EVERY = 5.0   # seconds between two counts of the waiting deliveries from the store


class Node:
    def __init__(self, settings: NodeSettings, store: Store | None = None, address: str | None = None) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.store = store or open_store(settings.store_url, settings.data_dir)
        self.log, self.state = self.store.log, self.store.state
        self.mesh_id = settings.mesh_id or ""
        self.broker = Broker(self.log, self.mesh_id, settings.dedup_window, Backlog(settings.max_backlog))
        self.identity = Identity()
        self.gate = Gate(self.identity, settings.ingress_auth or default_mode(settings.host,
                                                                              bool(settings.tls_client_ca)))
        self.tokens = Tokens(self.state, self.identity, self.gate)
        self.ingress = Ingress(self.broker.publish, settings.max_event_bytes, self.gate, settings.max_extensions)
        self.pacing = Pacing(lambda: self.broker.backlog.total)  # delivery keeps pace with ingress
        self.ingress.turn = self.pacing.turn
        # Short: Unix socket paths are limited. The pid in its name tells whose it was, should
        # the node be killed before it removes it.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"fmesh-{os.getpid()}-"))
        self.runtime = Runtime(self.data_dir, self.run_dir, RepliesPublisher(self.broker), settings.launcher,
                               self.mesh_id, template_idle=settings.template_idle,
                               zygote_idle=settings.zygote_idle)
        self.control_app: ASGIApp | None = None
        self.tracer: Tracer = NOOP              # an exporting one from start, with --otlp-endpoint
        self._background: list[asyncio.Task] = []
        self._stuck: set[asyncio.Task] = set()  # background tasks that outlived their cancellation (see stop)
        self.external_targets: dict[str, str] = {}  # external function → URL it is served at, here
        self.node_id = load_or_create_node_id(settings.data_dir)
        meshlog.set_context(node=self.node_id)
        self.membership = Membership(self.state, self.node_id,
                                     address or f"{settings.scheme}://{settings.host}:{settings.port}", self._replicas)
        self.on_start: list[Hook] = []
        self.on_end_streams: list[Callable[[], None]] = []  # more long-lived responses to end (the dashboard's)
        self.routes: dict[str, ASGIApp] = {}   # extra POST paths (webhook triggers)
        self.triggers: dict[str, Trigger] = {}
        self._started = False
        self.start_failed = False
        self.stop_deadline: float | None = None  # time.monotonic() by which a stop must be done
        self.stop_overran = False                # the last stop ran out of time and left work undone
        self.trail: TrailRecorder | None = None  # where events went (None: --trail-retention 0)
        self.tallies = Tallies()                 # counts of what happened to events, kept across restarts
        self.counters = CounterKeeper(self.tallies, self.state, self.node_id)
        self.broker.observers.append(self.tallies)
        self.runtime.observers.append(self.tallies)
        self.runtime.cold_start_listeners.append(self.tallies.cold_start)

    async def start(self) -> None:
        private_dir(self.data_dir)
        await self.store.open()
        self._fit_event_limit()
        await self._agree_on_mesh_id()
        self._install_tracer()
        await self.tokens.load()
        await self.counters.load()
        await self.runtime.start()
        self._open_trail()
        self.run_in_background("expire dead letters and seen events", self._expire())
        self.run_in_background("heartbeat", self.membership.run())
        self.run_in_background("store the counts", self.counters.run())
        self.run_in_background("follow the tokens", self.tokens.follow())
        self._started = True
        for hook in self.on_start:
            await hook()
        await self._count_backlog()  # before the first request: what was stored before a restart counts
        self.run_in_background("count the backlog", self._recount_backlog())
        self.run_in_background("pace the ingress", self.pacing.control())

    async def _count_backlog(self) -> None:
        try:
            await self.broker.resync_backlog()
        except StoreError as exc:
            log.warning("could not count the deliveries waiting", error=str(exc))

    async def _recount_backlog(self) -> None:
        """Count the backlog from the store now and then: other nodes finish deliveries too."""
        while True:
            await asyncio.sleep(BACKLOG_RESYNC_EVERY)
            await self._count_backlog()

    def _open_trail(self) -> None:
        """Start noting where events go: in the data dir (each node keeps what it saw), or in
        memory for a memory store."""
        if self.settings.trail_retention <= 0 or self.settings.trail_max_events <= 0:
            return
        store = MemoryTrail() if self.store_url == "memory://" else SqliteTrail(self.data_dir / "trail.db")
        self.trail = TrailRecorder(store, self.settings.trail_retention, self.settings.trail_max_events)
        self.broker.observers.append(self.trail)
        self.runtime.observers.append(self.trail)
        self.run_in_background("write the event trail", self.trail.run())

    def _fit_event_limit(self) -> None:
        """An event the store or a replica cannot take is refused at the ingress (413), not
        after it (503 from the store, or a replica failing on every attempt)."""
        limits = [(MAX_FRAME, "a replica takes frames of {} bytes at most")]
        if self.log.max_record_bytes is not None:
            limits.append((self.log.max_record_bytes, "the store takes messages of {} bytes at most (raise the "
                                                      "NATS server's max_payload to take more)"))
        for limit, why in sorted(limits):
            if self.ingress.max_event_bytes > limit - RECORD_MARGIN:
                self.ingress.max_event_bytes = max(1, limit - RECORD_MARGIN)
                log.info(f"events over {self.ingress.max_event_bytes} bytes are refused (413): " + why.format(limit))
        self.runtime.max_reply_bytes = self.ingress.max_event_bytes  # a sink's reply is an event too

    def _install_tracer(self) -> None:
        """With --otlp-endpoint, the spans of every hop go to that collector."""
        if self.settings.otlp_endpoint and not self.tracer.enabled:
            from fmesh.deploy.otel import otlp_tracer  # the SDK is loaded only then

            self.tracer = otlp_tracer(self.settings.otlp_endpoint, self.mesh_id, self.node_id)
        self.ingress.tracer = self.runtime.tracer = self.tracer

    async def _agree_on_mesh_id(self) -> None:
        """Every node on one store is one mesh to its peers: the first node's id is kept in
        the store, and a node joining later takes it (a --mesh-id that differs is an error)."""
        if not self.mesh_id:  # a sidecar has none of its own: it takes the mesh's, if there is one yet
            entry = await self.state.get(MESH_ID_KEY)
            if entry is None:
                return
        else:
            try:
                await self.state.create(MESH_ID_KEY, self.mesh_id.encode())
                return
            except Conflict:
                entry = await self.state.get(MESH_ID_KEY)
        stored = entry.value.decode(errors="replace") if entry else self.mesh_id
        if stored == self.mesh_id:
            return
        try:
            check_mesh_id(stored)
        except ValueError as exc:
            raise StartupError(f"the store {self.store_url} holds {MESH_ID_KEY!r} = {stored[:70]!r}: {exc}; "
                               "delete that key, or use a store (or --cluster) of its own") from None
        if self.settings.mesh_id_given:
            raise StartupError(f"the store {self.store_url} belongs to mesh {stored!r}, not --mesh-id "
                               f"{self.mesh_id!r}: leave --mesh-id out, or use a store (or --cluster) of its own")
        self.mesh_id = self.broker.mesh_id = self.runtime.mesh_id = stored
        mesh_id_path(self.data_dir).write_text(stored + "\n")

    def trust_control_token(self, token: str) -> None:
        """The mesh's own token: the `admin` principal, on the control API and at the ingress."""
        self.identity.add_bearer(token_digest(token), ADMIN)

    async def stop(self, grace: float | None = None) -> None:
        """Stop everything within about `grace` seconds (default: the shutdown grace);
        unfinished deliveries stay stored, and the next start delivers them."""
        if not self._started:
            return
        self._started = False
        await self._stop_background()
        for name in list(self.triggers):
            await self.remove_trigger(name)
        await self.runtime.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.counters.save()
        if self.trail is not None:
            await self.trail.close()
        await self.tracer.close()
        await self.store.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def run_in_background(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (which handles its own errors) until the node stops."""
        self._background.append(asyncio.get_running_loop().create_task(work, name=name))

    async def _stop_background(self) -> None:
        """Cancel the background tasks and say this node is leaving, each for a bounded time:
        a task that does not end when cancelled (or a store that does not answer) must not
        keep the process from stopping; it is named in the log instead."""
        for task in self._background:
            task.cancel()
        if self._background:
            _, stuck = await asyncio.wait(self._background, timeout=BACKGROUND_STOP_TIMEOUT)
            for task in stuck:
                log.warning(f"background task {task.get_name()!r} did not stop within "
                            f"{BACKGROUND_STOP_TIMEOUT:g}s of being cancelled; stopping without it")
            self._stuck |= stuck  # the loop holds tasks only weakly: keep it from vanishing mid-flight
        for task in self._background:  # what they raised on the way out was theirs to say
            if task.done() and not task.cancelled():
                task.exception()
        self._background.clear()
        try:
            async with asyncio.timeout(BACKGROUND_STOP_TIMEOUT):
                await self.membership.leave()
        except (StoreError, TimeoutError) as exc:
            log.warning("could not say this node is leaving (it shows as gone soon)", error=str(exc) or "timed out")

    def _replicas(self) -> dict[str, int]:
        return {s.name: s.pool.ready + s.pool.starting for s in self.runtime.status()}

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node on this store, from their heartbeats."""
        return await members(self.state, time.time())

    async def _expire(self) -> None:
        """Dead letters older than the retention go, and bridged events older than the dedup
        window are forgotten, checked a few times per period."""
        retention, window = self.settings.dead_letter_retention, self.settings.dedup_window
        while True:
            try:
                await self.log.purge_dead_letters(before=time.time() - retention)
                await self.broker.forget_seen()
            except StoreError as exc:
                log.warning("could not expire dead letters or seen events", error=str(exc))
            await asyncio.sleep(min(3600.0, max(1.0, min(retention, window) / 10)))

    # -- what the control plane may ask (deploy.operations.NodeOperations) ---------------------

    @property
    def blobs(self) -> BlobStore:
        return self.store.blobs

    @property
    def store_url(self) -> str:
        return self.store.url

    @property
    def ingress_auth_mode(self) -> str:
        return self.gate.mode

    @property
    def preloaded(self) -> frozenset[str]:
        """Modules every replica starts with already imported."""
        return frozenset(self.runtime.zygote.preloaded)

    @property
    def logs(self) -> LogStore:
        return self.runtime.logs

    @property
    def bridged_in(self) -> BridgedStats:
        return self.broker.bridged

    def function_status(self) -> list[FunctionStatus]:
        return self.runtime.status()

    def code_in_use(self) -> set[Path]:
        return self.runtime.code_in_use()

    def sink_status(self) -> list[SinkStatus]:
        return self.runtime.sink_status()

    def trigger_status(self) -> list[TriggerStatus]:
        return [trigger.status() for _, trigger in sorted(self.triggers.items())]

    def external_target(self, function: str) -> str | None:
        """Where this node (a `fmesh sidecar`) delivers an external function's events, if it does."""
        return self.external_targets.get(function)

    def has_sink(self, subscription: str) -> bool:
        return subscription in self.runtime.sinks

    def filter_errors(self, subscription: str) -> FilterErrors:
        routed = self.broker.router.filter(subscription)
        return routed.errors if routed else FilterErrors()

    async def pending(self, subscription: str) -> int:
        return await self.log.pending(subscription)

    async def backlog(self, subscription: str) -> tuple[int, float | None]:
        return await self.log.backlog(subscription)

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self.log.count_dead_letters()

    async def dead_letters(self, subscription: str | None, limit: int) -> list[DeadLetter]:
        return await self.log.dead_letters(subscription, limit)

    async def replay(self, ids: list[int]) -> tuple[list[DeadLetter], list[int]]:
        return await self.broker.replay(ids)

    async def purge_dead_letters(self, subscription: str | None) -> int:
        return await self.log.purge_dead_letters(subscription)

    def keep_routing(self, subscription: str, filter: Filter, ordered: bool = False) -> None:
        """Store what `filter` passes for `subscription` even while nothing delivers it."""
        self.broker.subscribe(subscription, filter, ordered)

    async def forget_route(self, subscription: str) -> None:
        await self.broker.unsubscribe(subscription)

    async def verify(self, spec: FunctionSpec) -> None:
        await self.runtime.verify(spec)

    async def invoke(self, function: str, event: Event) -> Event | None:
        return await self.runtime.invoke(function, event)

    def runs_here(self, function: str) -> bool:
        return function in self.runtime.functions

    @property
    def event_limits(self) -> tuple[int, int]:
        return self.settings.max_event_bytes, self.settings.max_extensions

    def open_sink(self, sink: SinkSpec) -> object:
        return self.runtime.open_sink(sink)

    def check_peer(self, name: str, credential: PeerCredential) -> None:
        self.identity.check_peer(name, credential)

    # -- deploying ---------------------------------------------------------------------------

    async def deploy_function(self, spec: FunctionSpec, filter: Filter, reply_to: SinkSpec | str | None = None,
                              dead_letter: SinkSpec | None = None) -> None:
        """Run a function on the events `filter` passes; its replies go to `reply_to` if given
        (a sink, or the name of the subscription, such as another function's, to hand them to)."""
        sinks = [s for s in (reply_to, dead_letter) if isinstance(s, SinkSpec)]
        for sink in sinks:
            await self.runtime.deploy_sink(sink, self.broker.queue(sink.subscription))
        to = reply_to.subscription if isinstance(reply_to, SinkSpec) else reply_to
        replies = self.broker.direct(to) if to else None
        queue = self.broker.subscribe(spec.subscription, filter, ordered=spec.delivery.ordered)
        await self.runtime.deploy(spec, queue, replies)
        await self._drop_sinks_except(spec.name, {s.subscription for s in sinks})

    async def remove_function(self, name: str) -> None:
        await self.runtime.remove(name)
        await self.broker.unsubscribe(f"function:{name}")
        self.tallies.forget(f"function:{name}")
        await self._drop_sinks_except(name, set())

    async def deploy_subscription(self, sink: SinkSpec, filter: Filter, dead_letter: SinkSpec | None = None) -> None:
        """Deliver the events `filter` passes to a URL, a sink or (a bridge) another mesh."""
        target = self.runtime.open_sink(sink)  # before it is routed to: a sink that cannot be built fails alone
        if dead_letter is not None:
            await self.runtime.deploy_sink(dead_letter, self.broker.queue(dead_letter.subscription))
        queue = self.broker.subscribe(sink.subscription, filter, sink.delivery.ordered)
        await self.runtime.deploy_sink(sink, queue, target)
        await self._drop_sinks_except(owner_of(sink.subscription), {dead_letter.subscription} if dead_letter else set())

    async def stop_delivering(self, subscription: str) -> None:
        """Stop this node's sidecar of a subscription; what it had pending stays stored."""
        await self.runtime.remove_sink(subscription)

    async def remove_subscription(self, subscription: str) -> None:
        """Stop a subscription (`subscription:audit`, `bridge:eu`) and forget what it had pending."""
        await self.runtime.remove_sink(subscription)
        await self.broker.unsubscribe(subscription)
        self.tallies.forget(subscription)
        await self._drop_sinks_except(owner_of(subscription), set())

    async def deploy_trigger(self, name: str, entry: TriggerEntry) -> None:
        """Start a source of events; replaces a running trigger of that name."""
        trigger = self.build_trigger(name, entry)
        path = getattr(trigger, "path", None)
        await self.remove_trigger(name)
        self.triggers[name] = trigger
        if path is not None:
            self.routes[path] = trigger.app  # type: ignore[attr-defined]
        await trigger.start()

    def build_trigger(self, name: str, entry: TriggerEntry) -> Trigger:
        """The trigger, not started; TriggerConfigError if it cannot run as configured."""
        trigger = build_trigger(name, entry, self.broker.publish, self.state, shared=self.store.shared,
                                tracer=self.tracer)
        path = getattr(trigger, "path", None)
        if path is not None and is_mesh_path(path):
            raise TriggerConfigError(f"triggers.{name}.http.path", f"{path} is taken by the mesh itself")
        owner = next((n for n, t in self.triggers.items() if getattr(t, "path", None) == path and n != name), None)
        if path is not None and owner is not None:
            raise TriggerConfigError(f"triggers.{name}.http.path", f"{path} is already trigger {owner}'s")
        return trigger

    async def remove_trigger(self, name: str) -> None:
        trigger = self.triggers.pop(name, None)
        if trigger is None:
            return
        path = getattr(trigger, "path", None)
        if path is not None and self.routes.get(path) is getattr(trigger, "app", None):
            del self.routes[path]
        await trigger.stop()

    def deploy_peer(self, name: str, credential: PeerCredential, rule: Rule) -> None:
        """Take events from peer `name`, known by `credential`, within `rule` (ValueError if its
        credential is another principal's)."""
        principal = self.identity.set_peer(name, credential)
        self.gate.set_rule(principal.name, rule)

    def remove_peer(self, name: str) -> None:
        self.identity.forget(f"peer:{name}")
        self.gate.drop_rule(f"peer:{name}")

    async def _drop_sinks_except(self, owner: str, keep: set[str]) -> None:
        """Remove the reply and dead-letter sinks `owner` no longer has."""
        for name in (f"reply:{owner}", f"deadletter:{owner}"):
            if name not in keep and name in self.runtime.sinks:
                await self.runtime.remove_sink(name)
                await self.broker.unsubscribe(name)
                self.tallies.forget(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The node's ASGI app."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if await refused_headers(scope, send, self.settings.max_header_bytes, self.settings.max_headers):
            return
        path = scope["path"]
        if path == "/" or path in self.routes:
            await (self.routes.get(path) or self.ingress)(scope, receive, send)
        elif self.control_app is not None:
            await self.control_app(scope, receive, send)
        else:
            await respond(send, 404, {"error": f"no route for {path}"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - said in one line; uvicorn then exits
                    log.error(str(exc))
                    self.start_failed = True
                    await self._stop_in_time()
                    await send({"type": "lifespan.startup.failed", "message": ""})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop_in_time()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def end_streams(self) -> None:
        """End long-lived responses (`fmesh logs -f`) so that the HTTP server can stop."""
        self.runtime.logs.end_followers()
        if self.trail is not None:
            self.trail.live.end_listeners()
        for end in self.on_end_streams:
            end()

    async def _stop_in_time(self) -> None:
        """Stop, leaving the rest undone (`stop_overran`) when the deadline or grace runs out."""
        budget = self.settings.shutdown_grace
        if self.stop_deadline is not None:
            budget = max(0.0, self.stop_deadline - time.monotonic())
        try:  # the parts get a little less than the budget, so that the store closes in time
            await asyncio.wait_for(asyncio.shield(self.stop(budget * 0.9)), budget)
        except TimeoutError:
            self.stop_overran = True
