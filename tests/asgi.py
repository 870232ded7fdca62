"""One request through an ASGI app in-process, as a server would send it.

For what a real server cannot show: scopes it never sends (no client, HTTP/2 framing), how often
capture calls ``receive``, and traffic with the garbage collector switched off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass
class Exchange:
    status: int = 0
    receives: int = 0  # calls the app (and the middleware around it) made to receive()
    messages: list[dict[str, Any]] = field(default_factory=list)


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "1.1",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
) -> Exchange:
    """``body`` arrives in one message; ``headers`` follow Host as given (framing headers included)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": http_version, "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"example.test"), *(headers or [])], "server": ("example.test", 80),
    }  # fmt: skip
    if client is not None:
        scope["client"] = client
    exchange = Exchange()
    done = anyio.Event()  # asyncio or trio, whichever runs the call

    async def receive() -> dict[str, Any]:
        exchange.receives += 1
        if exchange.receives == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # as a server does: the disconnect comes after the response
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        exchange.messages.append(message)
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return exchange


def json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
