"""Who is calling: a request's credentials, mapped to the principal they belong to.

Principals, as the `fmeshsender` extension names them on every event they publish:

- `admin`: the mesh's own control token (`fmesh up --token`, FMESH_TOKEN, <data dir>/token);
- `token:<name>`: a token made with `fmesh tokens create` (scope publish, read or admin);
- `peer:<name>`: another mesh (or any sender) under `peers:` in the manifest, known by a
  bearer token, an HMAC secret (`X-Fmesh-Peer`, `X-Fmesh-Timestamp`, `X-Fmesh-Signature`,
  see `fmesh.signing`) or the subject of its client certificate (CN, DNS or URI SAN);
- `anonymous`: a publish without credentials, where the ingress lets those in.

Events that do not come through the ingress are stamped where they start:
`trigger:<name>` by the trigger layer, `function:<name>` by a function's sidecar.

Bearer tokens are kept as their SHA-256 only and looked up by it, so no comparison
with a stored token happens (and timing tells nothing about one).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fmesh.errors import AuthError
from fmesh.events import SENDER
from fmesh.signing import DEFAULT_TOLERANCE, PEER_HEADER, HmacCheck, check_signature, check_timestamp, peer_check

__all__ = ["ADMIN", "ANONYMOUS", "SENDER", "Identity", "PeerCredential", "PendingSignature", "Principal",
           "certificate_subjects", "token_digest"]

ANONYMOUS_NAME = "anonymous"
ADMIN_NAME = "admin"
SCOPES = ("publish", "read", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from. `name` is what `fmeshsender` says; `scope` what it may do:
    publish, read or admin for tokens, `peer` for peers (publish only), `anonymous`."""

    name: str
    scope: str

    @property
    def may_publish(self) -> bool:
        return self.scope in ("publish", "admin", "peer", "anonymous")


ANONYMOUS = Principal(ANONYMOUS_NAME, "anonymous")
ADMIN = Principal(ADMIN_NAME, "admin")


@dataclass(frozen=True)
class PeerCredential:
    """How one peer is known: one of a bearer token, an HMAC secret, a certificate subject."""

    token: str | None = None
    secret: bytes | None = None
    subject: str | None = None
    tolerance: float = DEFAULT_TOLERANCE   # signed requests: seconds a timestamp may be off

    def same_as(self, other: PeerCredential) -> bool:
        """Whether one caller could pass for both (the same token, secret or subject)."""
        return any(mine is not None and mine == theirs for mine, theirs in (
            (self.token, other.token), (self.secret, other.secret), (self.subject, other.subject)))


@dataclass(frozen=True, slots=True)
class PendingSignature:
    """A peer that signs its requests: known once the body's signature checks out."""

    principal: Principal
    check: HmacCheck


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def certificate_subjects(peercert: Mapping[str, Any]) -> list[str]:
    """The names a client certificate (as `ssl.SSLSocket.getpeercert()` gives it) claims:
    its subject's CN, then its DNS and URI subject alternative names."""
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return names


