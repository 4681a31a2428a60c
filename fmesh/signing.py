"""Bearer tokens and HMAC signatures, compared in constant time: what webhook triggers
check, and how one mesh signs what it sends to another (`sign_request`).

What is signed:

- without a timestamp header: the raw request body, byte for byte (GitHub's
  `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`);
- with `timestamp_header`: the ASCII timestamp, a dot, then the raw body
  (`<timestamp>.<body>`, as Stripe does). The timestamp is Unix seconds; a request
  whose timestamp is further than the tolerance from now is refused as a replay.

The header value is `<prefix><signature>`; the prefix defaults to `<algorithm>=`, and
the signature is hex (any case) or base64. Every failure raises `AuthError` saying what
was wrong, never what was expected.

Mesh to mesh (a bridge publishing to a peer's `POST /`) the headers are fixed:
`X-Fmesh-Peer: <the sender's name at the receiver>`, `X-Fmesh-Timestamp: <Unix seconds>`,
`X-Fmesh-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fmesh.errors import AuthError


@dataclass(frozen=True)
class HmacCheck:
    secret: bytes
    header: str                     # lowercase
    algorithm: str                  # sha1 | sha256 | sha512
    prefix: str
    encoding: str                   # hex | base64
    timestamp_header: str | None    # lowercase
    tolerance: float


def check_bearer(headers: Mapping[str, str], tokens: Sequence[bytes]) -> None:
    """Refuse unless `Authorization: Bearer <t>` carries one of `tokens`."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthError("missing bearer token")
    candidate = given.strip().encode()
    matched = False
    for token in tokens:  # compare with every token, so timing does not tell which one is close
        matched |= hmac.compare_digest(candidate, token)
    if not matched:
        raise AuthError("wrong bearer token")


def signed_payload(body: bytes, timestamp: str | None) -> bytes:
    return body if timestamp is None else timestamp.encode("ascii") + b"." + body


def sign(check: HmacCheck, body: bytes, timestamp: str | None = None) -> str:
    """The header value a sender puts on `body` (used by tests and by clients)."""
    digest = hmac.new(check.secret, signed_payload(body, timestamp), check.algorithm).digest()
    text = digest.hex() if check.encoding == "hex" else base64.b64encode(digest).decode()
    return check.prefix + text


def check_signature(check: HmacCheck, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Refuse unless the request carries a valid, fresh signature over (timestamp and) body."""
    timestamp = check_timestamp(check, headers, now) if check.timestamp_header else None
    value = headers.get(check.header)
    if value is None:
        raise AuthError(f"missing signature header {check.header}")
    if not value.startswith(check.prefix):
        raise AuthError(f"signature header {check.header} does not start with {check.prefix!r}")
    given = decode_signature(value[len(check.prefix):].strip(), check.encoding)
    expected = hmac.new(check.secret, signed_payload(body, timestamp), getattr(hashlib, check.algorithm)).digest()
    if not hmac.compare_digest(given, expected):
        raise AuthError(f"wrong signature in {check.header}")


def check_timestamp(check: HmacCheck, headers: Mapping[str, str], now: float) -> str:
    assert check.timestamp_header is not None
    value = headers.get(check.timestamp_header, "").strip()
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_TIMESTAMP_DIGITS):
        raise AuthError(f"missing or malformed timestamp header {check.timestamp_header} "
                        "(expected Unix seconds)")
    if abs(now - int(value)) > check.tolerance:
        raise AuthError(f"timestamp in {check.timestamp_header} is more than {check.tolerance:g}s "
                        "from now: a replayed or delayed request")
    return value


MAX_TIMESTAMP_DIGITS = 12  # Unix seconds for the next 30,000 years; "²" and 5,000 digits are not times


def decode_signature(text: str, encoding: str) -> bytes:
    try:
        return bytes.fromhex(text) if encoding == "hex" else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuthError(f"signature is not valid {encoding}") from exc


PEER_HEADER = "x-fmesh-peer"
TIMESTAMP_HEADER = "x-fmesh-timestamp"
SIGNATURE_HEADER = "x-fmesh-signature"
DEFAULT_TOLERANCE = 300.0


def peer_check(secret: bytes, tolerance: float = DEFAULT_TOLERANCE) -> HmacCheck:
    """How a mesh checks the signature of a peer that signs with `secret`."""
    return HmacCheck(secret=secret, header=SIGNATURE_HEADER, algorithm="sha256", prefix="sha256=",
                     encoding="hex", timestamp_header=TIMESTAMP_HEADER, tolerance=tolerance)


def sign_request(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The timestamp and signature headers a mesh puts on `body` when it publishes to a peer
    that knows it by an HMAC secret; the caller adds `X-Fmesh-Peer` (its name there)."""
    timestamp = str(int(time.time() if now is None else now))
    return {"X-Fmesh-Timestamp": timestamp, "X-Fmesh-Signature": sign(peer_check(secret), body, timestamp)}
