"""Hooks under hostile conditions (issue 13, points 4 and 5): a time budget (HOOK_TIMEOUT), slow
sync hooks off the event loop, GET_METADATA capped. Real uvicorn and the local collector; the
trio cases drive the middleware in-process under anyio's trio backend."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import statistics
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .servers import find_middleware, serve

BUDGET = 0.5


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {
        "APPLICATION_ID": "test-app-id",
        "BASE_URI": collector.url,
        "EVENT_BATCH_TIMEOUT": 0.05,
        "SHUTDOWN_TIMEOUT": 1.0,
        "HOOK_TIMEOUT": BUDGET,
        **extra,
    }


def make_app(settings: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.get("/tasks")
    async def tasks() -> dict:
        return {"tasks": len(asyncio.all_tasks())}

    return app


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def concurrent_gets(base: str, paths: list[str]) -> list[float]:
    """Latency of each GET, all sent at once; each must succeed."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(path: str) -> float:
            start = time.perf_counter()
            answer = await client.get(path)
            assert answer.status_code == 200
            return time.perf_counter() - start

        return list(await asyncio.gather(*(one(p) for p in paths)))


def timeout_warnings(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "moesif_otel" and hook in r.getMessage() and "HOOK_TIMEOUT" in r.getMessage()
    ]


async def never(request: Any, response: Any) -> str:
    await anyio.sleep_forever()
    return "never"


async def stubborn(request: Any, response: Any) -> str:
    """Swallows every cancellation and waits again: cancelling it alone would hang its caller."""
    while True:
        with contextlib.suppress(anyio.get_cancelled_exc_class()):
            await anyio.sleep(3600)


