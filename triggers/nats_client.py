"""nats-py connection options from a `NatsConnection`, secrets read from the environment."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from fmesh.triggers.config import NatsConnection, read_secret

from fmesh.errors import TriggerConfigError


def connect_options(connection: NatsConnection, field: str, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect`: reconnect forever, at `reconnect_delay` intervals."""
    options: dict[str, Any] = {
        "servers": connection.url, "name": name, "connect_timeout": connection.connect_timeout,
        "reconnect_time_wait": connection.reconnect_delay, "max_reconnect_attempts": -1,
        "allow_reconnect": True}
    if connection.token_env:
        options["token"] = read_secret(connection.token_env, f"{field}.token_env")
    if connection.user_env and connection.password_env:
        options["user"] = read_secret(connection.user_env, f"{field}.user_env")
        options["password"] = read_secret(connection.password_env, f"{field}.password_env")
    if connection.credentials is not None:
        options["user_credentials"] = str(existing(connection.credentials, f"{field}.credentials"))
    if connection.tls_ca or connection.tls_cert or any(u.startswith("tls://") for u in connection.url):
        options["tls"] = tls_context(connection, field)
    return options


def existing(path: Path, field: str) -> Path:
    if not path.is_file():
        raise TriggerConfigError(field, f"no such file: {path}")
    return path


def tls_context(connection: NatsConnection, field: str) -> ssl.SSLContext:
    cafile = existing(connection.tls_ca, f"{field}.tls_ca") if connection.tls_ca else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise TriggerConfigError(f"{field}.tls_ca", f"cannot load the CA bundle {cafile}: {exc}") from exc
    if connection.tls_cert and connection.tls_key:
        try:
            context.load_cert_chain(existing(connection.tls_cert, f"{field}.tls_cert"),
                                    existing(connection.tls_key, f"{field}.tls_key"))
        except ssl.SSLError as exc:
            raise TriggerConfigError(f"{field}.tls_cert", f"cannot load the client certificate: {exc}") from exc
    return context
