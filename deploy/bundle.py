"""Function code travels as a bundle: a deterministic tar.gz of the function's folder.

The digest is over file names, modes and contents only, so the same code gives the same
digest on any machine, and an unchanged function is not uploaded or restarted again.

What is packed: every regular file of the folder but what `.fmeshignore` there (gitignore
syntax) and the defaults leave out (`DEFAULT_IGNORED`, and `node_modules/` for a Python
handler); a `!` line in `.fmeshignore` takes a default back. `__pycache__` and `.pyc` files
are never packed: the node compiles its own, and refuses an archive that brings some.
"""

from __future__ import annotations

import asyncio
import compileall
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fmesh.contracts import BlobStore
from fmesh.errors import DeployError
from fmesh.wording import plural

if TYPE_CHECKING:
    import pathspec

SKIPPED = {"__pycache__"}  # never packed, whatever .fmeshignore says: a replica would trust it over the source
DEFAULT_IGNORED = (".git", ".env", "venv/", ".venv/", ".mypy_cache/", ".pytest_cache/", ".DS_Store")
PYTHON_IGNORED = ("node_modules/",)  # a Python handler's folder: left over from a front end, not its code
IGNORE_FILE = ".fmeshignore"
MAX_BUNDLE_BYTES = 200 * 1024 * 1024     # the archive
CHUNK = 1024 * 1024
PARTIAL = ".partial-"  # an unpack in progress: <digest>.partial-<random>
# Folders a member may be nested in: far beyond any source tree, and short of where
# making the folders overruns Python's recursion limit.
MAX_DEPTH = 128


@dataclass(frozen=True)
class BundleLimits:
    """What an archive from an upload or another node may unpack to (`fmesh up --max-bundle-*`)."""

    max_unpacked_bytes: int = 256 * 1024 * 1024
    max_files: int = 20_000


def ignore_rules(folder: Path, python: bool = True) -> pathspec.GitIgnoreSpec:
    """What `pack` leaves out of `folder`: the defaults, then its `.fmeshignore`, whose later
    lines win (so `!.env` there packs a `.env` after all). DeployError for a line that is
    no pattern."""
    import pathspec  # only packing a folder needs it: a mesh that only serves never loads it

    lines = [*DEFAULT_IGNORED, *(PYTHON_IGNORED if python else ())]
    own = folder / IGNORE_FILE
    try:
        text = own.read_text(encoding="utf-8") if own.is_file() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read {own}: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except ValueError as exc:
            raise DeployError(f"{own}:{number}: {line!r} is not a gitignore pattern: {exc}") from None
        lines.append(line)
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _files(folder: Path, skip: Iterable[Path] = (), ignore: pathspec.PathSpec | None = None) -> list[Path]:
    """The files `pack` takes, in the order the digest goes over them. An ignored folder is
    not walked into (a `node_modules/` may hold 100,000 files): as in git, a file in it
    cannot be taken back."""
    skipped = {p.resolve() for p in skip}
    ignored = ignore.match_file if ignore is not None else (lambda _: False)
    found = []
    for top, folders, names in os.walk(folder):
        here = Path(top)
        relative = here.relative_to(folder)
        folders[:] = [f for f in folders if f not in SKIPPED
                      and not ignored(f"{(relative / f).as_posix()}/")]
        for name in names:
            path = here / name
            if name.endswith(".pyc") or ignored((relative / name).as_posix()):
                continue
            if path.is_file() and not path.is_symlink() and path.resolve() not in skipped:
                found.append(path)
    return sorted(found)  # by path parts, as before: an unchanged folder keeps its digest


@dataclass(frozen=True)
class Packed:
    """A folder as `pack` packed it: the digest, the archive, and each file's size."""

    digest: str
    data: bytes
    sizes: dict[str, int]

    @property
    def files(self) -> int:
        return len(self.sizes)

    def biggest(self, count: int = 3) -> list[tuple[str, int]]:
        return sorted(self.sizes.items(), key=lambda item: (-item[1], item[0]))[:count]


def pack(folder: Path, skip: Iterable[Path] = (), ignore: pathspec.PathSpec | None = None) -> Packed:
    """`folder` packed, without the files in `skip` nor those `ignore` matches (see
    `ignore_rules`). DeployError naming a file that cannot be read.

    The manifest is skipped when it sits in a function's folder: otherwise editing one
    function's spec would change every such function's code, and restart them all."""
    digest = hashlib.sha256()
    raw = io.BytesIO()
    sizes = {}
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(folder, skip, ignore):
            name, mode, data = path.relative_to(folder).as_posix(), _mode(path), _read(path)
            digest.update(_entry(name, mode, len(data)))
            digest.update(data)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
            sizes[name] = len(data)
    return Packed(digest.hexdigest(), gzip.compress(raw.getvalue(), mtime=0), sizes)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DeployError(f"cannot read {path}: {exc.strerror or exc} (leave it out with a line in "
                          f"{IGNORE_FILE})") from None


def digest_of(folder: Path) -> str:
    """The digest `pack` gives `folder`, reading each file in chunks: an unpacked bundle
    is checked without holding it (or an archive of it) in memory."""
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(_entry(path.relative_to(folder).as_posix(), _mode(path), path.stat().st_size))
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _mode(path: Path) -> int:
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def _entry(name: str, mode: int, size: int) -> bytes:
    return f"{name}\0{mode:o}\0{size}\0".encode()


