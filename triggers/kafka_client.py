"""aiokafka client options from a `KafkaConnection`, secrets read from the environment."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context
from fmesh.triggers.config import KafkaConnection, read_secret

from fmesh.errors import TriggerConfigError


def client_options(connection: KafkaConnection, field: str) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/Producer; `field` prefixes errors (e.g. triggers.x.kafka)."""
    options: dict[str, Any] = {"bootstrap_servers": connection.bootstrap, "client_id": connection.client_id,
                               "security_protocol": connection.security_protocol}
    if connection.sasl_mechanism is not None:
        assert connection.username_env and connection.password_env  # checked by the model
        options["sasl_mechanism"] = connection.sasl_mechanism
        options["sasl_plain_username"] = read_secret(connection.username_env, f"{field}.username_env")
        options["sasl_plain_password"] = read_secret(connection.password_env, f"{field}.password_env")
    if connection.security_protocol.endswith("SSL"):
        options["ssl_context"] = tls_context(connection, field)
    return options


def tls_context(connection: KafkaConnection, field: str) -> ssl.SSLContext:
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path: Path | None = getattr(connection, name)
        if path is not None and not path.is_file():
            raise TriggerConfigError(f"{field}.{name}", f"no such file: {path}")
    password = (read_secret(connection.ssl_password_env, f"{field}.ssl_password_env")
                if connection.ssl_password_env else None)
    try:
        return create_ssl_context(cafile=connection.ssl_cafile, certfile=connection.ssl_certfile,
                                  keyfile=connection.ssl_keyfile, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise TriggerConfigError(f"{field}.ssl_certfile", f"cannot load the TLS files: {exc}") from exc
