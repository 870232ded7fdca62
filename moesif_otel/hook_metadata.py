"""GET_METADATA's value as the JSON text of the event's ``metadata``: bounded in size, and
measured and serialised off the event loop when it is big (a ``Job`` step for ``HookRun``).
Split from :mod:`moesif_otel.hooks`, which runs the hooks; this only shapes one hook's value.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from itertools import chain
from typing import Any

from moesif_otel.hooks import Hook, Job

__all__ = ["METADATA_LIMIT", "capped_metadata_json", "json_size", "metadata_json", "metadata_steps"]

# At most this many bytes of JSON; above, left out with a note. Up to the smaller size it is
# measured and serialised inline, above it off the event loop.
METADATA_LIMIT = 131_072
_INLINE_METADATA = 16_384


def json_size(value: Any, limit: int) -> int:
    """About how many bytes of JSON ``value`` makes, looking at no more than ``limit`` bytes of it
    (each item counts at least 2): a 10 MB dict costs what a ``limit``-sized one does. Over the
    limit: some number above ``limit``. Non-ASCII text is counted as one byte per character."""
    size = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is str:
                size += len(item) + 3  # quotes and a separator
            elif kind is dict:
                size += 2
                stack.append(chain.from_iterable(item.items()))  # key, value, key, value...
                break
            elif kind is list or kind is tuple:
                size += 2
                stack.append(iter(item))
                break
            else:
                size += 8  # numbers, booleans, null; anything else fails json.dumps later
            if size > limit:
                return size
        else:
            stack.pop()
        if size > limit:
            return size
    return size


def metadata_steps(hook: Hook, value: Any) -> Generator[Hook | Job, Any, str | None]:
    """A GET_METADATA result as JSON text for its span attribute: checked against
    :data:`METADATA_LIMIT` first; a big one is measured and serialised off the event loop."""
    if value is None:
        return None
    if json_size(value, _INLINE_METADATA) <= _INLINE_METADATA:
        return capped_metadata_json(hook, value)
    text: str | None = yield Job(lambda: capped_metadata_json(hook, value))
    return text


def capped_metadata_json(hook: Hook, value: Any, limit: int = METADATA_LIMIT) -> str | None:
    """JSON text of at most ``limit`` bytes, else a note saying the metadata was left out."""
    if json_size(value, limit) <= limit:
        text = metadata_json(hook, value)
        if text is None or len(text) <= limit:
            return text
    hook.warn_once(
        "size",
        "moesif_otel: %s returned more than %d bytes of JSON; the metadata is left out of the "
        "event with a note (logged once)",
        hook.name,
        limit,
    )
    return json.dumps({"moesif_otel": {"metadata": f"omitted: {hook.name} returned over {limit} bytes"}})


def metadata_json(hook: Hook, value: Any) -> str | None:
    """A GET_METADATA result as JSON text for its span attribute; not JSON: logged once, left out."""
    if value is None:
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        hook.warn_once(
            "json", "moesif_otel: %s returned data that is not JSON (%s); left out", hook.name, exc
        )
        return None
