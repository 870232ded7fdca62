"""The ``(request, response)`` pair hooks receive, as moesifasgi users' hooks expect them.

``request`` is a Starlette ``Request`` on the same scope (so ``request.state`` is the app's) whose
body replays what was captured; ``response`` carries ``status_code``, ``headers`` and ``body``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Message

if TYPE_CHECKING:
    from moesif_otel.capture import Exchange


class CapturedResponse:
    """The response as sent to the client (body up to the capture limit)."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status_code
        self.headers = Headers(raw=raw_headers)
        self.body = body

    @property
    def media_type(self) -> str | None:
        return self.headers.get("content-type")

    def __repr__(self) -> str:
        return f"CapturedResponse(status_code={self.status_code}, body={len(self.body)} bytes)"


def hook_arguments(exchange: Exchange, error: BaseException | None) -> tuple[Request, CapturedResponse]:
    body = bytes(exchange.request_body)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = exchange.status or (500 if error is not None else 0)
    response = CapturedResponse(status, list(exchange.response_headers or ()), bytes(exchange.response_body))
    request: Any = Request(exchange.scope, replay)
    return request, response
