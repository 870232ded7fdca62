"""A real trio server for integration tests: hypercorn's trio worker on 127.0.0.1, in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve


@contextmanager
def serve_trio(app: Any, *, timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` under hypercorn's trio worker (``hypercorn -k trio``) on an ephemeral port; yield
    its base URL. Leaving the block shuts the server down gracefully, lifespan shutdown included."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = timeout
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        state["stop"] = stop
        state["token"] = trio.lowlevel.current_trio_token()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)

        async with trio.open_nursery() as nursery:
            state["urls"] = await nursery.start(run)
            started.set()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below
            state["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=thread_main, name="hypercorn-trio", daemon=True)
    thread.start()
    if not started.wait(timeout) or "urls" not in state:
        raise RuntimeError(f"hypercorn did not start: {state.get('error')!r}")
    try:
        yield state["urls"][0]
    finally:
        trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("hypercorn did not stop")
        if "error" in state:
            raise RuntimeError("hypercorn failed") from state["error"]