@pytest.mark.parametrize("hook", [never, stubborn], ids=["never-returns", "ignores-cancellation"])
def test_async_hook_that_never_returns(
    collector: Collector, caplog: pytest.LogCaptureFixture, hook: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    app = make_app(settings_for(collector, IDENTIFY_USER=hook, GET_SESSION_TOKEN=lambda q, r: "s"))
    n = 20
    with serve(app) as base:
        baseline = httpx.get(f"{base}/tasks").json()["tasks"]
        start = time.monotonic()
        latencies = asyncio.run(concurrent_gets(base, [f"/items/{i}" for i in range(n)]))
        assert max(latencies) < BUDGET  # responses are not held by the hook
        events = collector.wait_for_events(n + 1, timeout=BUDGET + 5)
        assert time.monotonic() - start < BUDGET + 3
        # every request's task has ended: nothing (scope, bodies, span) is kept by the hook
        wait_until(lambda: httpx.get(f"{base}/tasks").json()["tasks"] <= baseline, timeout=2)
        stop = time.monotonic()
    assert time.monotonic() - stop < 3  # shutdown is not held either
    items = [e for e in events if "/items/" in e["request"]["uri"]]
    assert len(items) == n
    for event in items:
        assert event["response"]["status"] == 200
        assert "user_id" not in event
        assert "session_token" not in event  # budget spent: later hooks are not called
    assert len(timeout_warnings(caplog, "IDENTIFY_USER")) == 1


def test_slow_sync_hook_runs_off_the_loop(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    threads: set[str] = set()

    def identify_user(request: Request, response: Any) -> str:
        threads.add(threading.current_thread().name)
        item = int(request.path_params["item_id"])
        time.sleep(0.5 if item < 100 else 3)  # < 100 within the budget, else far past it
        return f"user-{item}"

    app = make_app(settings_for(collector, IDENTIFY_USER=identify_user, HOOK_TIMEOUT=1.0))
    with serve(app) as base:
        latencies = asyncio.run(concurrent_gets(base, [f"/items/{i}" for i in range(8)]))
        # inline, the eight sleeps would queue behind each other on the loop: p50 about 2 s
        assert statistics.median(latencies) < 0.8
        within = collector.wait_for_events(8, timeout=5)
        assert sorted(e["user_id"] for e in within) == sorted(f"user-{i}" for i in range(8))
        start = time.monotonic()
        latencies = asyncio.run(concurrent_gets(base, ["/items/100", "/items/101"]))
        assert max(latencies) < 0.5
        late = collector.wait_for_events(10, timeout=5)[8:]
        assert time.monotonic() - start < 1.0 + 1.0  # at the budget, not after the 3 s sleep
    assert [e.get("user_id") for e in late] == [None, None]
    assert threading.current_thread().name not in threads and "uvicorn" not in threads
    assert len(timeout_warnings(caplog, "IDENTIFY_USER")) == 1


def test_huge_metadata_is_left_out_with_a_note(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    big = {f"key-{i}": "v" * 90 for i in range(100_000)}  # about 10 MB of JSON

    app = make_app(settings_for(collector, GET_METADATA=lambda request, response: big))
    with serve(app) as base:
        asyncio.run(concurrent_gets(base, ["/items/0"]))
        latencies = asyncio.run(concurrent_gets(base, [f"/items/{i}" for i in range(10)]))
        # serialising 10 MB on the loop per request: p50 3.4 s with 10 at once
        assert statistics.median(latencies) < 1.5
        events = collector.wait_for_events(11, timeout=5)
    for event in events:
        assert event["metadata"] == {
            "moesif_otel": {"metadata": "omitted: GET_METADATA returned over 131072 bytes"}
        }
    size_warnings = [r for r in caplog.records if "more than 131072 bytes" in r.getMessage()]
    assert len(size_warnings) == 1


def test_async_mask_that_never_returns_is_a_counted_drop(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")

    async def mask(event_model: Any) -> Any:
        await asyncio.Event().wait()
        return event_model

    app = make_app(settings_for(collector, MASK_EVENT_MODEL=mask, HOOK_TIMEOUT=0.3))
    with serve(app) as base:
        start = time.monotonic()
        for i in range(2):
            assert httpx.get(f"{base}/items/{i}").status_code == 200
        middleware = find_middleware(app, MoesifMiddleware)
        wait_until(lambda: middleware.stats()["dropped_mask"] == 2, timeout=3)
        assert time.monotonic() - start < 2 * 0.3 + 1.5
    assert collector.event_count == 0  # never sent unmasked
    assert len(timeout_warnings(caplog, "MASK_EVENT_MODEL")) == 1


# -- under asyncio and trio (in-process ASGI) ------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    REQUEST_ID.set(scope["path"])  # the hooks run in the request's context, even off the loop
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def get(app: Any, path: str) -> None:
    """One GET through ``app`` as a server sends it, with anyio primitives (any backend)."""
    done = anyio.Event()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"example.test")], "server": ("example.test", 80),
        "client": ("127.0.0.1", 5000),
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)


@pytest.mark.anyio
@pytest.mark.parametrize("hook", [never, stubborn], ids=["never-returns", "ignores-cancellation"])
async def test_async_hook_budget_on_each_backend(collector: Collector, hook: Any) -> None:
    middleware = MoesifMiddleware(
        plain_app, settings_for(collector, IDENTIFY_USER=hook, IDENTIFY_COMPANY=lambda q, r: "c")
    )
    start = time.monotonic()
    with anyio.fail_after(BUDGET + 2):
        await get(middleware, "/a")
    assert BUDGET - 0.05 < time.monotonic() - start < BUDGET + 1
    assert middleware.flush(5)
    [event] = collector.events
    assert "user_id" not in event and "company_id" not in event


@pytest.mark.anyio
async def test_sync_hooks_off_the_loop_on_each_backend(collector: Collector) -> None:
    seen: list[tuple[str, str]] = []

    def identify_user(request: Any, response: Any) -> str:
        seen.append((REQUEST_ID.get(), threading.current_thread().name))
        time.sleep(0.3 if request.url.path == "/fast" else 5)
        return "u" + request.url.path

    middleware = MoesifMiddleware(plain_app, settings_for(collector, IDENTIFY_USER=identify_user))
    loop_thread = threading.current_thread().name
    with anyio.fail_after(BUDGET + 3):
        start = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for _ in range(4):
                tasks.start_soon(get, middleware, "/fast")
            # the loop stays free while the hooks sleep in threads
            await anyio.sleep(0.05)
            ticks = time.monotonic()
            await anyio.sleep(0.05)
            assert time.monotonic() - ticks < 0.2
        assert time.monotonic() - start < BUDGET
        await get(middleware, "/slow")  # given up at the budget, not after the 5 s sleep
    assert time.monotonic() - start < 2 * BUDGET + 0.5
    assert middleware.flush(5)
    users = sorted(str(e.get("user_id")) for e in collector.events)
    assert users == ["None", "u/fast", "u/fast", "u/fast", "u/fast"]
    assert {request_id for request_id, _ in seen} == {"/fast", "/slow"}
    assert all(thread != loop_thread for _, thread in seen)


@pytest.mark.anyio
async def test_sync_hook_returning_an_awaitable_on_each_backend(collector: Collector) -> None:
    """A plain function returning a coroutine (a lambda around an async call) is awaited on the
    app's loop within the budget, whether its first calls run in a thread or not."""

    async def lookup(path: str) -> str:
        await anyio.sleep(0)
        if path == "/hang":
            await anyio.sleep_forever()
        return "u" + path

    middleware = MoesifMiddleware(
        plain_app, settings_for(collector, IDENTIFY_USER=lambda request, response: lookup(request.url.path))
    )
    with anyio.fail_after(BUDGET + 3):
        await get(middleware, "/a")
        await get(middleware, "/b")
        start = time.monotonic()
        await get(middleware, "/hang")
        assert time.monotonic() - start < BUDGET + 0.5
    assert middleware.flush(5)
    assert [e.get("user_id") for e in collector.events] == ["u/a", "u/b", None]


def test_hooks_that_wait_survive_a_streaming_response(collector: Collector) -> None:
    """StreamingResponse cancels its task once the response is complete: the hooks, which run in
    that task after the last chunk, must still finish (within the budget) and the event keep them."""
    from fastapi.responses import StreamingResponse

    async def identify_user(request: Any, response: Any) -> str:
        await anyio.sleep(0.05)
        return "streamer"

    def get_session_token(request: Any, response: Any) -> str:
        time.sleep(0.01)
        return "token"

    app = make_app(settings_for(collector, IDENTIFY_USER=identify_user, GET_SESSION_TOKEN=get_session_token))

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(3):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    with serve(app) as base, httpx.Client(base_url=base) as client:
        for _ in range(3):
            assert client.get("/stream").text == "chunk 0\nchunk 1\nchunk 2\n"
        events = collector.wait_for_events(3)
    for event in events:
        assert event["response"]["status"] == 200
        assert event["user_id"] == "streamer"
        assert event["session_token"] == "token"


def test_metadata_cap_note_is_kept_beside_the_error_note() -> None:
    """event.py adds its own notes under metadata["moesif_otel"]: it must not erase capture's."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind

    from moesif_otel import attributes as A
    from moesif_otel.event import EventOptions, event_document
    from moesif_otel.hook_metadata import capped_metadata_json
    from moesif_otel.hooks import Hook

    hook = Hook("GET_METADATA", lambda request, response: None, "mapping")
    note = json.loads(capped_metadata_json(hook, {"k": "v" * 100}, limit=10) or "")
    assert note == {"moesif_otel": {"metadata": "omitted: GET_METADATA returned over 10 bytes"}}
    span = ReadableSpan(
        name="GET /boom",
        context=SpanContext(trace_id=1, span_id=2, is_remote=False),
        kind=SpanKind.SERVER,
        attributes={
            A.MOESIF_CAPTURED: True,
            A.HTTP_REQUEST_METHOD: "GET",
            A.MOESIF_REQUEST_URI: "http://testserver/boom",
            A.HTTP_RESPONSE_STATUS_CODE: 500,
            A.MOESIF_METADATA: json.dumps(note),
            A.MOESIF_ERROR: "RuntimeError",
        },
        start_time=1_000_000_000,
        end_time=2_000_000_000,
    )
    event = event_document(span, EventOptions())
    assert event["metadata"] == {"moesif_otel": {**note["moesif_otel"], "error": "RuntimeError"}}
