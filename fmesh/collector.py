"""The cyclic garbage collector's setting for a process that serves events (the mesh, an
ingress worker).

CPython collects the young generation whenever the tracked objects allocated and not yet
freed exceed a threshold, 700 by default. One busy loop turn of the mesh (dozens of
requests parsed, routed, stored and answered) has thousands of such objects alive at
once, nearly all freed by reference counting moments later. So under load the young
generation was collected 110-180 times a second, a tenth of them going on to the middle
one: 10-13 us an event, 4-6 % of the loop, and 70-80 pauses over 1 ms in 10 s.

Above one turn's worth, the collector runs only when objects really accumulate (a few
times in 10 s at full load), and garbage in cycles is still collected, once every
`YOUNG_OBJECTS` new objects. The older generations keep CPython's ratios.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 10_000   # tracked objects allocated and not freed before a young collection


def tune_for_serving() -> None:
    """Collect the young generation only past `YOUNG_OBJECTS`, the older ones as CPython does."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, middle, old)