class Identity:
    """The credentials a mesh knows, and who each belongs to."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._bearer: dict[bytes, Principal] = {}
        self._signing: dict[str, PendingSignature] = {}   # X-Fmesh-Peer value → secret
        self._subjects: dict[str, Principal] = {}

    def add_bearer(self, digest: bytes, principal: Principal) -> None:
        """Know `principal` by the token whose SHA-256 is `digest` (see `token_digest`)."""
        self._bearer[digest] = principal

    def add_signing_peer(self, name: str, secret: bytes, tolerance: float) -> None:
        self._signing[name] = PendingSignature(Principal(f"peer:{name}", "peer"), peer_check(secret, tolerance))

    def add_subject(self, subject: str, principal: Principal) -> None:
        self._subjects[subject] = principal

    def check_peer(self, name: str, credential: PeerCredential) -> None:
        """ValueError when the token, secret or subject is already another principal's."""
        holder = self._bearer.get(token_digest(credential.token)) if credential.token is not None else None
        holder = holder or (self._subjects.get(credential.subject) if credential.subject is not None else None)
        if holder is None and credential.secret is not None:
            holder = next((s.principal for s in self._signing.values()
                           if hmac.compare_digest(s.check.secret, credential.secret)), None)
        if holder is not None and holder.name != f"peer:{name}":
            raise ValueError(f"that credential is already {holder.name}'s: give each peer its own")

    def set_peer(self, name: str, credential: PeerCredential) -> Principal:
        """Know peer `name` by `credential` (only by it: an earlier credential goes).

        ValueError when the token, secret or subject is already another principal's."""
        principal = Principal(f"peer:{name}", "peer")
        self.check_peer(name, credential)
        self.forget(principal.name)
        if credential.token is not None:
            self.add_bearer(token_digest(credential.token), principal)
        if credential.secret is not None:
            self.add_signing_peer(name, credential.secret, credential.tolerance)
        if credential.subject is not None:
            self.add_subject(credential.subject, principal)
        return principal

    def forget(self, name: str) -> None:
        """Drop every credential of the principal named `name` (`peer:eu`, `token:ci`)."""
        self._bearer = {d: p for d, p in self._bearer.items() if p.name != name}
        self._signing = {k: s for k, s in self._signing.items() if s.principal.name != name}
        self._subjects = {k: p for k, p in self._subjects.items() if p.name != name}

    def bearer(self, token: str) -> Principal | None:
        """Whose token this is, if anyone's."""
        return self._bearer.get(token_digest(token))

    def bearer_digest(self, digest: bytes) -> Principal | None:
        """Whose token has this SHA-256 (see `token_digest`), if anyone's still."""
        return self._bearer.get(digest)

    def identify(self, headers: Mapping[str, str],
                 tls: Mapping[str, Any] | None) -> Principal | PendingSignature | None:
        """Who the request's headers (or its client certificate) say it is; None: no credentials.

        AuthError for credentials that are wrong: a token nobody has, an unknown signing
        peer, a missing or stale timestamp. A signature is checked by `verify` once the
        body is read."""
        authorization = headers.get("authorization")
        if authorization is not None:
            return self._from_bearer(authorization)
        peer = headers.get(PEER_HEADER)
        if peer is not None:
            return self._from_signature(peer, headers)
        if tls is not None and tls.get("peercert"):
            return self._from_certificate(tls["peercert"])
        return None

    def verify(self, caller: Principal | PendingSignature, headers: Mapping[str, str], body: bytes) -> Principal:
        """The principal, once a signing peer's signature over the body checks out."""
        if isinstance(caller, Principal):
            return caller
        if any(name.startswith("ce-") for name in headers):
            # The signature covers the body only: what ce-* headers say could be rewritten in a
            # replay. A signing peer sends its events in the body (structured or batch mode).
            raise AuthError("a signed request must carry its events in the body (structured or batch mode): "
                            "ce-* headers are not covered by X-Fmesh-Signature")
        check_signature(caller.check, headers, body, self._clock())
        return caller.principal

    def _from_bearer(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header is not 'Bearer <token>'")
        principal = self._bearer.get(token_digest(token.strip()))
        if principal is None:
            raise AuthError("wrong bearer token: no peer or token of this mesh has it")
        return principal

    def _from_signature(self, peer: str, headers: Mapping[str, str]) -> PendingSignature:
        pending = self._signing.get(peer.strip())
        if pending is None:
            raise AuthError(f"{PEER_HEADER} names {peer.strip()[:64]!r}, which is no peer that signs its requests")
        check_timestamp(pending.check, headers, self._clock())  # a stale request is refused before its body
        return pending

    def _from_certificate(self, peercert: Mapping[str, Any]) -> Principal | None:
        """The peer the certificate names; None for a certificate of no peer (the CA signed
        it, so it may still come with a token)."""
        return next((self._subjects[s] for s in certificate_subjects(peercert) if s in self._subjects), None)
