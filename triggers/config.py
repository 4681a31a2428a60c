"""How triggers are written in a manifest: one pydantic model per kind.

A manifest entry names exactly one kind::

    triggers:
      clicks:  {kafka: {bootstrap: localhost:9092, topic: clicks}}
      sensors: {nats: {url: nats://localhost:4222, subject: "sensors.>"}}
      nightly: {timer: {cron: "0 3 * * *", timezone: Europe/Berlin}}
      github:  {http: {path: /hooks/github, auth: {hmac_secret_env: GITHUB_SECRET}}}

Durations take "200ms", "5s", "1m30s" or ISO-8601 "PT1S"; sizes take bytes or "1MiB".
Secrets are never written inline: fields ending in `_env` name the environment
variable that holds them, read when the trigger is built (`read_secret`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fmesh.asgi import MESH_PATHS, is_mesh_path
from fmesh.durations import parse_duration
from fmesh.errors import TriggerConfigError
from fmesh.ratelimit import TokenBucket, parse_rate

__all__ = [
    "HttpTriggerConfig", "JetStreamConfig", "KafkaConnection", "KafkaSecurity", "KafkaTriggerConfig",
    "NatsAuth", "NatsConnection", "NatsTriggerConfig", "RateLimit", "TimerTriggerConfig", "TriggerConfig",
    "TriggerConfigError", "TriggerEntry", "TriggerName", "WebhookAuth", "read_secret", "read_secret_file",
]


def read_secret(env_name: str, field: str) -> str:
    """The secret in environment variable `env_name`, named by config field `field`."""
    value = os.environ.get(env_name)
    if not value:
        raise TriggerConfigError(field, f"environment variable {env_name} is not set or empty")
    return value


def read_secret_file(path: str, field: str) -> str:
    """The secret in file `path` (without a trailing newline), named by config field `field`."""
    try:
        value = Path(path).read_text().rstrip("\n")
    except OSError as exc:
        raise TriggerConfigError(field, f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TriggerConfigError(field, f"{path} is not UTF-8 text") from exc
    if not value:
        raise TriggerConfigError(field, f"{path} is empty")
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3,
               "gib": 1024**3}


def parse_size(value: Any) -> Any:
    """Bytes in `value`: an integer, or text such as "512KiB", "1MB"."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size such as 65536, 512KiB or 1MB, got {value!r}")
    return int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]


