"""The control plane: applies manifests to a node, remembers them, restores them on restart."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fmesh.deploy.bundle import BundleStore
from fmesh.deploy.dependencies import DependencyInstaller, top_level_names
from fmesh.deploy.manifest import FunctionSpec as ManifestFunction
from fmesh.deploy.manifest import NAME
from fmesh.errors import DeployError, FmeshError
from fmesh.node import Node
from fmesh.runtime.policy import DeliveryPolicy, ScalePolicy
from fmesh.runtime.runtime import FunctionSpec
from fmesh.runtime.secrets import SecretSource

STATE_PREFIX = "function/"


@dataclass
class DeployedFunction:
    name: str
    spec: ManifestFunction
    bundle: str

    @property
    def version(self) -> str:
        text = json.dumps({"spec": self.spec.model_dump(mode="json"), "bundle": self.bundle}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "spec": self.spec.model_dump(mode="json"),
                           "bundle": self.bundle}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DeployedFunction:
        record = json.loads(data)
        return cls(record["name"], ManifestFunction.model_validate(record["spec"]), record["bundle"])


@dataclass
class Change:
    kind: str
    name: str
    action: str       # created | updated | unchanged | deleted
    version: str = ""


class ControlPlane:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.bundles = BundleStore(node.data_dir / "bundles")
        self.dependencies = DependencyInstaller(node.data_dir / "deps")
        self.functions: dict[str, DeployedFunction] = {}

    async def restore(self) -> int:
        """Bring back what was deployed before the node restarted."""
        for data in (await self.node.log.list_state(STATE_PREFIX)).values():
            function = DeployedFunction.from_json(data)
            try:
                await self._run(function)
            except FmeshError as exc:  # one broken function must not keep the others down
                print(f"fmesh: could not restore function {function.name}: {exc}", file=sys.stderr)
        return len(self.functions)

    def prepare(self, digest: str) -> AsyncIterator[str]:
        """Install a bundle's requirements.txt, yielding pip's output (DeployError on failure)."""
        if not self.bundles.has(digest):
            raise DeployError(f"bundle {digest[:12]} was not uploaded")
        return self.dependencies.stream(self.bundles.path(digest))

    async def apply(self, functions: dict[str, dict[str, Any]], prune: bool = False) -> list[Change]:
        """Make the node run exactly `functions` ({name: {spec, bundle}}), plus what `prune` spares."""
        wanted = [self._validate(name, item) for name, item in sorted(functions.items())]
        changes = []
        for function in wanted:
            old = self.functions.get(function.name)
            if old is not None and old.version == function.version:
                changes.append(Change("function", function.name, "unchanged", function.version))
                continue
            await self._run(function)
            await self.node.log.put_state(STATE_PREFIX + function.name, function.to_json())
            changes.append(Change("function", function.name, "updated" if old else "created", function.version))
        if prune:
            for name in sorted(set(self.functions) - {f.name for f in wanted}):
                await self.delete(name)
                changes.append(Change("function", name, "deleted"))
        return changes

    async def delete(self, name: str) -> bool:
        if self.functions.pop(name, None) is None:
            return False
        await self.node.remove_function(name)
        await self.node.log.delete_state(STATE_PREFIX + name)
        return True

    def _validate(self, name: str, item: dict[str, Any]) -> DeployedFunction:
        if not NAME.match(name):
            raise DeployError(f"function name {name!r} is not valid: lowercase letters, digits and '-'")
        try:
            spec = ManifestFunction.model_validate(item.get("spec"))
        except ValidationError as exc:
            raise DeployError(f"function {name}: {exc}") from exc
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
        return DeployedFunction(name, spec, bundle)

    async def _run(self, function: DeployedFunction) -> None:
        spec = runtime_spec(function, self.bundles, self.dependencies, self.node.runtime.zygote.preloaded)
        await self.node.deploy_function(spec, function.spec.compiled_filter())
        self.functions[function.name] = function


def runtime_spec(function: DeployedFunction, bundles: BundleStore, dependencies: DependencyInstaller,
                 preloaded: frozenset[str]) -> FunctionSpec:
    spec = function.spec
    directory = bundles.path(function.bundle)
    site_packages = dependencies.target(directory)
    if site_packages is not None and not site_packages.is_dir():
        raise DeployError(f"function {function.name}: its requirements are not installed ({site_packages})")
    clash = bool(site_packages) and bool(top_level_names(site_packages) & preloaded)  # type: ignore[arg-type]
    return FunctionSpec(
        name=function.name,
        directory=directory,
        handler=spec.handler_in_folder,
        command=tuple(spec.command or ()),
        secrets={name: SecretSource(env, file) for name, (env, file) in spec.secret_sources().items()},
        memory_bytes=spec.memory,
        structured=spec.delivery.content_mode == "structured",
        site_packages=site_packages,
        fresh_interpreter=clash,
        env=dict(spec.env),
        scale=ScalePolicy(min=spec.scale.min, max=spec.scale.max, concurrency=spec.scale.concurrency,
                          idle_timeout=spec.scale.idle_timeout,
                          stable_window=spec.scale.stable_window),
        delivery=DeliveryPolicy(retries=spec.delivery.retries, backoff=spec.delivery.backoff,
                                delay=spec.delivery.delay, max_delay=spec.delivery.max_delay,
                                timeout=spec.delivery.timeout or spec.timeout,
                                dead_letter=spec.delivery.dead_letter,
                                ordered=spec.delivery.ordering == "ordered"),
        version=function.version,
    )
