"""The control plane: applies manifests to a node, remembers them, restores them on restart.

Every deployed resource is stored under `deployed/<kind>/<name>` in the store's state,
with a version hashed from its spec (and code), so an unchanged resource is left alone.
Each node follows that state (`follow`): what one node deploys or deletes, every node
on the same store runs or stops. (Triggers keep their own state under `trigger/`.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fmesh.deploy.bundle import BundleLimits, BundleStore
from fmesh.deploy.dependencies import DependencyInstaller
from fmesh.deploy.operations import NodeOperations
from fmesh.deploy.resources import BridgeKind, FunctionKind, Kind, PeerKind, Resource, SubscriptionKind, TriggerKind
from fmesh.deploy.unused_code import DEFAULT_GRACE, UnusedCode

from fmesh import meshlog
from fmesh.bindings.common import describe
from fmesh.contracts import Change as StateChange
from fmesh.errors import DeployError
from fmesh.following import follow, now_and_then

log = meshlog.get("fmesh.deploy")


@dataclass
class Change:
    kind: str
    name: str
    action: str       # created | updated | unchanged | deleted
    version: str = ""


DEPLOYED = "deployed/"
RECONCILE_EVERY = 15.0   # seconds between comparisons of what runs here with the deployed state


def state_key(kind: str, name: str) -> str:
    return f"{DEPLOYED}{kind}/{name}"


class ControlPlane:
    def __init__(self, node: NodeOperations, serves: str | None = None,
                 bundle_limits: BundleLimits = BundleLimits(), bundle_grace: float = DEFAULT_GRACE) -> None:
        """`serves`: run that one (external) function and only route the rest, as
        `fmesh sidecar` does; None: run everything, as a node does (and removes the code no
        deployed version has used for `bundle_grace` seconds)."""
        self.node = node
        self.serves = serves
        self.bundles = BundleStore(node.data_dir / "bundles", node.blobs, bundle_limits)
        self.unused_code = UnusedCode(self.bundles, bundle_grace)
        self.dependencies = DependencyInstaller(node.data_dir / "deps")
        # Order matters: peers before anything takes events; bridges (that functions may hand
        # replies and dead letters to) before functions; functions before the subscriptions
        # and triggers that feed them.
        self.kinds: dict[str, Kind] = {
            "peer": PeerKind(node),
            "bridge": BridgeKind(node),
            "function": FunctionKind(node, self.bundles, self.dependencies, needs_code=serves is None),
            "subscription": SubscriptionKind(node),
            "trigger": TriggerKind(node),
        }
        self.deployed: dict[str, dict[str, Resource]] = {kind: {} for kind in self.kinds}
        self._changing = asyncio.Lock()
        self.broken: dict[str, str] = {}   # "<kind>/<name>" → why it could not be restored

    @property
    def functions(self) -> dict[str, Resource]:
        return self.deployed["function"]

    async def restore(self) -> int:
        """Bring back what was deployed before the node restarted (or, on a store shared
        with other nodes, what they deployed before this node joined)."""
        await self.reconcile()
        return sum(len(resources) for resources in self.deployed.values())

    async def follow(self) -> None:
        """Converge on the deployed state as any node on the store changes it, for as long
        as the node runs: a deploy to one node runs on every node within moments."""
        async def apply(change: StateChange) -> None:
            async with self._changing:
                await self._converge(change.key, change.value)

        await asyncio.gather(follow(self.node.state, DEPLOYED, apply, "the deployed state"),
                             now_and_then(RECONCILE_EVERY, self.reconcile, "the deployed state"),
                             *([self.unused_code.run(self.code_in_use, self._changing)] if self.serves is None else []))

    async def code_in_use(self) -> set[str]:
        """The bundles a deployed version names, on any node, or one running here uses."""
        records = await self.node.state.list(state_key("function", ""))
        named = {json.loads(entry.value).get("bundle") or "" for entry in records.values()}
        named |= {r.bundle or "" for r in self.functions.values()}
        here = {path.name for path in self.node.code_in_use() if path.parent == self.bundles.directory}
        return {digest for digest in named | here if digest}

    async def reconcile(self) -> None:
        """Bring this node to the deployed state as it is now, whatever changes were missed."""
        entries = await self.node.state.list(DEPLOYED)
        async with self._changing:
            here = {state_key(k, n) for k, resources in self.deployed.items() for n in resources}
            here |= {DEPLOYED + key for key in self.broken}
            for key in sorted(here - set(entries)):
                await self._converge(key, None)
            for kind in self.kinds:
                for key, entry in entries.items():
                    if key.startswith(state_key(kind, "")):
                        await self._converge(key, entry.value)

    async def _converge(self, key: str, value: bytes | None) -> None:
        kind, _, name = key.removeprefix(DEPLOYED).partition("/")
        if kind not in self.kinds:
            return
        if value is not None:
            await self._bring_back(key, value)
        else:
            await self._stop_here(kind, name)

    async def _stop_here(self, kind: str, name: str) -> bool:
        """Stop a resource on this node: what runs (an older version may, beside a broken
        newer one) and the route kept for a broken one. False when it was not here."""
        was_broken = self.broken.pop(f"{kind}/{name}", None) is not None
        if self.deployed[kind].pop(name, None) is not None:
            await self.kinds[kind].stop(name)
        elif was_broken:
            await self.node.forget_route(f"{kind}:{name}")
        else:
            return False
        return True

    async def _bring_back(self, key: str, value: bytes) -> None:
        """Run a stored resource here unless this version already runs; one that cannot run
        is kept as broken (its events still stored), never raised: the others must come up."""
        resource = None
        try:
            record = json.loads(value)
            kind, _, name = key.removeprefix(DEPLOYED).partition("/")  # the key names it, not the record
            if kind == "function" and self._runs(kind, name):
                await self._bring_code(record.get("bundle", ""))
            resource = self.kinds[kind].validate(name, record)
            if self._changes(resource):
                await self._run(resource)
        except Exception as exc:  # noqa: BLE001 - one broken resource must not keep the others down
            why = describe(exc)
            if self.broken.get(key.removeprefix(DEPLOYED)) != why:  # said once, not at every reconcile
                kind, _, name = key.removeprefix(DEPLOYED).partition("/")
                log.error(f"could not run {key}: {why}", **{kind: name})
            self.broken[key.removeprefix(DEPLOYED)] = why
            if resource is not None:
                self._keep_routing(resource)

    def _keep_routing(self, resource: Resource) -> None:
        """A resource that cannot run now (a secret gone from the environment) still gets its
        events, stored until a deploy mends it: nothing meant for it is dropped meanwhile."""
        route = self.kinds[resource.kind].route(resource)
        if route is not None:
            self.node.keep_routing(*route)

    async def prepare(self, digest: str) -> AsyncIterator[str]:
        """Install a bundle's requirements.txt, yielding pip's output (DeployError on failure)."""
        if not await self.bundles.fetch(digest):
            raise DeployError(f"bundle {digest[:12]} was not uploaded")
        return self._needing(digest, self.dependencies.stream(self.bundles.path(digest)))

    async def _needing(self, digest: str, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        """`lines`, noting at each that the bundle is needed: an install may outlast the grace."""
        async for line in lines:
            self.bundles.touch(digest)
            yield line

    async def _bring_code(self, digest: str) -> None:
        """A function's code and requirements here, whichever node they were uploaded to."""
        if not digest:
            return  # an external function: no code of fmesh's
        if await self.bundles.fetch(digest) and not self.dependencies.is_ready(self.bundles.path(digest)):
            await self.dependencies.install(self.bundles.path(digest), lambda line: None)

    async def apply(self, request: dict[str, dict[str, dict[str, Any]]], prune: bool = False,
                    verify: bool = True) -> list[Change]:
        """Run what `request` ({kind: {name: item}}) names; with `prune`, delete what it does not.

        Everything is validated and checked, and (with `verify`) every new or changed
        function started once, before anything changes: a deploy that fails leaves the
        mesh as it was. One apply or delete at a time, so that what was checked still holds."""
        async with self._changing:
            return await self._apply(request, prune, verify)

    async def _apply(self, request: dict[str, dict[str, dict[str, Any]]], prune: bool, verify: bool) -> list[Change]:
        unknown = set(request) - set(self.kinds)
        if unknown:
            raise DeployError(f"unknown kind {sorted(unknown)[0]!r}: expected one of {', '.join(self.kinds)}")
        wanted = {kind: [self.kinds[kind].validate(name, item) for name, item in sorted(request.get(kind, {}).items())]
                  for kind in self.kinds}
        self._check_references(wanted, prune)
        changing = [r for resources in wanted.values() for r in resources if self._changes(r)]
        for resource in changing:
            self.kinds[resource.kind].check(resource, wanted[resource.kind])
        if verify:
            await self._verify(changing)
        changes = []
        for resources in wanted.values():
            for resource in resources:
                changes.append(await self._apply_one(resource))
        if prune:
            for kind in reversed(self.kinds):
                for name in sorted(set(self.deployed[kind]) - {r.name for r in wanted[kind]}):
                    await self._delete(kind, name)
                    changes.append(Change(kind, name, "deleted"))
        return changes

    def warnings(self) -> list[str]:
        """What is deployed but cannot work as meant on this node."""
        allows = [name for name, r in self.functions.items() if getattr(r.spec, "allow", None)]
        if self.node.ingress_auth_mode != "off" or not (self.deployed["peer"] or allows):
            return []
        return ["ingress auth is off on this mesh: every publisher is anonymous, so peers are not told apart and "
                "functions with allow: get no events from them (restart with --ingress-auth optional or required)"]

    def _changes(self, resource: Resource) -> bool:
        old = self.deployed[resource.kind].get(resource.name)
        return old is None or old.version != resource.version

    def _check_references(self, wanted: dict[str, list[Resource]], prune: bool) -> None:
        names = {r.name for kind in ("function", "bridge") for r in wanted[kind]}
        functions = names | (set() if prune else set(self.functions) | set(self.deployed["bridge"]))
        self._check_unique_targets(wanted, prune)
        for kind, resources in wanted.items():
            for resource in resources:
                for field, target in self.kinds[kind].references(resource):
                    if target not in functions:
                        raise DeployError(f"{kind} {resource.name}: {field}: no function or bridge named "
                                          f"{target!r} (there are: {', '.join(sorted(functions)) or 'none'})")

    def _check_unique_targets(self, wanted: dict[str, list[Resource]], prune: bool) -> None:
        """A name given as a reply or dead-letter target must mean one thing: a function and a
        bridge may not share it."""
        def names(kind: str) -> set[str]:
            return {r.name for r in wanted[kind]} | (set() if prune else set(self.deployed[kind]))

        clash = sorted(names("function") & names("bridge"))
        if clash:
            raise DeployError(f"{clash[0]!r} is the name of a function and of a bridge: "
                              "rename one (replies and dead letters name their target)")

    async def _verify(self, resources: list[Resource]) -> None:
        """Start each resource once, all at the same time; every failure is reported."""
        outcomes = await asyncio.gather(*(self.kinds[r.kind].verify(r) for r in resources), return_exceptions=True)
        failures = [str(o) for o in outcomes if isinstance(o, BaseException)]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, DeployError):
                raise outcome
        if failures:
            raise DeployError("\n".join(failures))

    async def _apply_one(self, resource: Resource) -> Change:
        old = self.deployed[resource.kind].get(resource.name)
        if old is not None and old.version == resource.version:
            return Change(resource.kind, resource.name, "unchanged", resource.version)
        await self._run(resource)
        await self.node.state.put(state_key(resource.kind, resource.name), resource.to_json())
        return Change(resource.kind, resource.name, "updated" if old else "created", resource.version)

    async def delete(self, kind: str, name: str) -> bool:
        """Stop and forget a resource; DeployError while another still hands events to it."""
        async with self._changing:
            if name in self.deployed[kind]:
                self._check_unreferenced(kind, name)
            return await self._delete(kind, name)

    def _check_unreferenced(self, kind: str, name: str) -> None:
        if kind not in ("function", "bridge"):
            return
        for other_kind, resources in self.deployed.items():
            for other in resources.values():
                for field, target in self.kinds[other_kind].references(other):
                    if target == name:
                        raise DeployError(f"{kind} {name} is the {field} of {other_kind} {other.name}: "
                                          f"change or delete that first")

    async def _delete(self, kind: str, name: str) -> bool:
        if not await self._stop_here(kind, name):
            return False
        await self.node.state.delete(state_key(kind, name))
        return True

    def _runs(self, kind: str, name: str) -> bool:
        return self.serves is None or (kind, name) == ("function", self.serves)

    async def _run(self, resource: Resource) -> None:
        if self._runs(resource.kind, resource.name):
            await self.kinds[resource.kind].run(resource)
        else:  # a sidecar routes (its function's replies) by every filter, and runs nothing else
            self._keep_routing(resource)
        self.broken.pop(f"{resource.kind}/{resource.name}", None)
        self.deployed[resource.kind][resource.name] = resource
