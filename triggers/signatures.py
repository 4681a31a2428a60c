"""The signature checks webhook triggers use, and `sign_request` for senders.

They live in the core (`fmesh.signing`), because the broker's ingress checks peers'
signatures with them too and the broker does not import triggers; importing them from
here keeps working.
"""

from __future__ import annotations

from fmesh.signing import (
    DEFAULT_TOLERANCE,
    PEER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HmacCheck,
    check_bearer,
    check_signature,
    check_timestamp,
    decode_signature,
    peer_check,
    sign,
    sign_request,
    signed_payload,
)

__all__ = ["DEFAULT_TOLERANCE", "PEER_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "HmacCheck", "check_bearer",
           "check_signature", "check_timestamp", "decode_signature", "peer_check", "sign", "sign_request",
           "signed_payload"]
