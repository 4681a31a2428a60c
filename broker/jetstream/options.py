"""`nats://host:4222[,host2:4222]?option=value&...` store URLs.

The connection options are the NATS trigger's (`NatsConnection`: `token_env`,
`user_env`/`password_env`, `credentials`, `tls_ca`, `tls_cert`/`tls_key`,
`connect_timeout`, `reconnect_delay`), so a mesh reaches its store the way its triggers
reach NATS. The store adds its own: `cluster` (the mesh name every stream, consumer and
bucket name is derived from), `replicas` (1 for one server, 3 for a cluster),
`ack_wait` (how long a claim lasts without `extend`) and `buckets` (how many partition
key buckets an ordered subscription is consumed in). Every node of a mesh must give the
same `cluster` and `buckets`: a key hashed into another number of buckets would lose
its place in line.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fmesh.broker.jetstream.names import MESH_NAME
from fmesh.triggers.config import Duration, NatsConnection
from fmesh.triggers.nats_client import connect_options
from pydantic import Field, ValidationError

SCHEMES = ("nats", "tls")


class JetStreamOptions(NatsConnection):
    cluster: str = Field("fmesh", pattern=MESH_NAME.pattern, description="mesh name")
    replicas: int = Field(1, ge=1, le=5, description="copies of every stream and bucket")
    ack_wait: Duration = Field(30.0, gt=0, description="how long a claim lasts unless extended")
    buckets: int = Field(8, ge=1, le=64, description="partition key buckets of an ordered subscription")


def parse_store_url(url: str) -> JetStreamOptions:
    """The options in a store URL; a ValueError names the URL and what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"store URL {url!r}: expected nats://host:port[,host:port...][?option=value...]")
    servers = [f"{parts.scheme}://{server.strip()}" for server in parts.netloc.split(",") if server.strip()]
    query: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise ValueError(f"store URL {url!r}: option {key!r} is given twice")
        query[key] = value
    if "url" in query or "servers" in query:
        raise ValueError(f"store URL {url!r}: name the servers before the '?', not as an option")
    try:
        return JetStreamOptions(url=servers, **query)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'url'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"store URL {url!r}: {problems}") from None


def client_options(options: JetStreamOptions) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (secrets read from the environment now)."""
    return connect_options(options, f"store {options.display_url}", f"fmesh-store-{options.cluster}")