def _listify(value: Any) -> Any:
    """A comma-separated string or a list, as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0),
                     WithJsonSchema({"type": ["string", "number"], "examples": ["200ms", "5s", "PT1S"]})]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0),
                 WithJsonSchema({"type": ["string", "integer"], "examples": [1048576, "1MiB"]})]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                               description="name of an environment variable holding a secret")]
TriggerName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$",
                                   description="trigger name: lowercase letters, digits, - _ .")]
ExtensionName = Annotated[str, Field(pattern=r"^[a-z0-9]{1,20}$")]
EventType = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Rate = Annotated[float, BeforeValidator(parse_rate),
                 WithJsonSchema({"type": ["string", "number"], "examples": ["100/s", "600/m"]})]


class RateLimit(Strict):
    """A token bucket: `rate` events per second on average, `burst` at once (default: one
    second's worth). Past it, callers get 429 with Retry-After."""

    rate: Rate = Field(description="events per time unit: 100/s, 600/m, 5000/h")
    burst: int | None = Field(None, ge=1, le=10_000_000, description="most events at once; default rate x 1s")

    def bucket(self, clock: Callable[[], float] = time.monotonic) -> TokenBucket:
        return TokenBucket(self.rate, self.burst if self.burst is not None else max(1, round(self.rate)), clock)


# -- Kafka -----------------------------------------------------------------------------


class KafkaSecurity(Strict):
    """How to authenticate to a Kafka cluster: SASL and TLS, passed through to aiokafka."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to talk to the brokers, as Kafka clients name it")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL")
    username_env: EnvName | None = Field(None, description="env var with the SASL user name")
    password_env: EnvName | None = Field(None, description="env var with the SASL password")
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="private key (PEM) of the client certificate")
    ssl_password_env: EnvName | None = Field(None, description="env var with the client key's password")
    client_id: str = Field("fmesh", description="client id the brokers see")

    @model_validator(mode="after")
    def _security_fits(self) -> KafkaSecurity:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or not self.username_env or not self.password_env):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                             "username_env and password_env")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        tls_files = self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        if tls_files and not self.security_protocol.endswith("SSL"):
            raise ValueError("ssl_* files need security_protocol SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self


class KafkaConnection(KafkaSecurity):
    """How to reach a Kafka cluster (shared by the Kafka trigger and the Kafka sink)."""

    bootstrap: Annotated[list[str], BeforeValidator(_listify), Field(min_length=1)] = Field(
        description="host:port of one or more brokers, as a list or comma-separated")

    @field_validator("bootstrap")
    @classmethod
    def _host_ports(cls, servers: list[str]) -> list[str]:
        for server in servers:
            if not re.match(r"^[^\s:/]+:\d{1,5}$", server):
                raise ValueError(f"expected host:port, got {server!r}")
        return servers

    @property
    def url(self) -> str:
        """`kafka://host:port[,host:port...]`, as errors and event sources name the cluster."""
        return "kafka://" + ",".join(self.bootstrap)


class KafkaTriggerConfig(KafkaConnection):
    """Consume Kafka topics in a consumer group; each record becomes one event."""

    topics: Annotated[list[str], BeforeValidator(_listify), Field(min_length=1)] = Field(
        validation_alias=AliasChoices("topics", "topic"),
        description="topic or topics to consume (`topic: x` or `topics: [x, y]`)")
    group: str | None = Field(None, description="consumer group id; default fmesh.<trigger name>")
    start: Literal["earliest", "latest"] = Field(
        "latest", description="where a group without committed offsets starts reading")
    type: EventType = Field("dev.fmesh.kafka.message",
                            description="type of events made from records that are not CloudEvents")
    content_type: str | None = Field(
        None, description="datacontenttype of wrapped records that carry no content-type header")
    batch_size: int = Field(500, ge=1, le=10000, description="most records published in one batch")
    session_timeout: Duration = Field(
        10.0, ge=1, description="how long the group waits for a silent member before reassigning its "
        "partitions (heartbeats go at a third of it)")
    reconnect_delay: Duration = Field(0.5, description="first wait before reconnecting")
    reconnect_max_delay: Duration = Field(30.0, description="longest wait between reconnects")
    probe_interval: Duration = Field(
        2.0, description="how often lag and broker reachability are measured for status")


# -- NATS ------------------------------------------------------------------------------


class NatsAuth(Strict):
    """How to authenticate to NATS: one of credentials, token or user/password; TLS files."""

    credentials: Path | None = Field(None, description="NATS .creds file (JWT and NKey seed)")
    token_env: EnvName | None = Field(None, description="env var with an auth token")
    user_env: EnvName | None = Field(None, description="env var with the user name")
    password_env: EnvName | None = Field(None, description="env var with the password")
    tls_ca: Path | None = Field(None, description="CA bundle (PEM) that signed the server certificate")
    tls_cert: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    tls_key: Path | None = Field(None, description="private key (PEM) of the client certificate")
    connect_timeout: Duration = Field(2.0, description="how long one connection attempt may take")
    reconnect_delay: Duration = Field(2.0, description="wait between reconnection attempts")

    @model_validator(mode="after")
    def _auth_fits(self) -> NatsAuth:
        if bool(self.user_env) != bool(self.password_env):
            raise ValueError("user_env and password_env go together")
        if sum(map(bool, (self.credentials, self.token_env, self.user_env))) > 1:
            raise ValueError("use one of credentials, token_env or user_env/password_env")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self


class NatsConnection(NatsAuth):
    """How to reach a NATS server or cluster (shared by the NATS trigger and the NATS sink)."""

    url: Annotated[list[str], BeforeValidator(_listify), Field(min_length=1)] = Field(
        ["nats://127.0.0.1:4222"], validation_alias=AliasChoices("url", "servers"),
        description="server URL or URLs (nats:// or tls://)")

    @field_validator("url")
    @classmethod
    def _nats_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^(nats|tls)://[^\s/@]+$", url):
                raise ValueError(f"expected nats://host:port or tls://host:port without credentials, "
                                 f"got {url!r}")
        return urls

    @property
    def display_url(self) -> str:
        """The server URLs as errors and event sources name them."""
        return ",".join(self.url)


class JetStreamConfig(Strict):
    """Consume through a durable JetStream consumer: acked only once published."""

    stream: str | None = Field(None, description="stream name; default: the stream holding the subject")
    durable: str | None = Field(None, description="durable consumer name; default fmesh-<trigger name>")
    mode: Literal["pull", "push"] = Field("pull", description="pull (fetch batches) or push consumer")
    deliver: Literal["all", "new", "last"] = Field(
        "all", description="where a new durable consumer starts in the stream")
    ack_wait: Duration = Field(30.0, gt=0, description="redelivery delay of a message not acked")
    batch_size: int = Field(100, ge=1, le=10000, description="most messages fetched and published at once")


def _jetstream_flag(value: Any) -> Any:
    if value is True:
        return {}
    return None if value is False else value


class NatsTriggerConfig(NatsConnection):
    """Subscribe to a NATS subject (core or JetStream); each message becomes one event."""

    subject: str = Field(min_length=1, description="subject, wildcards allowed: sensors.*, sensors.>")
    queue: str | None = Field(
        None, description="queue group (core), or deliver group (JetStream push): members share messages")
    jetstream: Annotated[JetStreamConfig | None, BeforeValidator(_jetstream_flag)] = Field(
        None, description="true or {...} to consume through a durable JetStream consumer")
    type: EventType = Field("dev.fmesh.nats.message",
                            description="type of events made from messages that are not CloudEvents")
    batch_size: int = Field(100, ge=1, le=10000, description="most core messages published at once")
    retry_delay: Duration = Field(0.5, description="first wait before retrying a failed publish")
    retry_max_delay: Duration = Field(30.0, description="longest wait before retrying")

    @model_validator(mode="after")
    def _queue_fits(self) -> NatsTriggerConfig:
        if self.queue and self.jetstream and self.jetstream.mode == "pull":
            raise ValueError("queue applies to core subscriptions and JetStream push consumers; "
                             "pull consumers share work by durable name")
        return self


# -- Timer -----------------------------------------------------------------------------


MIN_TIMER_INTERVAL = 0.01  # seconds


class TimerTriggerConfig(Strict):
    """Fire an event on a cron schedule or at a fixed interval, once per tick."""

    cron: str | None = Field(None, description="cron expression (5 fields, or 6 with seconds)")
    every: Duration | None = Field(None, gt=0, description="interval, at least 10ms; ticks fall on multiples "
                                   "of it since the Unix epoch")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    type: EventType = Field("dev.fmesh.timer", description="type of the tick events")
    source: str | None = Field(None, description="source of the tick events; default /fmesh/triggers/<name>")
    subject: str | None = Field(None, description="subject attribute of the tick events")
    data: Any = Field(None, description="JSON data of every tick event")
    extensions: dict[ExtensionName, str | int | bool] = Field(
        default_factory=dict, description="extension attributes of every tick event")
    catch_up: bool = Field(False, description="fire ticks missed while the mesh was down, once each")
    max_catch_up: int = Field(1000, ge=1, le=100000,
                              description="most missed ticks fired (the latest ones) when catching up")

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, cron: str | None) -> str | None:
        if cron is None:
            return cron
        from croniter import CroniterBadDateError, croniter  # here: a mesh without a cron timer never loads it

        if not croniter.is_valid(cron):
            raise ValueError(f"not a valid cron expression: {cron!r}")
        try:
            croniter(cron).get_next(float)
        except CroniterBadDateError:  # such as the 30th of February: valid, yet no date has it
            raise ValueError(f"cron expression {cron!r} never fires: no date matches it") from None
        return cron

    @field_validator("every")
    @classmethod
    def _not_a_flood(cls, every: float | None) -> float | None:
        # 1ms was taken: a thousand stored events a second from one line of YAML
        if every is not None and every < MIN_TIMER_INTERVAL:
            raise ValueError(f"every {every * 1000:g}ms is too fast for a timer: give at least "
                             f"{MIN_TIMER_INTERVAL * 1000:g}ms")
        return every

    @field_validator("timezone")
    @classmethod
    def _zone_known(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r}; use an IANA name such as Europe/Berlin") from exc
        return zone

    @model_validator(mode="after")
    def _one_schedule(self) -> TimerTriggerConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        return self


# -- HTTP webhook ----------------------------------------------------------------------


class WebhookAuth(Strict):
    """Who may call a webhook. Every configured check must pass (bearer AND signature)."""

    bearer_env: Annotated[list[EnvName], BeforeValidator(_listify)] = Field(
        default_factory=list, description="env vars, each holding an accepted bearer token")
    hmac_secret_env: EnvName | None = Field(None, description="env var with the HMAC signing secret")
    hmac_header: str = Field("X-Hub-Signature-256", description="header carrying the signature")
    hmac_algorithm: Literal["sha1", "sha256", "sha512"] = Field("sha256", description="HMAC hash")
    hmac_prefix: str | None = Field(None, description="text before the signature in the header; "
                                    "default '<algorithm>=' (GitHub style); '' for none")
    hmac_encoding: Literal["hex", "base64"] = Field("hex", description="how the signature is written")
    timestamp_header: str | None = Field(
        None, description="header with the Unix time of signing; then `<timestamp>.<body>` is signed")
    timestamp_tolerance: Duration = Field(300.0, gt=0, description="how far the timestamp may be "
                                          "from now; older or newer requests are refused as replays")

    @model_validator(mode="after")
    def _something_checked(self) -> WebhookAuth:
        if not self.bearer_env and not self.hmac_secret_env:
            raise ValueError("give bearer_env, hmac_secret_env or both")
        if self.timestamp_header and not self.hmac_secret_env:
            raise ValueError("timestamp_header needs hmac_secret_env: only a signature covers the timestamp")
        return self

    @property
    def prefix(self) -> str:
        return f"{self.hmac_algorithm}=" if self.hmac_prefix is None else self.hmac_prefix


class HttpTriggerConfig(Strict):
    """Accept webhooks on a path of the mesh's port; each request becomes one event."""

    path: str = Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]+$",
                      description="path the webhook listens on, e.g. /hooks/github")
    type: EventType = Field("dev.fmesh.webhook", description="type of events from plain requests")
    type_header: str | None = Field(
        None, description="request header whose value, after type_prefix, is the type (X-GitHub-Event)")
    type_prefix: str = Field("", description="put before the type_header value, e.g. com.github.")
    id_header: str | None = Field(None, description="request header with a delivery id, used as event id "
                                  "(X-GitHub-Delivery); default a new UUID")
    source: str | None = Field(None, description="source of events from plain requests; default the path")
    max_body: Size = Field(1024 * 1024, description="largest accepted body; larger gets 413")
    auth: WebhookAuth | None = Field(None, description="required credentials; none means open")
    rate: RateLimit | None = Field(None, description="token bucket for this webhook; past it 429 with Retry-After")

    @field_validator("path")
    @classmethod
    def _not_the_mesh_own(cls, value: str) -> str:
        if is_mesh_path(value):
            raise ValueError(f"{value} is served by the mesh itself (/, {', '.join(MESH_PATHS)} and what is "
                             "under them); choose another path, e.g. /hooks/...")
        return value


# -- one manifest entry ----------------------------------------------------------------

TriggerConfig = KafkaTriggerConfig | NatsTriggerConfig | TimerTriggerConfig | HttpTriggerConfig


class TriggerEntry(Strict):
    """One entry under `triggers:`: exactly one of kafka, nats, timer or http."""

    kafka: KafkaTriggerConfig | None = None
    nats: NatsTriggerConfig | None = None
    timer: TimerTriggerConfig | None = None
    http: HttpTriggerConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, value: Any) -> Any:
        if isinstance(value, dict):
            kinds = [k for k in ("kafka", "nats", "timer", "http") if value.get(k) is not None]
            if len(kinds) != 1 and set(value) <= {"kafka", "nats", "timer", "http"}:
                found = ", ".join(kinds) or "none"
                raise ValueError(f"a trigger is exactly one of kafka, nats, timer or http (found {found})")
        return value

    @property
    def kind(self) -> str:
        return next(k for k in ("kafka", "nats", "timer", "http") if getattr(self, k) is not None)

    @property
    def config(self) -> TriggerConfig:
        return getattr(self, self.kind)
