"""User hooks, made failsafe.

A hook that raises or returns the wrong type must never change what the app answers nor stop the
event: its field is left out and the problem is logged once per hook and cause (WARNING on the
``moesif_otel`` logger), not once per request.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from moesif_otel.logonce import LogOnce

logger = logging.getLogger("moesif_otel")

_MISSING = object()


def _text(value: Any) -> Any:
    """Ids may come back as ints from user code; anything else that is not text is wrong."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _MISSING


def _mapping(value: Any) -> Any:
    return value if isinstance(value, dict) else _MISSING


def _flag(value: Any) -> Any:
    return bool(value) if isinstance(value, (bool, int)) else _MISSING


# How each kind of hook result is checked: returns the value to use, or _MISSING when wrong.
CHECKS: dict[str, Callable[[Any], Any]] = {"text": _text, "mapping": _mapping, "flag": _flag}


class Hook:
    """One user function, called failsafe; sync or ``async def``."""

    __slots__ = ("_check", "_warnings", "expected", "fn", "name")

    def __init__(self, name: str, fn: Callable[..., Any], expected: str) -> None:
        self.name = name
        self.fn = fn
        self.expected = expected
        self._check = CHECKS[expected]
        self._warnings = LogOnce(logger)

    def warn_once(self, cause: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``message`` the first time this hook shows ``cause``; later occurrences are silent."""
        self._warnings.warning(cause, message, *args, exc_info=exc_info)

    def _result(self, value: Any) -> Any:
        if value is None:
            return None
        if type(value) is str and self.expected == "text":
            return value or None
        checked = self._check(value)
        if checked is _MISSING:
            self.warn_once(
                f"type:{type(value).__name__}",
                "moesif_otel: %s returned %s, expected %s; the field is left out (logged once)",
                self.name,
                type(value).__name__,
                self.expected,
            )
            return None
        return checked

    def _failed(self, exc: BaseException) -> None:
        self.warn_once(
            f"raise:{type(exc).__name__}",
            "moesif_otel: %s raised %s: %s; the field is left out (logged once)",
            self.name,
            type(exc).__name__,
            exc,
            exc_info=True,
        )

    async def acall(self, *args: Any) -> Any:
        """Call on the event loop; awaits an async hook."""
        try:
            value = self.fn(*args)
            if type(value) is not str and inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            self._failed(exc)
            return None
        return self._result(value)

    def call(self, *args: Any) -> Any:
        """Call from a plain thread; an async hook runs on this thread's private loop."""
        try:
            value = self.fn(*args)
            if inspect.isawaitable(value):
                value = run_awaitable(value)
        except Exception as exc:
            self._failed(exc)
            return None
        return self._result(value)


_thread_loops = threading.local()


def run_awaitable(awaitable: Any) -> Any:
    """Run an awaitable to completion on a loop owned by the calling (non-async) thread."""
    loop = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
    return loop.run_until_complete(awaitable)


def metadata_json(hook: Hook, value: Any) -> str | None:
    """A GET_METADATA result as JSON text for its span attribute; not JSON: logged once, left out."""
    if value is None:
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        hook.warn_once(
            "json", "moesif_otel: %s returned data that is not JSON (%s); left out", hook.name, exc
        )
        return None


def make_hook(name: str, fn: Callable[..., Any] | None, expected: str) -> Hook | None:
    return Hook(name, fn, expected) if fn is not None else None
