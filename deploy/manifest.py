"""The manifest (`fmesh.yaml`): its schema, and validation errors that say file, line and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fmesh.broker.filters import (
    Filter,
    FilterError,
    FilterErrors,
    all_of,
    any_of,
    compile_filters,
    compile_shorthand,
)
from fmesh.broker.identity import PeerCredential
from fmesh.broker.policy import sender_filter
from fmesh.deploy.yaml_lines import LocatedYaml, dotted
from fmesh.runtime.sinks.base import SinkOptions, TlsFiles
from fmesh.triggers.config import EnvName, RateLimit, TriggerEntry, read_secret, read_secret_file
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from fmesh.durations import parse_duration
from fmesh.errors import ManifestError
from fmesh.names import NAME_RULE, is_name

HANDLER = re.compile(r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")
PRINCIPAL = re.compile(r"^(admin|anonymous|(peer|token|function|trigger|subscription):[a-z0-9][-a-z0-9_.]{0,62})$")

Duration = Annotated[float, BeforeValidator(parse_duration)]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
_SIZE = re.compile(r"^(\d+)\s*([kmg]i?)?$", re.I)


def parse_size(value: Any) -> int:
    """Bytes in a Kubernetes-style quantity: 256Mi, 1Gi, 500M, or a plain number of bytes."""
    match = _SIZE.match(str(value).strip()) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if not match:
        raise ValueError(f"expected a size such as 256Mi, 1Gi or 500M, got {value!r}")
    size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    if size < 16 * 1024**2:
        raise ValueError(f"{value!r} is too little memory for a replica: give at least 16Mi")
    return size


MemorySize = Annotated[int, BeforeValidator(parse_size)]
SINK_SCHEMES = ("http", "https", "kafka", "nats")


def _check_sink_url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value or value.split("://", 1)[0].lower() not in SINK_SCHEMES:
        raise ValueError(f"expected a URL starting with http://, https://, kafka:// or nats://, got {value!r}")
    if not value.split("://", 1)[1]:
        raise ValueError(f"{value!r} names no host")
    return value


def _check_hand_off(value: Any) -> str:
    return _check_sink_url(value) if isinstance(value, str) and "://" in value else _check_name(value)


SinkUrl = Annotated[str, BeforeValidator(_check_sink_url)]
# Where dead letters and replies may go: a function or bridge by name, or a sink URL.
HandOff = Annotated[str, BeforeValidator(_check_hand_off)]


def _check_name(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"{value!r} is not a valid name: use {NAME_RULE}")
    return value


Name = Annotated[str, BeforeValidator(_check_name)]


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"an environment value must be a string or number, got {type(value).__name__}")


EnvValue = Annotated[str, BeforeValidator(_env_value)]


def lone_surrogate(data: Any) -> tuple[list[str | int], str] | None:
    """The path to the first string in `data` (a key, or a value) holding a lone surrogate,
    and what is wrong with it: YAML's and JSON's `\\ud800` escapes decode to one, and no UTF-8 (an
    environment, a request, a log line) can carry it."""
    stack: list[tuple[list[str | int], Any]] = [([], data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value):
            problem = f"{value!r} is not valid Unicode: it holds a lone surrogate, which UTF-8 cannot carry"
            return path, problem
        if isinstance(value, dict):  # a key and its value have one path: the key's checked first
            for key, item in reversed(value.items()):
                stack.extend([(path + [key], item), (path + [key], key)])
        elif isinstance(value, list):
            stack.extend((path + [index], item) for index, item in reversed(list(enumerate(value))))
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScaleSpec(Strict):
    min: int = Field(0, ge=0, le=1000, description="replicas kept warm even when idle")
    max: int = Field(4, ge=1, le=1000, description="most replicas at once")
    concurrency: int = Field(1, ge=1, le=1000, description="events a replica handles at once")
    idle_timeout: Duration = Field(30.0, ge=0, description="idle time before a replica stops")
    stable_window: Duration | None = Field(
        None, ge=0, description="scale down only to the most replicas wanted within this window "
        "(default: idle_timeout)")

    @model_validator(mode="after")
    def _min_below_max(self) -> ScaleSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class DeliverySpec(Strict):
    retries: int = Field(3, ge=0, le=1000, description="attempts after the first")
    backoff: Literal["exponential", "linear"] = "exponential"
    delay: Duration = Field(0.2, ge=0, description="wait before the first retry")
    max_delay: Duration = Field(60.0, ge=0, description="longest wait between attempts")
    timeout: Duration | None = Field(None, gt=0, description="per attempt; defaults to the function's timeout")
    dead_letter: HandOff | None = Field(
        None, description="function, bridge, or sink URL (http(s)://, kafka://, nats://), for events that failed")
    ordering: Literal["unordered", "ordered"] = Field(
        "unordered", description="ordered: events with the same partitionkey go one at a time, in order")
    content_mode: Literal["binary", "structured"] = Field(
        "binary", description="how events are POSTed to command functions and URLs")
    ttl: Duration | None = Field(None, gt=0, description="an event not delivered within this long after it was "
                                 "stored goes to the dead letters, retries left or not")


class SecretFrom(Strict):
    env: str | None = Field(None, description="the mesh's environment variable holding the value")
    file: str | None = Field(None, description="a file on the mesh's machine holding the value")

    @model_validator(mode="after")
    def _one_source(self) -> SecretFrom:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self


class Filtered(Strict):
    """What functions and subscriptions share: Knative-style `filters:`, all of which must match."""

    filters: list[Any] | None = Field(None, description="Knative-style filters (all must match)")

    @field_validator("filters")
    @classmethod
    def _filters_compile(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            compile_filters(value, "filters")  # a FilterError says where (see _located_error)
        return value

    def _combined(self, parts: list[Filter], errors: FilterErrors) -> Filter:
        """`parts` and the `filters:` list, all of which must match."""
        if self.filters is not None:
            parts = [*parts, compile_filters(self.filters, "filters", errors)]
        return all_of(parts, errors)


class FunctionSpec(Filtered):
    handler: str | None = Field(None, description="path/to/file.py:function, relative to the manifest's folder")
    command: list[str] | None = Field(None, description="or any program serving CloudEvents over HTTP on $PORT")
    workdir: str | None = Field(None, description="the command's folder, relative to the manifest (uploaded)")
    external: bool = Field(False, description="runs outside fmesh (any program serving CloudEvents over HTTP, "
                           "anywhere): no node starts it; `fmesh sidecar --function NAME` beside it delivers")
    on: list[dict[str, Any]] = Field(default_factory=list, description="events that invoke the function")
    env: dict[str, EnvValue] = Field(default_factory=dict)
    secrets: list[str] | dict[str, SecretFrom] = Field(
        default_factory=list, description="env vars whose values come from the mesh's env or files")
    scale: ScaleSpec = Field(default_factory=ScaleSpec)
    timeout: Duration = Field(30.0, gt=0, description="how long one attempt may take")
    memory: MemorySize | None = Field(None, description="memory cap of a replica, e.g. 256Mi")
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    reply_to: HandOff | None = Field(
        None, description="send replies to this function, bridge or sink URL instead of back into the mesh")
    sink_options: dict[str, Any] = Field(default_factory=dict, description="headers, auth and TLS for reply_to")
    allow: list[str] | None = Field(
        None, description="only events from these senders reach it (peer:eu, token:ci, trigger:orders, "
        "function:hello, admin, anonymous); default: from anyone")

    @field_validator("handler")
    @classmethod
    def _handler_shape(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER.match(value):
            raise ValueError(f"{value!r} should look like functions/hello/handler.py:handle")
        return value

    @field_validator("command")
    @classmethod
    def _command_shape(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError("command must be a non-empty list of strings, e.g. [node, server.js]")
        return value

    @model_validator(mode="after")
    def _handler_or_command(self) -> FunctionSpec:
        if self.external:
            if self.handler or self.command or self.workdir:
                raise ValueError("an external function has no handler, command or workdir: it runs elsewhere")
            if self.reply_to is not None:
                raise ValueError("an external function's replies are routed like any event: reply_to is not "
                                 "supported for it yet (filter on the reply type instead)")
            return self
        if (self.handler is None) == (self.command is None):
            raise ValueError("give either handler (a Python function) or command (any program), not both")
        if self.workdir is not None and self.command is None:
            raise ValueError("workdir goes with command; a handler's folder is the one it is in")
        return self

    @field_validator("allow")
    @classmethod
    def _principals(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("allow lists who may reach the function: give at least one, or leave it out for all")
        for name in value or ():
            if not isinstance(name, str) or not PRINCIPAL.match(name):
                raise ValueError(f"{name!r} is not a sender: use peer:<name>, token:<name>, trigger:<name>, "
                                 "function:<name>, admin or anonymous")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        # checked here: a replica setting `A=B` failed to start and the deploy waited 30 s for it
        for name, text in value.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _)")
            if "\0" in text:
                raise ValueError(f"the value of {name} holds a NUL character, which no environment can")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: list[str] | dict[str, SecretFrom]) -> list[str] | dict[str, SecretFrom]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("on")
    @classmethod
    def _on_compiles(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, item in enumerate(value):
            compile_shorthand(item, f"on[{index}]")  # a FilterError says where (see _located_error)
        return value

    def compiled_filter(self) -> Filter:
        """Any `on:` item matches, and all `filters:` match; neither given: no events."""
        errors = FilterErrors()
        if not self.on and self.filters is None:
            return any_of([], errors)
        on = [any_of([compile_shorthand(item, "", errors) for item in self.on], errors)] if self.on else []
        routed = self._combined(on, errors)
        return routed if self.allow is None else all_of([routed, sender_filter(self.allow)], errors)

    @property
    def folder(self) -> str | None:
        """What gets uploaded: the handler file's folder, or the command's workdir (nothing
        for an external function)."""
        if self.external:
            return None
        if self.handler is None:
            return self.workdir or "."
        return str(Path(self.handler.rsplit(":", 1)[0]).parent)

    @property
    def handler_in_folder(self) -> str | None:
        if self.handler is None:
            return None
        file, function = self.handler.rsplit(":", 1)
        return f"{Path(file).name}:{function}"

    def secret_sources(self) -> dict[str, tuple[str | None, str | None]]:
        """{name: (env var, file)}; a bare name reads the mesh's variable of that name."""
        if isinstance(self.secrets, list):
            return {name: (name, None) for name in self.secrets}
        return {name: (source.env, source.file) for name, source in self.secrets.items()}


