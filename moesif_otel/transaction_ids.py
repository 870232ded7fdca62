"""Moesif transaction ids: the request's ``X-Moesif-Transaction-Id`` or a new one.

A leaf module (nothing of moesif_otel's imported): capture assigns the id, the event falls back to
a new one for calls that carry none.
"""

from __future__ import annotations

import random

from starlette.types import Scope

TRANSACTION_HEADER = b"x-moesif-transaction-id"
TRANSACTION_HEADER_NAME = TRANSACTION_HEADER.decode("latin-1")  # as header maps hold it
_MAX_TRANSACTION_ID = 128


def request_transaction_id(scope: Scope) -> str:
    """The id the client sent (printable, at most 128 characters), else a new one."""
    name: bytes
    value: bytes
    for name, value in scope.get("headers", ()):
        if name.lower() == TRANSACTION_HEADER:
            text = value.decode("latin-1").strip()
            if text and len(text) <= _MAX_TRANSACTION_ID and text.isprintable():
                return text
            break
    return new_transaction_id()


def new_transaction_id() -> str:
    """A random (version 4) UUID. ``uuid.uuid4()`` reads os.urandom, which releases the GIL: on a
    busy event loop every such call can wait out a background thread's switch interval. These ids
    are deduplication keys, not secrets; ``random`` is reseeded in forked children."""
    n = (random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
