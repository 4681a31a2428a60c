"""What the control plane deploys, kind by kind: peers, functions, subscriptions and triggers.
Each kind validates a request item, runs it on the node, and stops it; the control
plane stores and diffs them all alike."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from fmesh.broker.policy import Rule
from fmesh.deploy.bundle import BundleStore
from fmesh.deploy.dependencies import DependencyInstaller, top_level_names
from fmesh.deploy.manifest import NAME, DeliverySpec, PeerSpec, SubscriptionSpec, is_function_target
from fmesh.deploy.manifest import FunctionSpec as ManifestFunction
from fmesh.runtime.policy import DeliveryPolicy, ScalePolicy
from fmesh.runtime.runtime import FunctionSpec, SinkSpec, subscription_name
from fmesh.runtime.secrets import SecretSource
from fmesh.triggers.config import TriggerEntry
from pydantic import BaseModel, ValidationError

from fmesh.errors import DeployError, HandlerError, TriggerConfigError
from fmesh.node import Node


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

    async def verify(self, resource: Resource) -> None:
        """Check that the resource can run, before anything of it is deployed (DeployError if not)."""

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        """(field, function name) of each function the resource hands events to."""


def check_name(kind: str, name: str) -> None:
    if not NAME.match(name):
        raise DeployError(f"{kind} name {name!r} is not valid: lowercase letters, digits and '-'")


def parse_spec(kind: str, name: str, model: type[BaseModel], spec: Any) -> BaseModel:
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise DeployError(f"{kind} {name}: {exc}") from exc


def delivery_policy(delivery: DeliverySpec, timeout: float, dead_letter: str | None) -> DeliveryPolicy:
    return DeliveryPolicy(retries=delivery.retries, backoff=delivery.backoff, delay=delivery.delay,
                          max_delay=delivery.max_delay, timeout=delivery.timeout or timeout,
                          dead_letter=dead_letter, ordered=delivery.ordering == "ordered")


def dead_letter_target(owner: str, delivery: DeliverySpec) -> tuple[str | None, SinkSpec | None]:
    """The subscription dead letters go to: a function's, or a sink of the owner's own."""
    target = delivery.dead_letter
    if target is None:
        return None, None
    if "://" not in target:
        return f"function:{target}", None
    sink = SinkSpec(f"deadletter:{owner}", target, {}, delivery_policy(delivery, 30.0, None),
                    source=f"/fmesh/dead-letters/{owner}")
    return sink.subscription, sink


class FunctionKind:
    name = "function"

    def __init__(self, node: Node, bundles: BundleStore, dependencies: DependencyInstaller) -> None:
        self.node = node
        self.bundles = bundles
        self.dependencies = dependencies

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("function", name)
        spec = parse_spec("function", name, ManifestFunction, item.get("spec"))
        bundle = item.get("bundle", "")
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
        dead_letter, dead_letter_sink = dead_letter_target(resource.name, spec.delivery)
        reply_to: SinkSpec | str | None = None
        if is_function_target(spec.reply_to):
            reply_to = subscription_name(spec.reply_to)  # type: ignore[arg-type]
        elif spec.reply_to:
            reply_to = SinkSpec(f"reply:{resource.name}", spec.reply_to, spec.sink_options,
                                delivery_policy(spec.delivery, spec.timeout, dead_letter),
                                source=f"/fmesh/functions/{resource.name}")
        await self.node.deploy_function(self.runtime_spec(resource, dead_letter), spec.compiled_filter(),
                                        reply_to, dead_letter_sink)

    async def stop(self, name: str) -> None:
        await self.node.remove_function(name)

    async def verify(self, resource: Resource) -> None:
        """Load the function as a replica would; DeployError with the reason if it cannot."""
        try:
            await self.node.runtime.verify(self.runtime_spec(resource, None))
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
        preloaded = self.node.runtime.zygote.preloaded
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

    def __init__(self, node: Node) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("subscription", name)
        return Resource("subscription", name, parse_spec("subscription", name, SubscriptionSpec, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        spec: SubscriptionSpec = resource.spec  # type: ignore[assignment]
        dead_letter, dead_letter_sink = dead_letter_target(f"subscription-{resource.name}", spec.delivery)
        options = {**spec.options, "structured": spec.delivery.content_mode == "structured"}
        sink = SinkSpec(f"subscription:{resource.name}", spec.to, options,
                        delivery_policy(spec.delivery, spec.delivery.timeout or 30.0, dead_letter),
                        max_inflight=spec.concurrency, source=f"/fmesh/subscriptions/{resource.name}")
        await self.node.deploy_subscription(sink, spec.compiled_filter(), dead_letter_sink)

    async def stop(self, name: str) -> None:
        await self.node.remove_subscription(name)

    async def verify(self, resource: Resource) -> None:
        pass  # a sink is reached when events go to it; its delivery policy covers it being down

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        target = resource.spec.delivery.dead_letter  # type: ignore[attr-defined]
        return [("delivery.dead_letter", target)] if is_function_target(target) else []


class TriggerKind:
    """Sources of events: Kafka, NATS, timers and webhooks (see fmesh.triggers)."""

    name = "trigger"

    def __init__(self, node: Node) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("trigger", name)
        return Resource("trigger", name, parse_spec("trigger", name, TriggerEntry, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        try:
            await self.node.deploy_trigger(resource.name, resource.spec)  # type: ignore[arg-type]
        except TriggerConfigError as exc:
            raise DeployError(f"trigger {resource.name}: {exc}") from exc

    async def stop(self, name: str) -> None:
        await self.node.remove_trigger(name)

    async def verify(self, resource: Resource) -> None:
        pass  # a trigger whose broker is down retries and says so in status

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        return []


class PeerKind:
    """Senders known by a token, an HMAC secret or a client certificate, with what they may publish."""

    name = "peer"

    def __init__(self, node: Node) -> None:
        self.node = node

    def validate(self, name: str, item: dict[str, Any]) -> Resource:
        check_name("peer", name)
        return Resource("peer", name, parse_spec("peer", name, PeerSpec, item.get("spec")))

    async def run(self, resource: Resource) -> None:
        spec: PeerSpec = resource.spec  # type: ignore[assignment]
        rule = Rule(spec.compiled_allow(), spec.rate.bucket() if spec.rate is not None else None)
        try:
            self.node.deploy_peer(resource.name, spec.auth.credential(f"peers.{resource.name}.auth"), rule)
        except ValueError as exc:  # a missing secret (TriggerConfigError), a credential already in use
            raise DeployError(f"peer {resource.name}: {exc}") from exc

    async def stop(self, name: str) -> None:
        self.node.remove_peer(name)

    async def verify(self, resource: Resource) -> None:
        """Its secret is there: a missing env var or file fails the deploy, not the first request."""
        try:
            resource.spec.auth.credential(f"peers.{resource.name}.auth")  # type: ignore[attr-defined]
        except ValueError as exc:
            raise DeployError(f"peer {resource.name}: {exc}") from exc

    def references(self, resource: Resource) -> list[tuple[str, str]]:
        return []