class SubscriptionSpec(Filtered):
    """Events matching `filter`/`filters` go to `to`, with the delivery policy of a function."""

    filter: dict[str, Any] = Field(default_factory=dict, description="attribute: value or {exact|prefix|suffix}")
    to: SinkUrl = Field(description="http(s)://..., kafka://host:port/topic or nats://host:port/subject")
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    concurrency: int = Field(32, ge=1, le=10_000, description="deliveries in flight at once")
    options: dict[str, Any] = Field(default_factory=dict, description="headers, auth and TLS for the sink")

    @field_validator("filter")
    @classmethod
    def _filter_compiles(cls, value: dict[str, Any]) -> dict[str, Any]:
        compile_shorthand(value, "filter")
        return value

    @field_validator("options")
    @classmethod
    def _options_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        SinkOptions.model_validate(value)
        return value

    def compiled_filter(self) -> Filter:
        errors = FilterErrors()
        return self._combined([compile_shorthand(self.filter, "", errors)], errors)


def _check_mesh_url(value: Any) -> str:
    if not isinstance(value, str) or value.split("://", 1)[0].lower() not in ("http", "https") \
            or not value.split("://", 1)[-1].strip("/"):
        raise ValueError(f"expected the other mesh's URL, http(s)://host:port, got {value!r}")
    return value


