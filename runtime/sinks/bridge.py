"""A bridge: the sink that forwards events to another mesh's ingress.

It is an HTTP sink with three things more: it never sends an event to a mesh already on
the event's path (`fmeshpath`) and adds this mesh's id to the path of what it sends; it
authenticates as this mesh, with a bearer token or an HMAC signature over the timestamp
and body (`X-Fmesh-Peer`, `X-Fmesh-Timestamp`, `X-Fmesh-Signature`); and it keeps what
the bridge's status shows. Waiting and retrying is the sidecar's, with the event log
holding the events, so nothing waits in memory while the other mesh is down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from fmesh.runtime.replica import NotSent, Result

from fmesh.bindings.http import write_batch
from fmesh.errors import HandlerError
from fmesh.events import SENDER, Event
from fmesh.meshpath import visited, with_visit
from fmesh.signing import PEER_HEADER, sign_request
from fmesh.tracing import hop_headers

if TYPE_CHECKING:  # httpx is a mesh's only with an HTTP sink or bridge: not imported until one opens
    from fmesh.runtime.sinks.http import HttpSink

MAX_BATCH = 64              # events per request to the other mesh
MAX_BATCH_BYTES = 512 * 1024
PEER_ID_RETRY = 10.0        # seconds between attempts to learn the other mesh's id
PEER_ID_TIMEOUT = 2.0


@dataclass(frozen=True)
class BridgeAuth:
    """How this mesh proves who it is to the other: secrets already read."""

    peer: str                          # the name the other mesh knows this one by
    token: str | None = None
    hmac_secret: bytes | None = None


def signed_headers(auth: BridgeAuth, body: bytes, now: float) -> dict[str, str]:
    """The authentication headers of one request to the other mesh (see fmesh.signing)."""
    if auth.hmac_secret is not None:
        return {PEER_HEADER: auth.peer, **sign_request(auth.hmac_secret, body, now)}
    if auth.token is not None:
        return {"authorization": f"Bearer {auth.token}"}
    return {}


@dataclass
class BridgeStats:
    peer_mesh: str | None = None       # the other mesh's id, once it said
    looped: int = 0                    # events not sent: the other mesh was on their path
    last_ok_at: float | None = None
    last_failed_at: float | None = None
    last_refused: bool = False         # the last failure was not worth retrying (401, 403, 400)

    def failed(self, error: HandlerError) -> None:
        self.last_failed_at = time.time()
        self.last_refused = not error.retryable

    @property
    def state(self) -> str:
        """idle (nothing sent yet), connected (the last request went through), retrying (the
        other mesh is down or busy), refused (it turned the last request down: see the error)."""
        if self.last_failed_at is None and self.last_ok_at is None:
            return "idle"
        if self.last_failed_at is not None and (self.last_ok_at is None or self.last_failed_at > self.last_ok_at):
            return "refused" if self.last_refused else "retrying"
        return "connected"


class BridgeSink:
    """`Sink` to another mesh; see the module docstring.

    Events the sidecar hands over in the same loop turn leave together, as one batch-mode
    request of up to `MAX_BATCH` (one request per event would cap a bridge at what one
    HTTP round trip allows). A batch the other mesh refuses as a whole (a 4xx: one of its
    events is invalid or not allowed) is sent again event by event, so each event gets
    its own answer; a batch that fails for a reason worth retrying fails every event in it,
    and the sidecar retries them."""

    def __init__(self, http: HttpSink, mesh_id: str, auth: BridgeAuth) -> None:
        self.http = http
        self.url = http.url
        self.mesh_id = mesh_id
        self.auth = auth
        self.stats = BridgeStats()
        self._asked_at = float("-inf")
        self._asking = asyncio.Lock()
        self._waiting: list[tuple[Event, asyncio.Future[None]]] = []
        self._sending: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self.http.stop()

    async def invoke(self, event: Event, timeout: float) -> Result:
        await self._learn_peer_id()
        path = visited(event)
        if self.mesh_id in path or (self.stats.peer_mesh is not None and self.stats.peer_mesh in path):
            self.stats.looped += 1  # it has been there already: sending it would start a loop
            return NotSent(f"not sent: mesh {self.stats.peer_mesh or 'it'} is on its path already (a loop)")
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._flush, timeout)
        self._waiting.append((outgoing(event, self.mesh_id), sent))
        await sent
        return None

    def _flush(self, timeout: float) -> None:
        waiting, self._waiting = self._waiting, []
        for batch in batches(waiting):
            task = asyncio.get_running_loop().create_task(self._send(batch, timeout))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, items: list[tuple[Event, asyncio.Future[None]]], timeout: float) -> None:
        """Send `items` and settle each one's future, whatever happens: a future left unsettled
        would hold its event until the sidecar's timeout, and the error would be lost."""
        try:
            await self._send_all(items, timeout)
        except Exception as exc:  # noqa: BLE001 - handed to the sidecars waiting, which dead-letter it
            for _, sent in items:
                if not sent.done():
                    sent.set_exception(exc)

    async def _send_all(self, items: list[tuple[Event, asyncio.Future[None]]], timeout: float) -> None:
        if len(items) > 1 and not await self._refused_as_batch(items, timeout):
            return
        for event, sent in items:  # one at a time: each event its own answer
            try:
                await self._post(*self._encode(event), timeout)
                _settle([(event, sent)], None)
            except HandlerError as exc:
                _settle([(event, sent)], exc)

    async def _refused_as_batch(self, items: list[tuple[Event, asyncio.Future[None]]], timeout: float) -> bool:
        """Send `items` in one request and settle them; True instead if the other mesh
        refused the batch as a whole."""
        try:
            await self._post(*write_batch([event for event, _ in items]), timeout)
        except HandlerError as exc:
            if not exc.retryable:
                return True
            _settle(items, exc)
            return False
        _settle(items, None)
        return False

    def _encode(self, event: Event) -> tuple[dict[str, str], bytes]:
        """One event alone: in binary mode, unless it is signed, since a signature covers the
        body only (the ce-* headers would be open to rewriting): then as a batch of one."""
        return write_batch([event]) if self.auth.hmac_secret is not None else self.http.encode(event)

    async def _post(self, headers: dict[str, str], body: bytes, timeout: float) -> None:
        # The transport context is the hop of the first event sent in this request (each
        # event carries its own context as its traceparent attribute).
        headers.update(hop_headers())
        headers.update(signed_headers(self.auth, body, time.time()))
        try:
            await self.http.post(headers, body, timeout, replies=False)  # the other mesh answers 202, never events
        except HandlerError as exc:
            self.stats.failed(exc)
            raise
        self.stats.last_ok_at = time.time()

    async def _learn_peer_id(self) -> None:
        """Ask the other mesh its id (`GET /healthz`), now and then until it answers. Until
        then the other mesh still drops what already visited it; this saves the trip."""
        if self.stats.peer_mesh is not None or time.monotonic() - self._asked_at < PEER_ID_RETRY:
            return
        async with self._asking:  # the events in flight meanwhile wait for the same answer
            if self.stats.peer_mesh is not None or time.monotonic() - self._asked_at < PEER_ID_RETRY:
                return
            answer = await self.http.get_json(urljoin(self.url, "/healthz"), PEER_ID_TIMEOUT)
            self._asked_at = time.monotonic()
            mesh = answer.get("mesh") if isinstance(answer, dict) else None
            if isinstance(mesh, str) and mesh:
                self.stats.peer_mesh = mesh


def outgoing(event: Event, mesh_id: str) -> Event:
    """The event as this mesh sends it on: its id added to the path, and without its sender
    here (a name of this mesh's, which the other mesh replaces with this mesh's own)."""
    visit = with_visit(event, mesh_id)
    return Event({k: v for k, v in visit.attributes.items() if k != SENDER}, visit.payload)


def batches(items: list[tuple[Event, asyncio.Future[None]]]) -> list[list[tuple[Event, asyncio.Future[None]]]]:
    """`items` in batches of at most MAX_BATCH events and about MAX_BATCH_BYTES (a receiver
    refuses a request past its size limit, 1 MiB by default)."""
    out: list[list[tuple[Event, asyncio.Future[None]]]] = []
    size = MAX_BATCH_BYTES
    for item in items:
        grows = item[0].size() * 4 // 3 + 200  # base64 and the JSON around it
        if len(out[-1] if out else ()) >= MAX_BATCH or size + grows > MAX_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += grows
    return out


def _settle(items: list[tuple[Event, asyncio.Future[None]]], error: HandlerError | None) -> None:
    for _, sent in items:
        if sent.done():
            continue  # its sidecar gave up waiting (stopping)
        if error is None:
            sent.set_result(None)
        else:
            sent.set_exception(error)