def unpack(data: bytes, destination: Path, digest: str | None = None, limits: BundleLimits = BundleLimits()) -> None:
    """Extract a bundle safely and, given its `digest`, check it before it appears.

    Only what `pack` would have packed may be in it (regular files, none that the digest
    skips, such as a `__pycache__` a replica would trust over the source), within `limits`,
    checked member by member as it unpacks: an archive from an upload or from another
    node's store is hostile until checked. ValueError says what was wrong; nothing is left
    behind. Blocking: run it off the event loop."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A folder of this upload's own: two uploads of the same code at once (two deploys)
    # must not extract into, or delete, each other's.
    partial = Path(tempfile.mkdtemp(prefix=destination.name + PARTIAL, dir=destination.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(partial, members=_checked_members(tar, limits), filter=_private)
        if digest is not None and (actual := digest_of(partial)) != digest:
            raise ValueError(f"bundle content does not match its digest {digest[:12]} (got {actual[:12]})")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"not a readable bundle (tar.gz): {exc}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(destination)  # appears whole and checked, or not at all
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not destination.is_dir():  # not another upload of the same code that got there first
            raise


def _private(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, and files for this user only (0600, or 0700 if executable):
    tarfile sets the archive's modes (0644) whatever the umask."""
    member = tarfile.data_filter(member, destination)
    return member.replace(mode=member.mode & 0o700, deep=False) if member.mode is not None else member


def _checked_members(tar: tarfile.TarFile, limits: BundleLimits) -> Iterator[tarfile.TarInfo]:
    total = files = 0
    for member in tar:
        parts = Path(member.name).parts
        if len(parts) > MAX_DEPTH:
            raise ValueError(f"bundle member {member.name[:80]!r}... is nested {len(parts)} folders deep "
                             f"(at most {MAX_DEPTH})")
        if member.isdir() and not any(part in SKIPPED for part in parts):
            continue  # a folder pack would not write, harmless: made as files need it
        if not member.isfile() or any(part in SKIPPED for part in parts) or member.name.endswith(".pyc"):
            raise ValueError(f"bundle member {member.name!r} is not one fmesh packs (a regular file outside "
                             f"{', '.join(sorted(SKIPPED))} and not .pyc)")
        total, files = total + member.size, files + 1
        if total > limits.max_unpacked_bytes:
            raise ValueError(f"bundle unpacks to more than {limits.max_unpacked_bytes} bytes "
                             "(fmesh up --max-bundle-bytes)")
        if files > limits.max_files:
            raise ValueError(f"bundle holds more than {plural(limits.max_files, 'file')} (fmesh up --max-bundle-files)")
        yield member


def is_digest(name: str) -> bool:
    """A sha256 as `pack` gives it: 64 lowercase hex digits."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class BundleStore:
    """Function code: the archives in the store's blobs (so every node on the store can get
    them), unpacked into the data dir, one folder per digest, when first needed here."""

    def __init__(self, directory: Path, blobs: BlobStore, limits: BundleLimits = BundleLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.blobs = blobs
        self.limits = limits
        self.clock = clock
        self.touched: dict[str, float] = {}  # digest → when it was last uploaded, checked or fetched here
        directory.mkdir(parents=True, exist_ok=True)
        for left in directory.glob(f"*{PARTIAL}*"):  # an unpack a crash cut short
            shutil.rmtree(left, ignore_errors=True)

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a bundle digest: {digest!r}")
        return self.directory / digest

    def has(self, digest: str) -> bool:
        """Unpacked on this node."""
        present = self.path(digest).is_dir()
        self.touch(digest)
        return present

    def touch(self, digest: str) -> None:
        """Note that `digest` is needed now (see deploy.unused_code)."""
        self.touched[digest] = self.clock()

    def forget_except(self, digests: set[str]) -> None:
        self.touched = {d: at for d, at in self.touched.items() if d in digests}

    def unpacked(self) -> set[str]:
        """The digests unpacked on this node."""
        return {p.name for p in self.directory.iterdir() if is_digest(p.name) and p.is_dir()}

    async def remove(self, digest: str) -> None:
        """Remove a bundle from this node and from the store."""
        await asyncio.to_thread(shutil.rmtree, self.path(digest), ignore_errors=True)
        await self.blobs.delete(digest)
        self.touched.pop(digest, None)

    async def put(self, digest: str, data: bytes) -> None:
        """Check an uploaded archive against its digest, unpack it here, and keep it in the
        store for the other nodes. ValueError when it is not the bundle it claims to be."""
        if not self.has(digest):
            await asyncio.to_thread(self._unpack, digest, data)  # off the loop: it may be large
        await self.blobs.put(digest, data)

    async def fetch(self, digest: str) -> bool:
        """Make a bundle present here, from the store if another node uploaded it; False if
        the store does not have it either."""
        if self.has(digest):
            return True
        data = await self.blobs.get(self.path(digest).name)
        if data is None:
            return False
        await asyncio.to_thread(self._unpack, digest, data)
        return True

    def _unpack(self, digest: str, data: bytes) -> None:
        if self.has(digest):
            return
        destination = self.path(digest)
        unpack(data, destination, digest, self.limits)
        # Byte-compile now, so the first replica does not pay for it during a cold start.
        compileall.compile_dir(destination, quiet=2)
