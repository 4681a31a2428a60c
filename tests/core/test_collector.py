"""The collector's setting for serving processes (fmesh/collector.py)."""

from __future__ import annotations

import gc
import weakref

import pytest

from fmesh.collector import YOUNG_OBJECTS, tune_for_serving


@pytest.fixture
def tuned():
    before = gc.get_threshold()
    tune_for_serving()
    gc.collect()  # the count of new objects starts from zero
    yield before
    gc.set_threshold(*before)


@pytest.fixture
def collections():
    started: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    yield started
    gc.callbacks.remove(count)


def test_a_busy_turns_worth_of_objects_alive_at_once_starts_no_collection(tuned, collections):
    for _ in range(200):  # turns, each with thousands of objects alive at once, then freed
        alive = [{"id": i, "subscriptions": [i]} for i in range(YOUNG_OBJECTS // 4)]
        del alive
    assert collections == []


def test_garbage_in_cycles_is_still_collected(tuned, collections):
    class Cycle:
        pass

    first = Cycle()
    first.me = first
    gone = weakref.ref(first)
    del first
    for _ in range(YOUNG_OBJECTS):  # each a cycle left behind: an instance and its __dict__
        left = Cycle()
        left.me = left
    assert gone() is None
    assert collections, "a young collection ran once enough new objects accumulated"


def test_the_older_generations_keep_their_thresholds(tuned):
    assert gc.get_threshold() == (YOUNG_OBJECTS, *tuned[1:])
