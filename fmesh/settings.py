"""Settings of a mesh node and of the CLI, with their environment variables."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmesh.errors import AuthError, StartupError
from fmesh.names import is_name
from fmesh.permissions import private_dir

DEFAULT_PORT = 8080
DEFAULT_MESH_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def default_data_dir() -> Path:
    return Path(os.environ.get("FMESH_DATA_DIR", Path.home() / ".fmesh")).expanduser()


def token_path(data_dir: Path) -> Path:
    return data_dir / "token"


def load_or_create_token(data_dir: Path, given: str | None) -> str:
    """The control API token: the one given, else the data dir's, else a new one saved there."""
    path = token_path(data_dir)
    if given:
        return given
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    private_dir(data_dir)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def mesh_id_path(data_dir: Path) -> Path:
    return data_dir / "mesh-id"


def load_or_create_mesh_id(data_dir: Path, given: str | None) -> str:
    """This mesh's id: the one given, else the data dir's, else a new one saved there."""
    if given:
        return given
    path = mesh_id_path(data_dir)
    if path.exists():
        stored = path.read_text().strip()
        if not is_name(stored):
            raise StartupError(f"{path} holds {stored[:70]!r}, which is no mesh id (lowercase letters, digits "
                               "and '-'): fix or delete the file, or pass --mesh-id")
        return stored
    mesh_id = f"mesh-{secrets.token_hex(4)}"
    private_dir(data_dir)
    path.write_text(mesh_id + "\n")
    return mesh_id


def read_token(data_dir: Path | None = None) -> str | None:
    """The token a CLI call uses: FMESH_TOKEN, else the default data dir's token file."""
    return find_token(None, data_dir)[0]


def find_token(given: str | None, data_dir: Path | None = None) -> tuple[str | None, str]:
    """The token a CLI call sends (--token, else FMESH_TOKEN, else the data dir's token file)
    and where it came from, so that a refusal can say which one the mesh refused. AuthError
    for one no header can carry (httpx's refusal read as "cannot reach" the mesh)."""
    token, source = _token_and_source(given, data_dir)
    if token is not None and not (token.isascii() and token.isprintable()):  # a header is ASCII
        raise AuthError(f"{source} holds a character no HTTP header can carry (a newline?): give the token alone")
    return token, source


def _token_and_source(given: str | None, data_dir: Path | None) -> tuple[str | None, str]:
    if given:
        return given, "the --token flag"
    if os.environ.get("FMESH_TOKEN"):
        return os.environ["FMESH_TOKEN"], "FMESH_TOKEN"
    path = token_path(data_dir or default_data_dir())
    if path.exists():
        return path.read_text().strip(), f"the token file {path}"
    return None, f"a request without a token (no --token, no FMESH_TOKEN, no {path})"


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address; a host name is not (it may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class NodeSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    store: str | None = None              # default: sqlite in the data dir
    token: str | None = None
    max_event_bytes: int = 1024 * 1024
    max_header_bytes: int = 64 * 1024     # a request's whole header section (431 past it)
    max_headers: int = 100                # headers in one request (431 past it)
    max_extensions: int = 64              # extension attributes of one event (413 past it)
    max_bundle_bytes: int = 256 * 1024 * 1024  # what a function's code may unpack to (400 past it)
    max_bundle_files: int = 20_000        # files in a function's code (400 past it)
    bundle_grace: float = 600.0           # function code no deployed version uses goes after this long
    launcher: str = "zygote"              # or "subprocess": a fresh interpreter per replica
    template_idle: float = 300.0          # a function's template (handler loaded, forks its replicas) goes
                                          # after this long without a replica; 0: no templates
    zygote_idle: float = 300.0            # the zygote goes after this long with no replica or template
                                          # (the next cold start starts it again); 0: it stays
    dead_letter_retention: float = 7 * 86400.0
    trail_retention: float = 86400.0      # how long the event trail keeps an event's path (0: no trail)
    trail_max_events: int = 100_000       # events whose path the trail keeps at most (the oldest go first)
    shutdown_grace: float = 10.0          # seconds from SIGTERM/Ctrl-C until the process is gone
    mesh_id: str | None = None            # default: a stable id kept in the data dir
    mesh_id_given: bool = False           # --mesh-id was on the command line (not read from the data dir)
    max_backlog: int = 100_000            # deliveries waiting per subscription before publishing gets 503 (0: no bound)
    dedup_window: float = 600.0           # bridged events with the same source and id within it are dropped
    ingress_auth: str | None = None       # required | optional | off; default: off on loopback, else required
    tls_cert: str | None = None           # PEM files: serve HTTPS with this certificate and key
    tls_key: str | None = None
    tls_client_ca: str | None = None      # require client certificates signed by this CA (mTLS)
    header_timeout: float = 10.0          # from connecting (or a request's first byte) to its last header
    body_timeout: float = 10.0            # a body's longest pause, and its grace before min_body_rate applies
    min_body_rate: int = 4096             # bytes/s a request body must average once past body_timeout
    keepalive_timeout: float = 5.0        # an idle connection between two requests is closed after it
    max_connections: int | None = None    # default: from the soft fd limit (deploy/connections.py)
    public_metrics: bool | None = None    # /metrics, /openapi.json, /docs without a token; default: on loopback
    otlp_endpoint: str | None = None      # export spans over OTLP/HTTP to this collector (off: no SDK loaded)
    log_format: str = "text"              # the mesh's own lines: text (a terminal) or json (one object a line)
    log_level: str = "info"               # debug | info | warning | error
    ingress_workers: int = 0              # processes serving the HTTP port (events parsed there); 0: the mesh's own

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def metrics_public(self) -> bool:
        """Whether /metrics and the API's docs answer without a token: as --public-metrics
        says, else only on a loopback address (where only this machine can ask)."""
        return is_loopback(self.host) if self.public_metrics is None else self.public_metrics

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'mesh.db').resolve()}"


def settings_document(settings: NodeSettings) -> dict[str, Any]:
    """The settings as JSON can carry them (to a process the mesh starts)."""
    return {**asdict(settings), "data_dir": str(settings.data_dir)}


def settings_from_document(options: dict[str, Any]) -> NodeSettings:
    return NodeSettings(**{**options, "data_dir": Path(options["data_dir"])})
