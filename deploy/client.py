"""The control API client the CLI uses; errors say which URL and what to do."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from fmesh.bindings.http import read_events, write_binary
from fmesh.errors import AuthError, BrokerUnreachable, DeployError, Forbidden, NotAMesh
from fmesh.events import Event
from fmesh.names import NAME_RULE, is_name
from fmesh.tls import connect_hint

APPLY_TIMEOUT = 300.0


class MeshClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, verify: ssl.SSLContext | bool = True,
                 token_source: str = "the token") -> None:
        self.url = url.rstrip("/")
        self.token_source = token_source  # where the token came from, named when it is refused
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise BrokerUnreachable(self.url, f"{exc}; {connect_hint(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise BrokerUnreachable(self.url, f"no answer in time ({type(exc).__name__})") from exc
        check(response, self.url, self.token_source)
        return response

    def answer(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object a control API call answers; NotAMesh when what answered is not fmesh."""
        return json_object(self.request(method, path, **kwargs), self.url)

    def has_bundle(self, digest: str) -> bool:
        try:
            self.request("HEAD", f"/v1/bundles/{digest}")
        except DeployError:
            return False
        return True

    def put_bundle(self, digest: str, data: bytes) -> None:
        self.request("PUT", f"/v1/bundles/{digest}", content=data,
                     headers={"content-type": "application/gzip"})

    def prepare(self, digest: str) -> Iterator[str]:
        """pip's output while the mesh installs a bundle's requirements; DeployError on failure."""
        try:
            with self._http.stream("POST", f"/v1/bundles/{digest}/prepare", timeout=None) as response:
                check(response, self.url, self.token_source)
                for line in response.iter_lines():
                    try:
                        message = json.loads(line)
                    except ValueError as exc:
                        raise NotAMesh.answered(self.url, response) from exc
                    if "line" in message:
                        yield message["line"]
                    elif not message.get("ok"):
                        raise DeployError(message.get("error", "installing requirements failed"))
        except httpx.ConnectError as exc:
            raise BrokerUnreachable(self.url, f"{exc}; {connect_hint(exc)}") from exc

    def apply(self, resources: dict[str, dict[str, Any]], prune: bool, verify: bool = True) -> dict[str, Any]:
        """`resources` is {"functions": {...}, "subscriptions": {...}} as the API takes it;
        the answer has the `changes` and any `warnings`."""
        body = {**resources, "prune": prune, "verify": verify}
        # Starting each changed function once may take up to its start timeout (30 s).
        return self.answer("POST", "/v1/apply", json=body, timeout=APPLY_TIMEOUT)

    def status(self) -> dict[str, Any]:
        return self.answer("GET", "/v1/status")

    def functions(self) -> list[dict[str, Any]]:
        return self.answer("GET", "/v1/functions")["functions"]

    def target_names(self) -> set[str]:
        """The deployed functions and bridges: what replies and dead letters may name."""
        bridges = self.answer("GET", "/v1/bridges")["bridges"]
        return {f["name"] for f in self.functions()} | {b["name"] for b in bridges}

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/v1/functions/{named('function', name)}")

    def resources(self, kind: str) -> list[dict[str, Any]]:
        """The deployed resources of a kind (function, trigger, subscription, bridge, peer)."""
        return self.request("GET", f"/v1/{kind}s").json()[f"{kind}s"]

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/{kind}s/{named(kind, name)}").json()

    def delete_resource(self, kind: str, name: str) -> None:
        self.request("DELETE", f"/v1/{kind}s/{named(kind, name)}")

    def invoke(self, name: str, event: Event) -> Event | None:
        """The function's reply to `event`, sent straight to it (None: it returned none). The
        mesh bounds the wait (a replica's start, the function's timeout), so this does not."""
        headers, body = write_binary(event)
        response = self.request("POST", f"/v1/functions/{named('function', name)}/invoke", headers=headers,
                                content=body, timeout=httpx.Timeout(self._http.timeout.connect, read=None))
        if response.status_code == 204:
            return None
        headers = {k.lower(): v for k, v in response.headers.items()}
        return read_events(headers, response.content)[0]

    def logs(self, name: str, lines: int) -> str:
        response = self.request("GET", f"/v1/functions/{named('function', name)}/logs", params={"lines": lines})
        if not response.headers.get("content-type", "").startswith("text/plain"):
            raise NotAMesh.answered(self.url, response)
        return response.text

    def follow_logs(self, name: str, lines: int) -> Iterator[str]:
        """Lines until the caller stops; the mesh ends the stream only when it goes away,
        so an end or a dropped connection is BrokerUnreachable."""
        try:
            with self._http.stream("GET", f"/v1/functions/{named('function', name)}/logs",
                                   params={"lines": lines, "follow": True}, timeout=None) as response:
                check(response, self.url, self.token_source)
                yield from _lines(response.iter_text())
        except httpx.ConnectError as exc:
            raise BrokerUnreachable(self.url, f"{exc}; {connect_hint(exc)}") from exc
        except httpx.TransportError as exc:  # dropped mid-stream: the mesh was killed, or the network went
            reason = f"the connection broke while following logs ({type(exc).__name__})"
            raise BrokerUnreachable(self.url, reason) from exc
        raise BrokerUnreachable(self.url, "the mesh ended the log stream: it stopped or is stopping")

    def replay_dead_letters(self, ids: list[int], function: str | None) -> dict[str, Any]:
        return self.answer("POST", "/v1/dead-letters/replay", json={"ids": ids, "function": function})

    def purge_dead_letters(self, function: str | None) -> int:
        params = {"function": function} if function else {}
        return self.answer("DELETE", "/v1/dead-letters", params=params)["purged"]

    def tokens(self) -> list[dict[str, Any]]:
        return self.answer("GET", "/v1/tokens")["tokens"]

    def create_token(self, name: str, scope: str, allow: dict[str, Any] | None = None,
                     rate: str | None = None, burst: int | None = None) -> dict[str, Any]:
        """The new token's record, with the token itself under "token" (shown only this once)."""
        body = {"name": name, "scope": scope, "allow": allow, "rate": rate, "burst": burst}
        return self.answer("POST", "/v1/tokens", json=body)

    def revoke_token(self, name: str) -> None:
        self.request("DELETE", f"/v1/tokens/{named('token', name)}")

    def trace(self, event_id: str) -> list[dict[str, Any]]:
        """The trail of every event with this id (DeployError with a 404 when there is none)."""
        return self.answer("GET", f"/v1/trail/{quote(event_id, safe='')}")["trail"]

    def recent_events(self, limit: int, unrouted: bool) -> list[dict[str, Any]]:
        return self.answer("GET", "/v1/events", params={"unrouted": unrouted, "limit": limit})["events"]

    def watch_events(self, filters: list[str], cesql: str | None, function: str | None,
                     connected: Callable[[], None] = lambda: None) -> Iterator[tuple[str, dict]]:
        """(kind, record) as the mesh sends them, until the caller stops (`connected` is called
        once the mesh watches); the mesh ends the stream only when it stops, so an end is
        BrokerUnreachable."""
        params: dict[str, Any] = {"filter": filters}
        if cesql is not None:
            params["cesql"] = cesql
        if function is not None:
            params["function"] = function
        try:
            with self._http.stream("GET", "/v1/events/stream", params=params, timeout=None) as response:
                check(response, self.url, self.token_source)
                connected()
                yield from server_sent_events(_lines(response.iter_text()))
        except httpx.ConnectError as exc:
            raise BrokerUnreachable(self.url, f"{exc}; {connect_hint(exc)}") from exc
        except httpx.TransportError as exc:
            raise BrokerUnreachable(self.url, f"the connection broke while watching ({type(exc).__name__})") from exc
        raise BrokerUnreachable(self.url, "the mesh ended the event stream: it stopped or is stopping")

    def dead_letters(self, function: str | None, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if function:
            params["function"] = function
        return self.answer("GET", "/v1/dead-letters", params=params)["dead_letters"]


def named(kind: str, name: str) -> str:
    """`name` as a path segment; DeployError if it is no name (an empty one was answered
    with a redirect the client took for success, `.` and `..` were dropped from the path)."""
    if not is_name(name):
        raise DeployError(f"{name!r} is not a {kind} name: {NAME_RULE}")
    return name


def check(response: httpx.Response, url: str, token_source: str = "the token") -> None:
    """Nothing for a success; else the mesh's refusal as an error that says what to do,
    or NotAMesh when what answered is some other server."""
    if response.status_code < 400:
        return
    if response.is_stream_consumed is False:
        response.read()
    message = _error_of(response)
    if message is None and response.request.method == "HEAD":  # no body to tell: a 404 is "not here"
        message = response.reason_phrase
    if message is None:
        raise NotAMesh.answered(url, response)
    if response.status_code == 401:
        raise AuthError(f"{url} answered 401: it refused {token_source}: {message.split(':')[0]}; {ANOTHER_TOKEN}")
    if response.status_code == 403:
        raise Forbidden(f"{url} answered 403: it refused {token_source}: {message}; {ANOTHER_TOKEN}")
    raise DeployError(f"{url} answered {response.status_code}: {message}")


ANOTHER_TOKEN = ("pass another with --token TOKEN or FMESH_TOKEN=TOKEN, or FMESH_DATA_DIR=DIR to read DIR/token "
                 "(the mesh's admin token is in its data dir's token file)")


def json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    """The JSON object of a control API answer; NotAMesh for anything else."""
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise NotAMesh.answered(url, response)
    return value


def _error_of(response: httpx.Response) -> str | None:
    """The `error` of an fmesh refusal (every one is JSON with it); None for other servers."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event name, JSON data) of each server-sent event; comments (keep-alives) are skipped."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    r"""Lines split at "\n" only: httpx's iter_lines also splits at "\r", "\x0b", "\x1c"...,
    which would drop those characters from a function's output (or hide them from --raw)."""
    pending = ""
    for chunk in chunks:
        *complete, pending = (pending + chunk).split("\n")
        yield from complete
    if pending:
        yield pending

