"""The one rule for names people give things in fmesh: functions, triggers, subscriptions,
bridges, peers, tokens and mesh ids (DNS-label style, as Kubernetes names are)."""

from __future__ import annotations

import re

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
NAME_RULE = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"


def is_name(value: object) -> bool:
    return isinstance(value, str) and bool(NAME.match(value))