MeshUrl = Annotated[str, BeforeValidator(_check_mesh_url)]


class BridgeAuthSpec(Strict):
    """How this mesh proves who it is to the other: one secret, from the environment or a file."""

    token_env: EnvName | None = Field(None, description="env var with a bearer token the other mesh accepts")
    token_file: str | None = Field(None, description="file holding that token")
    hmac_secret_env: EnvName | None = Field(None, description="env var with an HMAC secret shared with the other mesh")
    hmac_secret_file: str | None = Field(None, description="file holding that secret")
    peer: Name | None = Field(None, description="the name the other mesh knows this one by, sent with HMAC "
                              "signatures (default: this mesh's id)")

    @model_validator(mode="after")
    def _one_secret(self) -> BridgeAuthSpec:
        given = [n for n in ("token_env", "token_file", "hmac_secret_env", "hmac_secret_file") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of token_env, token_file, hmac_secret_env, hmac_secret_file"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class BridgeDeliverySpec(DeliverySpec):
    """A bridge waits out the other mesh being down: it retries until the ttl, not a count."""

    retries: int | None = Field(None, ge=0, description="attempts after the first (default: until the ttl)")
    max_delay: Duration = Field(5.0, ge=0, description="longest wait between attempts")
    ttl: Duration | None = Field(86400.0, gt=0, description="an event still waiting after this long goes to "
                                 "the dead letters")


class BridgeSpec(Filtered):
    """Events matching `filter`/`filters` are forwarded to another mesh's ingress."""

    to: MeshUrl = Field(description="the other mesh, http(s)://host:port")
    filter: dict[str, Any] = Field(default_factory=dict, description="attribute: value or {exact|prefix|suffix}")
    auth: BridgeAuthSpec | None = Field(None, description="how this mesh authenticates to the other")
    tls: TlsFiles | None = Field(None, description="certificates for an https:// mesh: {ca, cert, key}")
    delivery: BridgeDeliverySpec = Field(default_factory=BridgeDeliverySpec)
    concurrency: int = Field(256, ge=1, le=10_000, description="events in flight to the other mesh at once "
                             "(sent in batches of up to 64)")

    @field_validator("filter")
    @classmethod
    def _filter_compiles(cls, value: dict[str, Any]) -> dict[str, Any]:
        compile_shorthand(value, "filter")
        return value

    def compiled_filter(self) -> Filter:
        errors = FilterErrors()
        return self._combined([compile_shorthand(self.filter, "", errors)], errors)


class PeerAuth(Strict):
    """How a peer proves who it is: exactly one of a bearer token, an HMAC secret (each from
    an env var or a file of the mesh's), or the subject of its client certificate."""

    token_env: EnvName | None = Field(None, description="env var with the token it sends as Bearer")
    token_file: str | None = Field(None, description="file with that token")
    hmac_secret_env: EnvName | None = Field(None, description="env var with the secret it signs requests with")
    hmac_secret_file: str | None = Field(None, description="file with that secret")
    subject: str | None = Field(None, min_length=1, description="CN or DNS/URI SAN of its client certificate (mTLS)")
    tolerance: Duration = Field(300.0, gt=0, description="signed requests: how far X-Fmesh-Timestamp may be "
                                "from now before the request counts as replayed")

    @model_validator(mode="after")
    def _exactly_one(self) -> PeerAuth:
        given = [k for k in ("token_env", "token_file", "hmac_secret_env", "hmac_secret_file", "subject")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of token_env, token_file, hmac_secret_env, hmac_secret_file or "
                             f"subject (found {', '.join(given) or 'none'}); secrets never go in the manifest")
        return self

    def credential(self, field: str) -> PeerCredential:
        """The peer's credential, its secret read now (TriggerConfigError names what is missing)."""
        if self.subject is not None:
            return PeerCredential(subject=self.subject)
        key, source = next((k, v) for k, v in self.model_dump().items() if v is not None and k != "tolerance")
        where = f"{field}.{key}"
        value = read_secret(source, where) if key.endswith("_env") else read_secret_file(source, where)
        if key.startswith("token"):
            return PeerCredential(token=value)
        return PeerCredential(secret=value.encode(), tolerance=self.tolerance)


class PeerSpec(Strict):
    """Another mesh, or any sender, that may publish here (`fmeshsender: peer:<name>`)."""

    auth: PeerAuth
    allow: dict[str, Any] | None = Field(None, description="what it may publish, as a subscription's filter "
                                         "(filters: and cesql: too); default: anything")
    rate: RateLimit | None = Field(None, description="token bucket: {rate: 100/s, burst: 200}; past it 429")

    @field_validator("allow")
    @classmethod
    def _allow_compiles(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            compile_shorthand(value, "allow")
        return value

    def compiled_allow(self) -> Filter | None:
        return compile_shorthand(self.allow, "") if self.allow is not None else None


class Manifest(Strict):
    functions: dict[Name, FunctionSpec] = Field(default_factory=dict)
    subscriptions: dict[Name, SubscriptionSpec] = Field(default_factory=dict)
    triggers: dict[Name, TriggerEntry] = Field(default_factory=dict)
    bridges: dict[Name, BridgeSpec] = Field(default_factory=dict)
    peers: dict[Name, PeerSpec] = Field(default_factory=dict)


SECTIONS: dict[str, type[BaseModel]] = {
    "functions": FunctionSpec, "subscriptions": SubscriptionSpec, "triggers": TriggerEntry,
    "bridges": BridgeSpec, "peers": PeerSpec}


def parse_manifest(text: str, file: str = "fmesh.yaml") -> Manifest:
    """Validate manifest text; a ManifestError lists every problem with its line."""
    import yaml

    try:
        located = LocatedYaml(text, file)
    except yaml.YAMLError as exc:
        raise ManifestError(file, _yaml_error_line(exc, text), "",
                            f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    data = located.data if located.data is not None else {}
    if not isinstance(data, dict):
        raise ManifestError(file, 1, "", f"expected a mapping with 'functions:', got {type(data).__name__}")
    found = lone_surrogate(data)
    if found is not None:
        raise ManifestError(file, located.line_of(found[0]), dotted(found[0]), found[1])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise _located_error(exc, located) from None


def _yaml_error_line(exc: Exception, text: str) -> int:
    """The line of a YAML error: its mark, or (an unprintable character) its position."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(exc, "position", None)
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else 1


def load_manifest(path: Path) -> Manifest:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(str(path), None, "", f"cannot read the manifest: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), raw.count(b"\n", 0, exc.start) + 1, "",
                            f"not UTF-8 text: byte {raw[exc.start]:#04x} at offset {exc.start}") from None
    manifest = parse_manifest(text, str(path))
    check_files(manifest, path, LocatedYaml(text, str(path)))
    return manifest


def check_files(manifest: Manifest, path: Path, located: LocatedYaml) -> None:
    for name, function in manifest.functions.items():
        if function.external:
            continue
        if function.handler is not None:
            where, wanted = ("functions", name, "handler"), path.parent / function.handler.rsplit(":", 1)[0]
            exists = wanted.is_file()
        else:
            where, wanted = ("functions", name, "workdir"), path.parent / (function.folder or ".")
            exists = wanted.is_dir()
        if not exists:
            raise ManifestError(str(path), located.line_of(where), ".".join(where), f"{wanted} does not exist")


def is_function_target(target: str | None) -> bool:
    """A dead-letter or reply target that names a function (not a sink URL)."""
    return target is not None and "://" not in target


def function_references(manifest: Manifest) -> list[tuple[tuple[str, ...], str]]:
    """(field path, name) of every dead-letter and reply target naming a function or bridge."""
    found = []
    for section, items in (("functions", manifest.functions), ("subscriptions", manifest.subscriptions),
                           ("bridges", manifest.bridges)):
        for name, item in items.items():
            if is_function_target(item.delivery.dead_letter):
                found.append(((section, name, "delivery", "dead_letter"), item.delivery.dead_letter))
            if is_function_target(getattr(item, "reply_to", None)):
                found.append(((section, name, "reply_to"), item.reply_to))
    return found


def check_references(manifest: Manifest, path: Path, deployed: set[str]) -> None:
    """Every function or bridge a dead letter or reply goes to is in the manifest or
    already deployed (`deployed`: the names of both)."""
    known = set(manifest.functions) | set(manifest.bridges) | deployed
    for name in sorted(set(manifest.functions) & set(manifest.bridges)):
        located = LocatedYaml(path.read_text(encoding="utf-8"), str(path))
        raise ManifestError(str(path), located.key_line(("bridges", name)), f"bridges.{name}",
                            f"a function is named {name!r} too: rename one (replies and dead letters "
                            "name their target)")
    for where, target in function_references(manifest):
        if target not in known:
            located = LocatedYaml(path.read_text(encoding="utf-8"), str(path))
            choices = ", ".join(sorted(known)) or "none"
            raise ManifestError(str(path), located.line_of(where), ".".join(where),
                                f"no function or bridge named {target!r} (there are: {choices})")


def _located_error(exc: ValidationError, located: LocatedYaml) -> ManifestError:
    problems = []
    for error in exc.errors():
        loc = _filter_location([part for part in error["loc"] if part != "[key]"], error)
        field = dotted(loc)
        if error["type"] == "extra_forbidden":
            line = located.key_line(loc)
        elif error["type"] == "missing" or "[key]" in error["loc"]:
            line = located.key_line(loc[:-1] if error["type"] == "missing" else loc)
        else:
            line = located.line_of(loc)
        problems.append((line, field, _explain(error, loc)))
    line, field, problem = problems[0]
    error = ManifestError(located.file, line, field, problem)
    if len(problems) > 1:
        more = "\n".join(f"{located.file}:{ln}: {fld}: {prob}" for ln, fld, prob in problems[1:])
        error.args = (f"{error}\n{more}",)
    error.problems = problems  # type: ignore[attr-defined]
    return error


def _filter_location(loc: list[Any], error: dict[str, Any]) -> list[Any]:
    """A FilterError knows where inside `on`/`filters` it is: point the location there."""
    cause = error.get("ctx", {}).get("error")
    if not isinstance(cause, FilterError) or not cause.path:
        return loc
    inner: list[Any] = []
    for part in cause.path.split("."):
        name, indexes = _INDEXED.fullmatch(part).groups()  # type: ignore[union-attr]  # always matches
        inner.append(name)
        inner.extend(int(index) for index in re.findall(r"\d+", indexes))
    return loc[:-1] + inner


_INDEXED = re.compile(r"(.*?)((?:\[\d+\])*)", re.S)  # `on[0][1]`; a key like `type[x` stays whole


def _explain(error: dict[str, Any], loc: list[Any]) -> str:
    if error["type"] == "extra_forbidden":
        expected = _fields_at(loc[:-1])
        hint = f"; expected one of: {', '.join(expected)}" if expected else ""
        return f"unknown field {loc[-1]!r}{hint}"
    if error["type"] == "missing":
        return "required field is missing"
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FilterError):
        return cause.problem
    message = error["msg"].removeprefix("Value error, ")
    return f"{message} (got {_short(error['input'])})" if error["type"] != "value_error" and "input" in error \
        and not isinstance(error["input"], dict | list) else message


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _fields_at(loc: list[Any]) -> list[str]:
    """Field names the model accepts at `loc`, to suggest in place of an unknown one."""
    model: type[BaseModel] = Manifest
    path = list(loc)
    while path:
        key = path.pop(0)
        if model is Manifest and key in SECTIONS and path:
            path.pop(0)
            model = SECTIONS[key]
            continue
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)
