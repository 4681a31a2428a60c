"""What callers may do: the ingress's authentication mode, each principal's allow rule and
rate limit, which principals reach a function, and the control API's scopes.

The ingress asks the `Gate` in this order, each step with its own status: who is calling
(`identify`, 401: before the body is read; `admit`, 401 for a bad signature, 429 past the
rate limit), then, once the events are parsed, whether they may be published (`permit`,
403 for the whole request when one event is outside the allow rule). `permit` also stamps
every event with the principal (`fmeshsender`), replacing whatever the caller sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fmesh.broker.filters import Filter, any_of, compile_dialect
from fmesh.broker.identity import ANONYMOUS, SENDER, Identity, PendingSignature, Principal

from fmesh.errors import AuthError, Forbidden
from fmesh.events import PATH, Event
from fmesh.ratelimit import TokenBucket

MODES = ("required", "optional", "off")
READ_METHODS = ("GET", "HEAD")


def default_mode(host: str, client_certificates: bool = False) -> str:
    """`off` on a loopback address (only this machine can call), `required` on any other, and
    wherever client certificates are required (mTLS is for telling callers apart)."""
    if client_certificates:
        return "required"
    if host == "localhost":
        return "off"
    try:
        return "off" if ipaddress.ip_address(host.strip("[]")).is_loopback else "required"
    except ValueError:
        return "required"  # a host name: it may resolve to anything


@dataclass
class Rule:
    """What one principal may publish (None: anything), and how often (None: unlimited)."""

    allow: Filter | None = None
    bucket: TokenBucket | None = None


class Gate:
    """The ingress's checks between a request and the store."""

    def __init__(self, identity: Identity, mode: str = "off") -> None:
        if mode not in MODES:
            raise ValueError(f"ingress auth must be one of {', '.join(MODES)}, not {mode!r}")
        self.identity = identity
        self.mode = mode
        self._rules: dict[str, Rule] = {}

    def set_rule(self, name: str, rule: Rule) -> None:
        self._rules[name] = rule

    def drop_rule(self, name: str) -> None:
        self._rules.pop(name, None)

    def identify(self, headers: Mapping[str, str], scope: Mapping[str, Any]) -> Principal | PendingSignature:
        """Who is publishing, from the headers and the TLS client certificate (AuthError: 401)."""
        if self.mode == "off":
            return ANONYMOUS
        caller = self.identity.identify(headers, scope.get("extensions", {}).get("tls"))
        if caller is None:
            if self.mode == "required":
                raise AuthError("this mesh takes events only from known callers: send a bearer token "
                                "(fmesh tokens create NAME --scope publish), a peer's X-Fmesh-Signature, "
                                "or a peer's client certificate")
            return ANONYMOUS
        if isinstance(caller, Principal) and not caller.may_publish:
            raise Forbidden(f"{caller.name} has scope {caller.scope}; publishing needs a publish or admin token")
        return caller

    def admit(self, caller: Principal | PendingSignature, headers: Mapping[str, str], body: bytes) -> Principal:
        """The caller once its signature (if it signs) checks out (401) and it is within its
        rate limit (RateLimited: 429)."""
        principal = self.identity.verify(caller, headers, body)
        rule = self._rules.get(principal.name)
        if rule is not None and rule.bucket is not None:
            rule.bucket.admit(principal.name)
        return principal

    def permit(self, principal: Principal, events: Sequence[Event]) -> None:
        """Stamp the events with their sender; Forbidden (403) if any is outside its allow rule.

        Only a peer may say where an event has been (`fmeshpath`): from anyone else, where
        callers are told apart, it is dropped, so that nobody can make this mesh take a
        legitimate bridged event for a loop or a duplicate."""
        name = principal.name
        forwarded_by_peer = principal.scope == "peer" or self.mode == "off"
        for event in events:
            event.attributes[SENDER] = name
            if not forwarded_by_peer:
                event.attributes.pop(PATH, None)
        rule = self._rules.get(name)
        if rule is None:
            return
        if rule.bucket is not None:
            rule.bucket.take(len(events))
        if rule.allow is not None:
            for event in events:
                if not rule.allow(event.attributes):
                    raise Forbidden(f"{name} may not publish event {event.id[:64]!r} of type {event.type[:100]!r}: "
                                    f"it may publish only events where {rule.allow.description}; "
                                    "nothing of this request was stored")


def sender_filter(allowed: Sequence[str]) -> Filter:
    """Events whose `fmeshsender` is one of `allowed` (a function's `allow:`)."""
    return any_of([compile_dialect({"exact": {SENDER: name}}, "allow") for name in allowed])


def control_refusal(principal: Principal, method: str) -> str | None:
    """Why `principal` may not make a control API call with `method`; None when it may."""
    if principal.scope == "admin":
        return None
    if principal.scope == "read":
        return None if method in READ_METHODS else f"{principal.name} has scope read: this needs an admin token"
    return f"{principal.name} may only publish events (POST /): the control API needs a read or admin token"

