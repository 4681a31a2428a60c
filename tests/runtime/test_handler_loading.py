"""What load_handler refuses, in words a user can act on, before any event is delivered."""

from __future__ import annotations

import pytest
from fmesh.runtime.worker import HandlerLoadError, load_handler


def loaded(tmp_path, source: str, name: str = "handle"):  # type: ignore[no-untyped-def]
    (tmp_path / "handler.py").write_text(source)
    return load_handler(str(tmp_path), f"handler.py:{name}")


@pytest.mark.parametrize("source", [
    "def handle(event):\n    return 1\n",
    "async def handle(event, extra=None):\n    return 1\n",
    "def handle(*args):\n    return 1\n",
    "class Handler:\n    def __call__(self, event):\n        return 1\nhandle = Handler()\n",
    "handle = print\n",
])
def test_a_handler_that_takes_the_event_loads(tmp_path, source):
    assert callable(loaded(tmp_path, source))


def test_a_missing_name_says_the_file_has_no_such_function(tmp_path):
    with pytest.raises(HandlerLoadError, match="handler.py has no function 'handel'"):
        loaded(tmp_path, "def handle(event):\n    pass\n", "handel")


def test_a_name_that_is_not_callable_says_what_it_is(tmp_path):
    """It used to say the file 'has no function', though the name was right there."""
    with pytest.raises(HandlerLoadError, match=r"handler.py:handle is a dict, not a function"):
        loaded(tmp_path, "handle = {}\n")


@pytest.mark.parametrize("source", [
    "def handle():\n    pass\n",
    "async def handle(event, context):\n    pass\n",
    "def handle(*, event):\n    pass\n",
])
def test_a_handler_that_cannot_take_the_event_is_refused_at_load(tmp_path, source):
    """`def handle():` used to pass the deploy's check and then fail every delivery."""
    with pytest.raises(HandlerLoadError, match=r"handler.py:handle must take the event as its one argument"):
        loaded(tmp_path, source)
