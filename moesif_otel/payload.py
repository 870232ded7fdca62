"""Moesif's size limits and the JSON-array payloads built within them (events and profile batches).

Limits from Moesif's collector API (docs/reference: "a single event is at most 1 MB", "an events
batch is at most 50 MB"). "1 MB" is read as 1,000,000 bytes, the smaller reading: an event under it
is accepted whichever Moesif means, and the local collector checks the same constant.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable, Iterator

__all__ = ["MAX_EVENT_BYTES", "MAX_PAYLOAD_BYTES", "JsonArray", "json_arrays"]

MAX_EVENT_BYTES = 1_000_000
"""Moesif's limit on one serialized event (compact JSON, UTF-8)."""
MAX_PAYLOAD_BYTES = 8_000_000
"""Uncompressed bytes of one batch payload; far below the 50 MB batch limit."""

_GZIP_LEVEL = 1  # most of the size win for a fraction of the CPU
_GZIP_WBITS = 31  # gzip framing (zlib.compress takes it from Python 3.11; before, two calls)
_ZIP_CHUNK = 256 * 1024  # uncompressed JSON handed to zlib at once


class JsonArray:
    """A JSON array of already-encoded items, at most MAX_PAYLOAD_BYTES uncompressed.

    With ``gzip`` it is compressed as it is built: at most ``_ZIP_CHUNK`` bytes of uncompressed
    JSON (plus one item) are alive at a time, instead of a whole batch encoded and then compressed
    (hundreds of MB with big bodies). Not one zlib call per item: zlib releases the GIL on every
    call, and under load each release cost the exporter a wait for the GIL to come back (the
    switch interval), which made delivery 20% slower than one call per batch; and each time it
    comes back, the app's event loop is interrupted (see ``transport``).
    """

    __slots__ = ("_gzip", "_parts", "_pending", "_pending_size", "_zip", "count", "size")

    def __init__(self, *, gzip: bool = False) -> None:
        self._gzip = gzip
        self._zip: zlib._Compress | None = None  # once a chunk is compressed
        self._parts: list[bytes] = []
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.count = 0
        self.size = 1  # the finished payload's uncompressed length: "[", items, separators, "]"

    def has_room(self, data: bytes, max_count: int | None = None) -> bool:
        """Whether ``data`` may join: an empty array takes any item (an event is bounded by
        MAX_EVENT_BYTES), a started one up to ``max_count`` items and MAX_PAYLOAD_BYTES."""
        if not self.count:
            return True
        if max_count is not None and self.count >= max_count:
            return False
        return self.size + len(data) + 1 <= MAX_PAYLOAD_BYTES  # its separator too

    def add(self, data: bytes) -> None:
        self._pending.append(b"," if self.count else b"[")
        self._pending.append(data)
        self._pending_size += len(data) + 1
        self.count += 1
        self.size += len(data) + 1
        if self._gzip and self._pending_size >= _ZIP_CHUNK:
            self._compress_pending()

    def _compress_pending(self) -> zlib._Compress:
        if self._zip is None:
            self._zip = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        self._parts.append(self._zip.compress(b"".join(self._pending)))
        self._pending.clear()
        self._pending_size = 0
        return self._zip

    def finish(self) -> bytes:
        """The payload (gzipped with ``gzip``); the array is not to be used afterwards."""
        self._pending.append(b"]")
        if not self._gzip:
            return b"".join(self._pending)
        if self._zip is None and sys.version_info >= (3, 11):  # the usual batch: one zlib call
            return zlib.compress(b"".join(self._pending), _GZIP_LEVEL, wbits=_GZIP_WBITS)
        self._parts.append(self._compress_pending().flush())
        return b"".join(self._parts)


def json_arrays(items: Iterable[bytes], *, gzip: bool = False) -> Iterator[tuple[bytes, int]]:
    """``items`` split into payloads of at most MAX_PAYLOAD_BYTES: (payload, item count) each;
    nothing for no items."""
    array = JsonArray(gzip=gzip)
    for data in items:
        if not array.has_room(data):
            yield array.finish(), array.count
            array = JsonArray(gzip=gzip)
        array.add(data)
    if array.count:
        yield array.finish(), array.count
