"""Waiting for work (broker/arrivals.py) under uvloop, which the mesh runs on."""

from __future__ import annotations

import time

import uvloop
from fmesh.broker.arrivals import Arrivals

from fmesh.contracts import Delivery


def test_a_claim_waiting_for_a_delivery_due_in_under_a_millisecond_does_not_spin():
    """uvloop fires a timeout under 1 ms at once: the claim looked again, a store query each
    time, until the delivery fell due."""
    looks = []

    async def claim_now() -> tuple[list[Delivery], float | None]:
        looks.append(time.time())
        due = looks[0] + 0.0008  # from the first look: the loop's start may take longer than that
        return ([object()], None) if time.time() >= due else ([], due)  # type: ignore[list-item]

    async def release(ids) -> None:
        raise AssertionError("nothing is released")

    async def claim() -> list[Delivery]:
        return await Arrivals().claim("function:f", claim_now, release, wait=5.0, clock=time.time)

    assert len(uvloop.run(claim())) == 1
    assert len(looks) <= 3, f"{len(looks)} looks in {1000 * (looks[-1] - looks[0]):.2f} ms"
