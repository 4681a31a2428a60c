"""HTTPS for `fmesh up`: uvicorn's TLS options from the settings, checked before the mesh
starts, and the client certificate of an mTLS connection in the ASGI scope.

uvicorn does not put the client certificate in the scope. `ClientCertProtocol` (uvicorn's
own HTTP protocol, one method more) takes it from the TLS connection once it is made,
and every request on that connection then carries it as
`scope["extensions"]["tls"] = {"client_cert_name": <RFC 4514 subject>, "peercert": <dict>}`,
where `peercert` is what `ssl.SSLObject.getpeercert()` returns (not part of the ASGI TLS
extension, which has no SANs).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from uvicorn.config import create_ssl_context
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from fmesh.asgi import Receive, Scope, Send
from fmesh.errors import StartupError
from fmesh.settings import NodeSettings


def uvicorn_tls_options(settings: NodeSettings) -> dict[str, Any]:
    """The uvicorn.Config options serving `settings`' TLS; {} for plain HTTP.

    StartupError, in one line, for a missing or unreadable file, or a key that is not the
    certificate's: found before the mesh takes its port rather than by uvicorn later."""
    if not settings.tls_cert and not settings.tls_key and not settings.tls_client_ca:
        return {}
    if not settings.tls_cert or not settings.tls_key:
        raise StartupError("HTTPS needs both --tls-cert and --tls-key (--tls-client-ca goes with them)")
    options: dict[str, Any] = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    if settings.tls_client_ca:
        options.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED, http=ClientCertProtocol)
    check_loadable(options)
    return options


def check_loadable(options: dict[str, Any]) -> None:
    flags = (("--tls-cert", "ssl_certfile"), ("--tls-key", "ssl_keyfile"), ("--tls-client-ca", "ssl_ca_certs"))
    for flag, key in flags:
        if key in options and not Path(options[key]).is_file():
            raise StartupError(f"{flag} {options[key]}: no such file")
    try:
        create_ssl_context(certfile=options["ssl_certfile"], keyfile=options["ssl_keyfile"], password=None,
                           ssl_version=ssl.PROTOCOL_TLS_SERVER, cert_reqs=options.get("ssl_cert_reqs", ssl.CERT_NONE),
                           ca_certs=options.get("ssl_ca_certs"), ciphers=None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise StartupError(f"cannot use --tls-cert/--tls-key/--tls-client-ca: {exc}") from exc


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The scope's `tls` extension for a connection: None when it is not TLS or has no client certificate."""
    ssl_object = transport.get_extra_info("ssl_object")
    peercert = ssl_object.getpeercert() if ssl_object is not None else None
    if not peercert:
        return None
    subject = ",".join(f"{key}={value}" for rdn in reversed(peercert.get("subject", ())) for key, value in rdn)
    return {"client_cert_name": subject, "peercert": peercert}


class ClientCertProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, with the connection's client certificate in each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is None:
            return
        app = self.app

        async def with_certificate(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        self.app = with_certificate
