"""TLS as a client of fmesh sees it: a context that trusts a mesh's own CA and, for a mesh
that requires client certificates (mTLS), presents one. Used by the CLI, `fmesh send`,
HTTP sinks and bridges."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from fmesh.errors import TriggerConfigError

CA_ENV = "FMESH_CA"
CERT_ENV = "FMESH_CERT"
KEY_ENV = "FMESH_KEY"


def client_context(ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                   field: str = "tls") -> ssl.SSLContext | bool:
    """What httpx's `verify` takes: True (the system's CAs, no client certificate) or a context.

    TriggerConfigError naming `field` for a file that cannot be loaded, or a cert without its key."""
    if cert is None and key is None and ca is None:
        return True
    if (cert is None) != (key is None):
        raise TriggerConfigError(field, "a client certificate needs both cert and key")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TriggerConfigError(f"{field}.ca", f"cannot load {ca}: {exc}") from exc
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise TriggerConfigError(f"{field}.cert", f"cannot load {cert} with key {key}: {exc}") from exc
    return context


def cli_context(ca: str | Path | None) -> ssl.SSLContext | bool:
    """The CLI's: `--ca` (or FMESH_CA), and the client certificate in FMESH_CERT and FMESH_KEY."""
    ca = ca or os.environ.get(CA_ENV) or None
    return client_context(ca, os.environ.get(CERT_ENV) or None, os.environ.get(KEY_ENV) or None, "--ca")


def connect_hint(exc: Exception) -> str:
    """What to do about a failed connection: a certificate problem is not a mesh that is down."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "pass --ca with the CA that signed the mesh's certificate (or set FMESH_CA)"
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        return "the mesh requires a client certificate: set FMESH_CERT and FMESH_KEY"
    return "is `fmesh up` running there?"
