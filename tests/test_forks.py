"""forks.py: the one way state is re-created in a forked child."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from moesif_otel.forks import reinit_after_fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


class Counter:
    def __init__(self) -> None:
        self.resets = 0
        reinit_after_fork(self.reset)

    def reset(self) -> None:
        self.resets += 1


def resets_in_child(objects: list[Counter]) -> list[int]:
    """Each object's reset count as a forked child sees it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            os.write(write, ",".join(str(o.resets) for o in objects).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        data = os.read(read, 1024).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    return [int(n) for n in data.split(",")] if data else []


def test_the_child_reinitialises_and_the_parent_does_not() -> None:
    counter = Counter()
    assert resets_in_child([counter]) == [1]
    assert counter.resets == 0


def test_registering_keeps_nothing_alive() -> None:
    counter = Counter()
    ref = weakref.ref(counter)
    del counter
    gc.collect()
    assert ref() is None
    assert resets_in_child([]) == []  # and a fork after the object is gone runs nothing that fails
