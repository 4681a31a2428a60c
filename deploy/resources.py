"""What the control plane deploys, kind by kind: peers, functions, subscriptions and triggers.
Each kind validates a request item, runs it on the node, and stops it; the control
plane stores and diffs them all alike."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fmesh.broker.filters import Filter
from fmesh.broker.identity import PeerCredential
from fmesh.broker.policy import Rule
from fmesh.deploy.bundle import BundleStore
from fmesh.deploy.dependencies import DependencyInstaller, top_level_names
from fmesh.deploy.manifest import (
    BridgeSpec,
    DeliverySpec,
    PeerSpec,
    SubscriptionSpec,
    is_function_target,
    lone_surrogate,
)
from fmesh.deploy.manifest import FunctionSpec as ManifestFunction
from fmesh.deploy.operations import NodeOperations
from fmesh.deploy.yaml_lines import dotted
from fmesh.runtime.policy import DeliveryPolicy, ScalePolicy
from fmesh.runtime.runtime import FunctionSpec, SinkSpec, subscription_name
from fmesh.runtime.secrets import SecretSource
from fmesh.runtime.sinks.bridge import BridgeAuth
from fmesh.triggers.config import TriggerEntry, read_secret, read_secret_file
from pydantic import BaseModel, ValidationError

from fmesh.errors import DeployError, HandlerError, TriggerConfigError
from fmesh.names import NAME_RULE, is_name


@dataclass
class Resource:
    kind: str
    name: str
    spec: BaseModel
    bundle: str | None = None

    @property
    def version(self) -> str:
        text = json.dumps({"spec": self.spec.model_dump(mode="json"), "bundle": self.bundle}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> bytes:
        return json.dumps({"kind": self.kind, "name": self.name, "spec": self.spec.model_dump(mode="json"),
                           "bundle": self.bundle}).encode()


class Kind(Protocol):
    name: str

    def validate(self, name: str, item: dict[str, Any]) -> Resource: ...

    async def run(self, resource: Resource) -> None: ...

    async def stop(self, name: str) -> None: ...

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        """What can be checked without running it (secrets, files, clashes with what runs and
        with the rest of `wanted`, this kind's part of the deploy), before anything of a
        deploy changes; DeployError if it cannot run as given."""

    async def verify(self, resource: Resource) -> None:
        """Start the resource once, before anything of it is deployed (DeployError if it cannot)."""

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        """(field, function name) of each function the resource hands events to."""

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        """The subscription and filter it takes events by (None: it takes none), so that when
        it cannot run after a restart its events still wait in the log until it can."""


def check_name(kind: str, name: str) -> None:
    if not is_name(name):
        raise DeployError(f"{kind} name {name!r} is not valid: {NAME_RULE}")


def parse_spec(kind: str, name: str, model: type[BaseModel], spec: Any) -> BaseModel:
    found = lone_surrogate(spec)
    if found is not None:  # a request's JSON may say "\\ud800", as a manifest's YAML may
        raise DeployError(f"{kind} {name}: {dotted(found[0])}: {found[1]}")
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise DeployError(f"{kind} {name}: {exc}") from exc


UNTIL_TTL = 10**9  # "retries: none given" on a bridge: as many as the ttl leaves time for


def delivery_policy(delivery: DeliverySpec, timeout: float, dead_letter: str | None) -> DeliveryPolicy:
    return DeliveryPolicy(retries=UNTIL_TTL if delivery.retries is None else delivery.retries,
                          backoff=delivery.backoff, delay=delivery.delay,
                          max_delay=delivery.max_delay, timeout=delivery.timeout or timeout,
                          dead_letter=dead_letter, ordered=delivery.ordering == "ordered", ttl=delivery.ttl)


def named_target(node: NodeOperations, name: str) -> str:
    """The subscription a dead-letter or reply target named `name` stands for: a bridge's
    if a bridge has that name (bridges are deployed first), else a function's."""
    bridge = f"bridge:{name}"
    return bridge if node.has_sink(bridge) else subscription_name(name)


def dead_letter_target(node: NodeOperations, owner: str, delivery: DeliverySpec) -> tuple[str | None, SinkSpec | None]:
    """The subscription dead letters go to: a function's or bridge's, or a sink of the owner's own."""
    target = delivery.dead_letter
    if target is None:
        return None, None
    if is_function_target(target):
        return named_target(node, target), None
    sink = SinkSpec(f"deadletter:{owner}", target, {}, delivery_policy(delivery, 30.0, None),
                    source=f"/fmesh/dead-letters/{owner}")
    return sink.subscription, sink


class FunctionKind:
    name = "function"

    def __init__(self, node: NodeOperations, bundles: BundleStore, dependencies: DependencyInstaller,
                 needs_code: bool = True) -> None:
        self.node = node
        self.bundles = bundles
        self.dependencies = dependencies
        self.needs_code = needs_code  # False on a sidecar: it routes to functions, never runs their code

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("function", name)
        spec = parse_spec("function", name, ManifestFunction, item.get("spec"))
        bundle = item.get("bundle", "")
        if spec.external or not self.needs_code:
            return Resource("function", name, spec, None if spec.external else bundle)
        try:
            present = self.bundles.has(bundle)
        except ValueError as exc:
            raise DeployError(f"function {name}: {exc}") from exc
        if not present:
            raise DeployError(f"function {name}: bundle {bundle[:12]} was not uploaded")
        if not self.dependencies.is_ready(self.bundles.path(bundle)):
            raise DeployError(f"function {name}: its requirements.txt is not installed yet "
                              f"(POST /v1/bundles/{bundle}/prepare first; fmesh deploy does)")
        return Resource("function", name, spec, bundle)

    async def run(self, resource: Resource) -> None:
        spec: ManifestFunction = resource.spec  # type: ignore[assignment]
        dead_letter, dead_letter_sink = dead_letter_target(self.node, resource.name, spec.delivery)
        if spec.external:
            await self._run_external(resource, dead_letter, dead_letter_sink)
            return
        reply_to: SinkSpec | str | None = None
        if is_function_target(spec.reply_to):
            reply_to = named_target(self.node, spec.reply_to)  # type: ignore[arg-type]
        elif spec.reply_to:
            reply_to = SinkSpec(f"reply:{resource.name}", spec.reply_to, spec.sink_options,
                                delivery_policy(spec.delivery, spec.timeout, dead_letter),
                                source=f"/fmesh/functions/{resource.name}")
        await self.node.deploy_function(self.runtime_spec(resource, dead_letter), spec.compiled_filter(),
                                        reply_to, dead_letter_sink)

    async def _run_external(self, resource: Resource, dead_letter: str | None,
                            dead_letter_sink: SinkSpec | None) -> None:
        """Where `fmesh sidecar` serves this function, deliver to its target; elsewhere only
        route: its events wait in the store for the sidecar, wherever that runs."""
        spec: ManifestFunction = resource.spec  # type: ignore[assignment]
        target, subscription = self.node.external_target(resource.name), subscription_name(resource.name)
        if target is None:
            if self.node.has_sink(subscription):  # served here before: stop, keeping what waits
                await self.node.stop_delivering(subscription)
            self.node.keep_routing(subscription, spec.compiled_filter(), spec.delivery.ordering == "ordered")
            return
        policy = delivery_policy(spec.delivery, spec.timeout, dead_letter)
        sink = SinkSpec(subscription, target, {}, policy, source=f"/fmesh/functions/{resource.name}")
        await self.node.deploy_subscription(sink, spec.compiled_filter(), dead_letter_sink)

    async def stop(self, name: str) -> None:
        await self.node.remove_subscription(subscription_name(name))  # an external function's, if any
        await self.node.remove_function(name)

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        return subscription_name(resource.name), resource.spec.compiled_filter()  # type: ignore[attr-defined]

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        if not resource.spec.external:  # type: ignore[attr-defined]
            self.runtime_spec(resource, None)

    async def verify(self, resource: Resource) -> None:
        """Load the function as a replica would; DeployError with the reason if it cannot.
        (An external function runs elsewhere: its sidecar retries until it answers.)"""
        if resource.spec.external:  # type: ignore[attr-defined]
            return
        try:
            await self.node.verify(self.runtime_spec(resource, None))
        except HandlerError as exc:
            raise DeployError(f"function {resource.name} did not start, so it was not deployed: {exc}") from None

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        spec: ManifestFunction = resource.spec  # type: ignore[assignment]
        return [(field, target) for field, target in (("delivery.dead_letter", spec.delivery.dead_letter),
                                                      ("reply_to", spec.reply_to)) if is_function_target(target)]

    def runtime_spec(self, resource: Resource, dead_letter: str | None) -> FunctionSpec:
        spec: ManifestFunction = resource.spec  # type: ignore[assignment]
        directory = self.bundles.path(resource.bundle or "")
        site_packages = self.dependencies.target(directory)
        if site_packages is not None and not site_packages.is_dir():
            raise DeployError(f"function {resource.name}: its requirements are not installed ({site_packages})")
        preloaded = self.node.preloaded
        return FunctionSpec(
            name=resource.name, directory=directory, handler=spec.handler_in_folder,
            command=tuple(spec.command or ()), env=dict(spec.env),
            secrets={name: SecretSource(env, file) for name, (env, file) in spec.secret_sources().items()},
            memory_bytes=spec.memory, structured=spec.delivery.content_mode == "structured",
            site_packages=site_packages,
            fresh_interpreter=bool(site_packages) and bool(top_level_names(site_packages) & preloaded),  # type: ignore[arg-type]
            scale=ScalePolicy(min=spec.scale.min, max=spec.scale.max, concurrency=spec.scale.concurrency,
                              idle_timeout=spec.scale.idle_timeout, stable_window=spec.scale.stable_window),
            delivery=delivery_policy(spec.delivery, spec.timeout, dead_letter),
            version=resource.version)


class SubscriptionKind:
    """Route matching events to any URL or sink, with the same delivery policy as functions."""

    name = "subscription"

    def __init__(self, node: NodeOperations) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("subscription", name)
        return Resource("subscription", name, parse_spec("subscription", name, SubscriptionSpec, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        sink, dead_letter_sink = self.sinks(resource)
        spec: SubscriptionSpec = resource.spec  # type: ignore[assignment]
        with deploy_errors("subscription", resource.name):
            await self.node.deploy_subscription(sink, spec.compiled_filter(), dead_letter_sink)

    def sinks(self, resource: Resource) -> tuple[SinkSpec, SinkSpec | None]:
        spec: SubscriptionSpec = resource.spec  # type: ignore[assignment]
        dead_letter, dead_letter_sink = dead_letter_target(self.node, f"subscription-{resource.name}", spec.delivery)
        options = {**spec.options, "structured": spec.delivery.content_mode == "structured"}
        sink = SinkSpec(f"subscription:{resource.name}", spec.to, options,
                        delivery_policy(spec.delivery, spec.delivery.timeout or 30.0, dead_letter),
                        max_inflight=spec.concurrency, source=f"/fmesh/subscriptions/{resource.name}")
        return sink, dead_letter_sink

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        check_sinks(self.node, "subscription", resource.name, self.sinks(resource))

    async def stop(self, name: str) -> None:
        await self.node.remove_subscription(f"subscription:{name}")

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        return f"subscription:{resource.name}", resource.spec.compiled_filter()  # type: ignore[attr-defined]

    async def verify(self, resource: Resource) -> None:
        pass  # a sink is reached when events go to it; its delivery policy covers it being down

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        target = resource.spec.delivery.dead_letter  # type: ignore[attr-defined]
        return [("delivery.dead_letter", target)] if is_function_target(target) else []


class TriggerKind:
    """Sources of events: Kafka, NATS, timers and webhooks (see fmesh.triggers)."""

    name = "trigger"

    def __init__(self, node: NodeOperations) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("trigger", name)
        return Resource("trigger", name, parse_spec("trigger", name, TriggerEntry, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        with deploy_errors("trigger", resource.name):
            await self.node.deploy_trigger(resource.name, resource.spec)  # type: ignore[arg-type]

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        with deploy_errors("trigger", resource.name):
            path = getattr(self.node.build_trigger(resource.name, resource.spec), "path", None)  # type: ignore[arg-type]
            # build_trigger sees the running triggers; two new ones on one path meet only here,
            # before anything is applied (a clash found while applying would leave half a deploy)
            other = next((r.name for r in wanted if r.name != resource.name and _http_path(r) == path), None)
            if path is not None and other is not None:
                raise TriggerConfigError(f"triggers.{resource.name}.http.path",
                                         f"{path} is trigger {other}'s too, in the same deploy")

    async def stop(self, name: str) -> None:
        await self.node.remove_trigger(name)

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        return None

    async def verify(self, resource: Resource) -> None:
        pass  # a trigger whose broker is down retries and says so in status

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        return []


def _http_path(resource: Resource) -> str | None:
    http = getattr(resource.spec, "http", None)
    return http.path if http is not None else None


class BridgeKind:
    """Forward matching events to another mesh (see fmesh.runtime.sinks.bridge)."""

    name = "bridge"

    def __init__(self, node: NodeOperations) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("bridge", name)
        return Resource("bridge", name, parse_spec("bridge", name, BridgeSpec, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        sink, dead_letter_sink = self.sinks(resource)
        with deploy_errors("bridge", resource.name):
            await self.node.deploy_subscription(sink, resource.spec.compiled_filter(), dead_letter_sink)  # type: ignore[attr-defined]

    def sinks(self, resource: Resource) -> tuple[SinkSpec, SinkSpec | None]:
        spec: BridgeSpec = resource.spec  # type: ignore[assignment]
        dead_letter, dead_letter_sink = dead_letter_target(self.node, f"bridge-{resource.name}", spec.delivery)
        options = {"structured": spec.delivery.content_mode == "structured",
                   **({"tls": spec.tls.model_dump(mode="json")} if spec.tls else {})}
        sink = SinkSpec(f"bridge:{resource.name}", spec.to, options,
                        delivery_policy(spec.delivery, spec.delivery.timeout or 30.0, dead_letter),
                        max_inflight=spec.concurrency, source=f"/fmesh/bridges/{resource.name}",
                        bridge=self.auth(resource.name, spec))
        return sink, dead_letter_sink

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        check_sinks(self.node, "bridge", resource.name, self.sinks(resource))

    def auth(self, name: str, spec: BridgeSpec) -> BridgeAuth:
        """The bridge's secret, read now from the mesh's environment or a file."""
        auth, peer = spec.auth, self.node.mesh_id
        if auth is None:
            return BridgeAuth(peer)
        try:
            secret = (read_secret(auth.token_env or auth.hmac_secret_env, f"bridges.{name}.auth")
                      if auth.token_env or auth.hmac_secret_env
                      else read_secret_file(auth.token_file or auth.hmac_secret_file, f"bridges.{name}.auth"))
        except TriggerConfigError as exc:
            raise DeployError(f"bridge {name}: {exc}") from exc
        if auth.token_env or auth.token_file:
            return BridgeAuth(auth.peer or peer, token=secret)
        return BridgeAuth(auth.peer or peer, hmac_secret=secret.encode())

    async def stop(self, name: str) -> None:
        await self.node.remove_subscription(f"bridge:{name}")

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        return f"bridge:{resource.name}", resource.spec.compiled_filter()  # type: ignore[attr-defined]

    async def verify(self, resource: Resource) -> None:
        pass  # the other mesh may be down: its events wait (see the ttl)

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        target = resource.spec.delivery.dead_letter  # type: ignore[attr-defined]
        return [("delivery.dead_letter", target)] if is_function_target(target) else []


def check_sinks(node: NodeOperations, kind: str, name: str, sinks: tuple[SinkSpec, SinkSpec | None]) -> None:
    """Build (not start) the sinks a resource delivers to: a missing secret or CA file fails the deploy."""
    with deploy_errors(kind, name):
        for sink in sinks:
            if sink is not None:
                node.open_sink(sink)


@contextmanager
def deploy_errors(kind: str, name: str) -> Iterator[None]:
    """A resource that cannot be built as configured, as the DeployError that names it."""
    try:
        yield
    except (TriggerConfigError, ValueError) as exc:
        raise DeployError(f"{kind} {name}: {exc}") from exc


class PeerKind:
    """Senders known by a token, an HMAC secret or a client certificate, with what they may publish."""

    name = "peer"

    def __init__(self, node: NodeOperations) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("peer", name)
        return Resource("peer", name, parse_spec("peer", name, PeerSpec, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        spec: PeerSpec = resource.spec  # type: ignore[assignment]
        rule = Rule(spec.compiled_allow(), spec.rate.bucket() if spec.rate is not None else None)
        with deploy_errors("peer", resource.name):  # a missing secret, a credential already in use
            self.node.deploy_peer(resource.name, spec.auth.credential(f"peers.{resource.name}.auth"), rule)

    async def stop(self, name: str) -> None:
        self.node.remove_peer(name)

    def route(self, resource: Resource) -> tuple[str, Filter] | None:
        return None

    def check(self, resource: Resource, wanted: list[Resource]) -> None:
        """Its secret is there (a missing env var or file fails the deploy, not the first
        request), and no other peer, deployed or in this deploy, has the same credential."""
        with deploy_errors("peer", resource.name):
            credential = self.credential(resource)
            self.node.check_peer(resource.name, credential)
            for other in wanted:
                if other.name != resource.name and self.credential(other).same_as(credential):
                    raise ValueError(f"peer {other.name} has the same credential: give each peer its own")

    def credential(self, resource: Resource) -> PeerCredential:
        return resource.spec.auth.credential(f"peers.{resource.name}.auth")  # type: ignore[attr-defined]

    async def verify(self, resource: Resource) -> None:
        pass

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        return []
