"""`fmesh deploy`: validate, pack, upload what changed, apply; say what happens on the way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fmesh.deploy.bundle import IGNORE_FILE, Packed, ignore_rules, pack
from fmesh.deploy.manifest import FunctionSpec, Manifest

from fmesh.wording import plural, size

BIG_BUNDLE = 10 * 1000 * 1000  # bytes of archive past which `fmesh deploy` warns, naming the biggest files


class Progress(Protocol):
    def step(self, text: str) -> None: ...


@dataclass
class PackedFunction:
    name: str
    digest: str
    data: bytes
    files: int
    has_requirements: bool = False
    biggest: tuple[tuple[str, int], ...] = ()
    folder: Path = Path(".")


def pack_function(function: FunctionSpec, manifest_path: Path) -> Packed:
    """A function's folder packed as `fmesh deploy` and `fmesh up -f` upload it: its
    `.fmeshignore` and the defaults left out, and the manifest if it sits there."""
    folder = manifest_path.parent / (function.folder or ".")
    return pack(folder, skip=[manifest_path], ignore=ignore_rules(folder, python=function.handler is not None))


def pack_functions(manifest: Manifest, manifest_path: Path, progress: Progress) -> list[PackedFunction]:
    packed = []
    for name, function in manifest.functions.items():
        if function.folder is None:
            continue  # external: its code is not fmesh's to carry
        progress.step(f"packing {name} from {manifest_path.parent / function.folder}")
        packed.append(packed_function(name, function, manifest_path))
    return packed


def packed_function(name: str, function: FunctionSpec, manifest_path: Path) -> PackedFunction:
    """A function with a folder, packed (`pack_function`), and what is said of its code."""
    folder = manifest_path.parent / (function.folder or ".")
    bundle = pack_function(function, manifest_path)
    return PackedFunction(name, bundle.digest, bundle.data, bundle.files, (folder / "requirements.txt").is_file(),
                          tuple(bundle.biggest()), folder)


def size_warning(function: PackedFunction) -> str | None:
    """One line when a function's code is big enough to be a mistake (a data set, a venv)."""
    if len(function.data) <= BIG_BUNDLE:
        return None
    files = ", ".join(f"{name} ({size(length)})" for name, length in function.biggest)
    return (f"the code of {function.name} is {size(len(function.data))} packed, over {size(BIG_BUNDLE)} "
            f"({plural(function.files, 'file')}); the biggest: {files}. Leave files out with "
            f"{function.folder / IGNORE_FILE} (gitignore syntax)")


# Where a manifest names files the mesh reads (certificates, secrets in files).
FILE_FIELDS = {"functions": [("sink_options", "tls")], "subscriptions": [("options", "tls"), ("options",)],
               "bridges": [("tls",), ("auth",)], "peers": [("auth",)]}
FILE_KEYS = ("ca", "cert", "key", "tls_ca", "token_file", "hmac_secret_file")


def apply_request(manifest: Manifest, packed: list[PackedFunction],
                  base: Path | None = None) -> dict[str, dict[str, Any]]:
    """The body of POST /v1/apply for this manifest (bundles already uploaded). Relative
    file paths in it are made relative to `base`, the manifest's folder."""
    request = _request(manifest, {p.name: p.digest for p in packed})
    if base is not None:
        for section, places in FILE_FIELDS.items():
            for item in request[section].values():
                for place in places:
                    _anchor(item["spec"], place, base)
    return request


def _anchor(spec: dict[str, Any], place: tuple[str, ...], base: Path) -> None:
    holder: Any = spec
    for key in place:
        holder = holder.get(key) if isinstance(holder, dict) else None
    if not isinstance(holder, dict):
        return
    for key in FILE_KEYS:
        value = holder.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            holder[key] = str((base / value).resolve())


def _request(manifest: Manifest, digests: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "functions": {name: {"spec": function.model_dump(mode="json"), "bundle": digests.get(name)}
                      for name, function in manifest.functions.items()},
        "subscriptions": {name: {"spec": sub.model_dump(mode="json")}
                          for name, sub in manifest.subscriptions.items()},
        "triggers": {name: {"spec": trigger.model_dump(mode="json", exclude_none=True)}
                     for name, trigger in manifest.triggers.items()},
        "bridges": {name: {"spec": bridge.model_dump(mode="json")} for name, bridge in manifest.bridges.items()},
        "peers": {name: {"spec": peer.model_dump(mode="json", exclude_none=True)}
                  for name, peer in manifest.peers.items()},
    }


def summarize(changes: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change["action"]] = counts.get(change["action"], 0) + 1
    order = ("created", "updated", "unchanged", "deleted")
    return ", ".join(f"{counts[a]} {a}" for a in order if a in counts) or "nothing to do"
