"""Pacing: while deliveries are behind, the ingress works on a few requests at a time.

Ingress and delivery share one event loop, and a loop turn runs everything that became
ready during the last one. Under heavy ingress every turn is full of requests, the
turns grow long, and delivery, which needs several turns per event (claim, send to
the replica, read the answer, ack), falls to a trickle while the backlog grows: with
1,500 events/s offered on a busy machine, about 1,000/s were accepted and 75/s
delivered while the load lasted (about 450/s with pacing). So once more than
`behind` deliveries wait, at most `limit` requests are worked on at once; the others wait their
turn in their connections (costing nothing), each loop turn has room for delivery
again, and ingress slows to the pace delivery keeps. With no backlog nothing waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fmesh.asgi import ASGIApp, Receive, Scope, Send

LIMIT = 16        # requests worked on at once while deliveries are behind
BEHIND = 1_000    # deliveries waiting (all subscriptions) past which ingress is paced


class Pacing:
    def __init__(self, waiting: Callable[[], int], limit: int = LIMIT, behind: int = BEHIND) -> None:
        self.waiting = waiting
        self.behind = behind
        self._turns = asyncio.Semaphore(limit)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        if self.waiting() <= self.behind:
            await app(scope, receive, send)
            return
        async with self._turns:
            await app(scope, receive, send)
