"""Real servers for integration tests: uvicorn on 127.0.0.1 in a thread, with a deadline on start."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve(app: Any, *, lifespan: str = "on", timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on an ephemeral port; yield its base URL.

    Leaving the block stops the server the way SIGTERM does (graceful, lifespan shutdown).
    """
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


def find_middleware(app: Any, kind: type) -> Any:
    """The instance of ``kind`` in a built Starlette middleware stack (add_middleware gives no handle)."""
    node = getattr(app, "middleware_stack", None) or app
    seen = 0
    while node is not None and seen < 50:
        if isinstance(node, kind):
            return node
        node = getattr(node, "app", None)
        seen += 1
    raise LookupError(f"no {kind.__name__} in the middleware stack (has the app served a request?)")
