"""WARNING once per cause.

A hook that raises on every request, a collector that is down for an hour or a malformed rule
refetched every minute must show up in the app's logs — once, not once per occurrence.
"""

from __future__ import annotations

import logging
import threading
from typing import Any


class LogOnce:
    """Remembers the causes it has logged (at most ``limit``, so hostile input cannot grow it)."""

    __slots__ = ("_limit", "_lock", "_logger", "_seen", "full_note")

    def __init__(self, logger: logging.Logger, *, limit: int = 512, full_note: str = "") -> None:
        self._logger = logger
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.full_note = full_note  # appended to the last message logged before the limit

    def warning(self, cause: str, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log unless ``cause`` was logged before (or the limit is reached); True when logged."""
        with self._lock:
            if cause in self._seen or len(self._seen) >= self._limit:
                return False
            self._seen.add(cause)
            last = len(self._seen) == self._limit
        if last and self.full_note:
            message += self.full_note
        self._logger.warning(message, *args, exc_info=exc_info)
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
