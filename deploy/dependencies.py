"""A function's own Python packages: its requirements.txt, installed once per distinct file.

Installs go into `<data dir>/deps/<hash>/` with `pip install --target`, keyed by the
file's content and the Python version, so redeploying unchanged requirements costs
nothing and two functions with the same file share one install. An install happens in
a temporary folder that is renamed into place only when pip succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fmesh.errors import DeployError

REQUIREMENTS = "requirements.txt"
PIP_ERROR_LINES = 40


class DependencyInstaller:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def target(self, bundle: Path) -> Path | None:
        """Where the bundle's requirements are (or will be) installed; None without any."""
        requirements = bundle / REQUIREMENTS
        if not requirements.is_file():
            return None
        key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:24]
        return self.directory / key

    def is_ready(self, bundle: Path) -> bool:
        target = self.target(bundle)
        return target is None or target.is_dir()

    async def install(self, bundle: Path, progress: Callable[[str], None]) -> Path | None:
        """Install the bundle's requirements (if not already); DeployError carries pip's error."""
        async for line in self.stream(bundle):
            progress(line)
        return self.target(bundle)

    async def stream(self, bundle: Path) -> AsyncIterator[str]:
        """pip's output as it comes; raises DeployError with the end of it if pip fails."""
        target = self.target(bundle)
        if target is None or target.is_dir():
            return
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off", "--target", str(partial), "-r", str(bundle / REQUIREMENTS),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output: list[str] = []
        async for raw in process.stdout:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip()
            output.append(line)
            yield line
        if await process.wait() != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise DeployError("installing requirements.txt failed:\n" + "\n".join(output[-PIP_ERROR_LINES:]))
        partial.rename(target)


def top_level_names(site_packages: Path) -> set[str]:
    """Importable top-level names an install provides (packages and modules)."""
    names = set()
    for entry in site_packages.iterdir():
        if entry.name.endswith((".dist-info", ".egg-info", ".pth")) or entry.name in ("bin", "__pycache__"):
            continue
        if entry.is_dir() or entry.suffix in (".py", ".so"):
            names.add(entry.name.split(".")[0])
    return names
