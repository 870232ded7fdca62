"""Capture and the lifespan flush under both async libraries: asyncio and trio (anyio's plugin).

Starlette and FastAPI apps run under trio when served by ``hypercorn -k trio``; nothing in the
request path or the lifespan wrapper may assume asyncio. The real trio server is in
tests/test_trio_server.py; these drive the middleware in-process, as a server would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from moesif_otel import MoesifMiddleware, capture
from moesif_otel.collector import Collector

from .apps import make_app
from .asgi import call

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def made() -> Iterator[list[MoesifMiddleware]]:
    """Middlewares a test built: their pipelines are stopped after it (no lifespan stops them)."""
    middlewares: list[MoesifMiddleware] = []
    yield middlewares
    for middleware in middlewares:
        middleware.pipeline.shutdown()


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "backends-app", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def middleware_for(collector: Collector, made: list[MoesifMiddleware], **extra: Any) -> MoesifMiddleware:
    middleware = MoesifMiddleware(make_app(), settings_for(collector, **extra))
    made.append(middleware)
    return middleware


@pytest.mark.parametrize("framing", ["content-length", "bodyless"])
async def test_an_unread_body_is_drained_and_a_bodyless_request_is_not(
    collector: Collector, made: list[MoesifMiddleware], framing: str
) -> None:
    middleware = middleware_for(collector, made)
    body = b"hello world!" if framing == "content-length" else b""
    headers = [(b"content-length", b"12")] if body else []
    exchange = await call(middleware, "GET", "/text", body=body, headers=headers)  # /text never reads
    assert exchange.status == 200
    [event] = collector.wait_for_events(1)
    assert exchange.receives == (1 if body else 0)
    if body:
        assert event["request"]["body"] == "aGVsbG8gd29ybGQh"  # the drained body, base64 (not JSON)
        assert "metadata" not in event  # complete, not partial
    else:
        assert "body" not in event["request"]


async def test_the_drain_gives_up_on_a_body_that_never_ends(
    collector: Collector, made: list[MoesifMiddleware], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client trickling a body the app never reads holds the response for the drain timeout only."""
    monkeypatch.setattr(capture, "_DRAIN_TIMEOUT", 0.2)
    middleware = middleware_for(collector, made)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/text", "raw_path": b"/text", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"example.test"), (b"transfer-encoding", b"chunked")],
        "server": ("example.test", 80), "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"first part", "more_body": True}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await middleware(scope, receive, send)  # POST /text is not routed: 405, body never read
    assert sent[0]["status"] == 405
    [event] = collector.wait_for_events(1)
    assert event["request"]["body"] == "Zmlyc3QgcGFydA=="  # b"first part"
    partial = "partial: the app did not read the whole body"
    assert event["metadata"] == {"moesif_otel": {"request_body": partial}}


async def test_on_a_joined_span_the_closing_message_leaves_from_an_empty_context(
    collector: Collector, made: list[MoesifMiddleware]
) -> None:
    """Capture on someone else's SERVER span (an instrumentor's) sends the closing message last,
    outside this request's OTel context: a pipelined next request starts from inside that call."""
    middleware = middleware_for(collector, made, IDENTIFY_USER=lambda req, res: "u-1")
    tracer = middleware.pipeline.tracer_provider.get_tracer("instrumentor")
    current_at_close: list[Any] = []

    async def instrumented(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("GET /text", kind=SpanKind.SERVER):

            async def watching_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    current_at_close.append(trace.get_current_span())
                await send(message)

            await middleware(scope, receive, watching_send)

    exchange = await call(instrumented, "GET", "/text")
    assert exchange.status == 200
    assert b"".join(m.get("body", b"") for m in exchange.messages[1:]) == b"hello, plain text"
    [at_close] = current_at_close
    assert not at_close.is_recording()
    [event] = collector.wait_for_events(1)
    assert event["user_id"] == "u-1"
    assert event["response"]["body"] == "aGVsbG8sIHBsYWluIHRleHQ="


async def test_lifespan_shutdown_completes_after_the_flush(
    collector: Collector, made: list[MoesifMiddleware]
) -> None:
    # a batch timeout far longer than the test: only the lifespan flush can deliver the event
    middleware = middleware_for(collector, made, EVENT_BATCH_TIMEOUT=300)
    assert (await call(middleware, "GET", "/text")).status == 200
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[tuple[str, int]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append((message["type"], collector.event_count))

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == [("lifespan.startup.complete", 0), ("lifespan.shutdown.complete", 1)]


async def test_the_shutdown_clock_starts_when_the_server_asks_the_app_to_shut_down(
    collector: Collector, made: list[MoesifMiddleware]
) -> None:
    """The app's own shutdown handlers and the flush share SHUTDOWN_TIMEOUT: an orchestrator's grace
    period sized to it must cover both (the flush used to get a full SHUTDOWN_TIMEOUT of its own)."""
    import contextlib
    import time

    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await anyio.sleep(0.6)  # closing the app's own resources

    middleware = MoesifMiddleware(Starlette(lifespan=lifespan), settings_for(collector, SHUTDOWN_TIMEOUT=1.0))
    made.append(middleware)
    collector.hang()  # nothing is ever delivered: the flush waits for its whole budget
    middleware.pipeline.delivery.submit("/v1/events/batch", b"[]", count=1)
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    times: dict[str, float] = {}

    async def receive() -> dict[str, Any]:
        message = next(incoming)
        times[message["type"]] = time.monotonic()
        return message

    async def send(message: dict[str, Any]) -> None:
        times[message["type"]] = time.monotonic()

    try:
        await middleware({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    finally:
        collector.hang(False)
    took = times["lifespan.shutdown.complete"] - times["lifespan.shutdown"]
    assert 0.9 <= took <= 1.0 + 0.25, took
