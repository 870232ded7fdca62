"""Re-initialise an object's locks, queues and threads in a forked child, for as long as it lives.

A child of ``os.fork()`` inherits its parent's locks (possibly held by threads that don't exist
there) and queues (the parent's to deliver), but none of its threads. Every long-lived object with
threads re-creates that state in the child through this one helper; it holds the object weakly, so
registering never keeps one alive (``os.register_at_fork`` has no way to unregister).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from types import MethodType

__all__ = ["reinit_after_fork"]


def reinit_after_fork(reinit: Callable[[], object]) -> None:
    """Call ``reinit`` in every forked child: a bound method while its object lives, or a function.

    Nothing on platforms without ``fork`` (``os.register_at_fork`` missing).
    """
    if not hasattr(os, "register_at_fork"):
        return
    if isinstance(reinit, MethodType):
        ref = weakref.WeakMethod(reinit)

        def after_in_child() -> None:
            method = ref()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=after_in_child)
    else:
        os.register_at_fork(after_in_child=reinit)
