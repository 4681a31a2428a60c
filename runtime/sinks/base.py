"""What every sink is, and the options a sink URL can be given.

A sink is a `Target` for a sidecar that sends events out of the mesh: to an HTTP
endpoint, a Kafka topic or a NATS subject. `invoke` raises `HandlerError` with
`retryable` set as the delivery policy needs it, and its message names the URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from fmesh.runtime.replica import Result
from fmesh.triggers.config import EnvName, KafkaSecurity, NatsAuth
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fmesh.events import Event


@runtime_checkable
class Sink(Protocol):
    """A delivery target outside the mesh; `start` never fails because the far side is down."""

    url: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def invoke(self, event: Event, timeout: float) -> Result:
        """Send `event` within `timeout` seconds; an HTTP sink may return a reply event."""


class TlsFiles(BaseModel):
    """TLS of an HTTPS sink or bridge: the CA that signed the server (default: the system's),
    and the client certificate and key for a server that requires one (mTLS). PEM files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path | None = Field(None, description="CA bundle to verify the server with")
    cert: Path | None = Field(None, description="client certificate, for a server that requires one")
    key: Path | None = Field(None, description="private key of the client certificate")

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsFiles:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class SinkOptions(BaseModel):
    """Options of a sink beyond its URL (the URL's own query can also set `structured`
    and, for NATS, `jetstream`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    structured: bool = Field(False, description="send structured mode (the JSON event format) "
                             "instead of binary mode")
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP request headers")
    bearer_env: EnvName | None = Field(None, description="HTTP: env var with a bearer token to send")
    tls_ca: Path | None = Field(None, description="HTTP: CA bundle to verify the server with (or tls.ca)")
    tls: TlsFiles | None = Field(None, description="HTTP: {ca, cert, key} for HTTPS with a private CA and mTLS")
    jetstream: bool = Field(False, description="NATS: publish to JetStream and wait for its ack")
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity, description="Kafka: SASL and TLS")
    nats: NatsAuth = Field(default_factory=NatsAuth, description="NATS: credentials and TLS")
