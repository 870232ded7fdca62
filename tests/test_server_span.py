"""The SERVER span MoesifMiddleware opens: spans are the subject, checked with InMemorySpanExporter."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, TraceFlags

from moesif_otel import MoesifMiddleware
from moesif_otel import attributes as A
from moesif_otel.collector import Collector

from .semconv_mode import use_semconv_mode
from .servers import serve


@pytest.fixture(autouse=True)
def stable_semconv(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the stable names (OTEL_SEMCONV_STABILITY_OPT_IN=http); the other modes
    are in test_opentelemetry_setup.py."""
    use_semconv_mode(monkeypatch, "http")


def make(collector: Collector, provider: TracerProvider, released: threading.Event) -> FastAPI:
    app = FastAPI()
    settings = {"APPLICATION_ID": "spans", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    app.add_middleware(MoesifMiddleware, settings=settings, tracer_provider=provider)

    @app.get("/items/{item_id}")
    async def item(item_id: int, tasks: BackgroundTasks) -> dict[str, Any]:
        tasks.add_task(asyncio.to_thread, released.wait, 5)  # runs after the response is sent
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def finished_spans(exporter: InMemorySpanExporter, count: int, timeout: float = 5.0) -> tuple[Any, ...]:
    """The exporter's spans once there are ``count`` of them (the client may see the response first)."""
    deadline = time.monotonic() + timeout
    while len(spans := exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return tuple(spans)


def test_one_server_span_per_request_with_http_semantic_conventions(
    collector: Collector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    released = threading.Event()
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    with serve(make(collector, provider, released)) as base:
        headers = {"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-01", "user-agent": "span-test/1"}
        assert httpx.get(f"{base}/items/7?full=1", headers=headers).status_code == 200
        # the span ends with the response (a moment after the client has it), while the
        # background task still waits: well before it gives up waiting (5 s)
        [span] = finished_spans(exporter, 1, timeout=2)
        assert not released.is_set()
        released.set()
        port = int(base.rsplit(":", 1)[1])
    assert span.kind == SpanKind.SERVER
    assert span.name == "GET /items/{item_id}"
    assert span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7 and span.parent.is_remote
    attrs = dict(span.attributes)
    for key, value in {
        A.HTTP_REQUEST_METHOD: "GET",
        A.URL_SCHEME: "http",
        A.URL_PATH: "/items/7",
        A.URL_QUERY: "full=1",
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: port,
        A.CLIENT_ADDRESS: "127.0.0.1",
        "user_agent.original": "span-test/1",
        "network.protocol.version": "1.1",
        A.HTTP_RESPONSE_STATUS_CODE: 200,
        A.HTTP_ROUTE: "/items/{item_id}",
    }.items():
        assert attrs[key] == value, key
    assert span.status.status_code == StatusCode.UNSET
    assert collector.wait_for_events(1)[0]["trace_id"] == f"{trace_id:032x}"


def test_unhandled_exception_marks_the_span_as_error(
    collector: Collector, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    with serve(make(collector, provider, threading.Event())) as base:
        assert httpx.get(f"{base}/boom").status_code == 500
    [span] = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.name == "GET /boom"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes[A.HTTP_RESPONSE_STATUS_CODE] == 500


def where_app(collector: Collector, seen: list[Any]) -> FastAPI:
    """An app without any tracing of its own whose endpoint notes the current span's context."""
    app = FastAPI()
    settings = {"APPLICATION_ID": "ids", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    app.add_middleware(MoesifMiddleware, settings=settings)

    @app.get("/where")
    async def where() -> dict[str, Any]:
        span = trace.get_current_span()
        seen.append((span.get_span_context(), span.is_recording()))
        return {}

    return app


def test_without_the_apps_tracing_a_request_gets_a_span_context_and_records_no_span(
    collector: Collector,
) -> None:
    """No TracerProvider anywhere (the moesifasgi user's setup): the pipeline's private provider
    has no reader but Moesif, so no span is recorded; the request still gets the span context that
    provider would give its span — with its default sampler, the incoming trace continued (id,
    flags, state), else a new sampled trace — and each event carries its trace id."""
    seen: list[Any] = []
    app = where_app(collector, seen)
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    unsampled = {"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-00", "tracestate": "k=v"}
    with serve(app) as base:
        assert httpx.get(f"{base}/where").status_code == 200
        assert httpx.get(f"{base}/where", headers=unsampled).status_code == 200
        events = collector.wait_for_events(2)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no app tracing here
    (new, new_recording), (continued, continued_recording) = seen
    assert not new_recording and not continued_recording
    assert new.is_valid and not new.is_remote
    assert new.trace_flags == TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID  # as the SDK flags it
    assert continued.trace_id == trace_id and continued.trace_flags == TraceFlags.DEFAULT
    assert continued.trace_state.get("k") == "v" and continued.span_id != 0x00F067AA0BA902B7
    assert {e["trace_id"] for e in events} == {f"{new.trace_id:032x}", f"{trace_id:032x}"}


def test_without_the_apps_tracing_the_private_providers_sampler_sets_the_flags(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_TRACES_SAMPLER configures the private provider; the span context follows its decision
    (what an outgoing call's traceparent says), and every call still reaches Moesif."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    seen: list[Any] = []
    with serve(where_app(collector, seen)) as base:
        assert httpx.get(f"{base}/where").status_code == 200
        [event] = collector.wait_for_events(1)
    [(context, recording)] = seen
    assert context.is_valid and not recording
    assert context.trace_flags == TraceFlags.RANDOM_TRACE_ID  # not sampled
    assert event["trace_id"] == f"{context.trace_id:032x}" and event["weight"] == 1
