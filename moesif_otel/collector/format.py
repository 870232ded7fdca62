"""One readable line per event, for the collector CLI and the demo.

It must never raise: it also prints events that failed validation.
"""

from __future__ import annotations

import json
from typing import Any


def format_event(event: Any) -> str:
    """``Incoming POST http://host/items?x=1 -> 201 user=1 company=2 (req json 42B, resp json 17B)``."""
    if not isinstance(event, dict):
        return f"<not an event: {type(event).__name__}>"
    request = event.get("request")
    request = request if isinstance(request, dict) else {}
    response = event.get("response")
    response = response if isinstance(response, dict) else None

    parts = [
        _clean(event.get("direction") or "?"),
        _clean(request.get("verb") or "?"),
        _clean(request.get("uri") or "?"),
        "->",
        _clean(response.get("status")) if response is not None else "(no response)",
    ]
    for key, label in (("user_id", "user"), ("company_id", "company")):
        value = event.get(key)
        if value is not None:
            parts.append(f"{label}={_clean(value)}")
    weight = event.get("weight")
    if weight not in (None, 1):
        parts.append(f"weight={_clean(weight)}")
    blocked_by = event.get("blocked_by")
    if blocked_by is not None:
        parts.append(f"blocked_by={_clean(blocked_by)}")
    parts.append(f"(req {_describe_body(request)}, resp {_describe_body(response)})")
    return " ".join(parts)


def _describe_body(container: dict[str, Any] | None) -> str:
    if container is None or container.get("body") is None:
        return "no body"
    body = container["body"]
    encoding = container.get("transfer_encoding") or "json"
    if encoding == "base64" and isinstance(body, str):
        stripped = body.rstrip("=")
        size = len(stripped) * 3 // 4
    else:
        try:
            size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace"))
        except (TypeError, ValueError):
            return f"{_clean(encoding)} ?B"
    return f"{_clean(encoding)} {_size(size)}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f}KB"
    return f"{n / (1024 * 1024):.1f}MB"


def _clean(value: Any) -> str:
    """Keep the summary on one line whatever the event holds."""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")
