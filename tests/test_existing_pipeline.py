"""An application's own OTel pipeline with the Moesif exporter added beside its other exporters."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from moesif_otel import MoesifMiddleware, MoesifSpanExporter, MoesifSpanProcessor
from moesif_otel.collector import Collector

from .servers import serve


def plain_app(provider: TracerProvider, moesif_settings: dict[str, Any] | None = None) -> FastAPI:
    app = FastAPI()
    tracer = provider.get_tracer("tests.db")
    if moesif_settings is not None:
        app.add_middleware(MoesifMiddleware, settings=moesif_settings, tracer_provider=provider)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        with tracer.start_as_current_span("db query", attributes={"db.system.name": "sqlite"}):
            pass
        return {"id": item_id}

    @app.get("/text")
    async def text() -> PlainTextResponse:
        return PlainTextResponse("hello")

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app


def exercise(base: str) -> None:
    # A connection per request: on a kept-alive one, uvicorn may start the next request inside the
    # previous request's context while capture holds its span open (see the report), which would
    # make the next server span an INTERNAL child of the previous one.
    assert httpx.post(f"{base}/echo", content=b'{"a":1}').json() == {"a": 1}
    assert httpx.get(f"{base}/items/3").json() == {"id": 3}
    assert httpx.get(f"{base}/text").text == "hello"


def shape(spans: tuple[ReadableSpan, ...]) -> list[tuple[str, SpanKind, tuple[str, ...]]]:
    """What a user's exporter sees of each span, minus values that differ per run (ports, times)."""
    return sorted((s.name, s.kind, tuple(sorted(s.attributes or {}))) for s in spans)


@pytest.fixture
def traced_http_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Emulates an http.client instrumentation (as urllib/urllib3 ones do): every request is a
    CLIENT span unless instrumentation is suppressed. Yields the URLs it traced."""
    traced: list[str] = []
    original = http.client.HTTPConnection.request

    def request(self: http.client.HTTPConnection, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if is_http_instrumentation_enabled():
            traced.append(f"{method} {self.host}:{self.port}{url}")
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "request", request)
    yield traced


def test_moesif_beside_other_exporters(collector: Collector, traced_http_client: list[str]) -> None:
    # the same app and requests without Moesif: what the user's exporter normally receives
    baseline_memory = InMemorySpanExporter()
    baseline = TracerProvider()
    baseline.add_span_processor(SimpleSpanProcessor(baseline_memory))
    with serve(plain_app(baseline)) as base:
        exercise(base)
    baseline.shutdown()
    expected = shape(baseline_memory.get_finished_spans())
    assert [name for name, kind, _ in expected if kind == SpanKind.SERVER] == [
        "GET /items/{item_id}",
        "GET /text",
        "POST /echo",
    ]
    assert any(name == "db query" for name, _, _ in expected)

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    exporter = MoesifSpanExporter(application_id="pipeline-app-id", base_uri=collector.url)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20))
    try:
        with serve(plain_app(provider)) as base:
            exercise(base)
            events = collector.wait_for_events(3)
        assert provider.force_flush(5000) and exporter.force_flush(5000)
        # the user's exporter: the same spans, with the same attributes, as without Moesif
        assert shape(memory.get_finished_spans()) == expected
    finally:
        provider.shutdown()

    # one event per HTTP request; the internal spans ("db query", send/receive) are not events
    assert collector.event_count == 3
    summary = sorted((e["request"]["verb"], e["request"]["uri"], e["response"]["status"]) for e in events)
    assert summary == [
        ("GET", f"{base}/items/3", 200),
        ("GET", f"{base}/text", 200),
        ("POST", f"{base}/echo", 200),
    ]
    assert all(e["direction"] == "Incoming" for e in events)
    assert collector.rejected == []
    # the exporter's uploads went through http.client, yet no instrumentation saw them
    assert collector.batches and traced_http_client == []
    # while the same call from the application is seen (the emulation works)
    host, port = collector.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/v1/config")
        conn.getresponse().read()
    finally:
        conn.close()
    assert traced_http_client == [f"GET {host}:{port}/v1/config"]


def test_moesif_middleware_on_an_instrumented_app_one_span_and_one_event(collector: Collector) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    settings = {"APPLICATION_ID": "mw-app-id", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    try:
        with serve(plain_app(provider, settings)) as base:
            exercise(base)
            events = collector.wait_for_events(3)
        servers = [s for s in memory.get_finished_spans() if s.kind == SpanKind.SERVER]
        assert sorted(s.name for s in servers) == ["GET /items/{item_id}", "GET /text", "POST /echo"]
        assert all(s.instrumentation_scope.name == "opentelemetry.instrumentation.fastapi" for s in servers)
    finally:
        provider.shutdown()
    assert collector.event_count == 3
    echo = next(e for e in events if e["request"]["uri"].endswith("/echo"))
    # captured onto FastAPIInstrumentor's span: bodies and the transaction id are there
    assert echo["request"]["body"] == {"a": 1} and echo["response"]["body"] == {"a": 1}
    assert echo["transaction_id"] == echo["response"]["headers"]["x-moesif-transaction-id"]


def test_moesif_middleware_on_a_provider_that_already_exports_to_moesif(collector: Collector) -> None:
    provider = TracerProvider()
    exporter = MoesifSpanExporter(application_id="pipeline-app-id", base_uri=collector.url)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20))
    settings = {"APPLICATION_ID": "pipeline-app-id", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    try:
        with serve(plain_app(provider, settings)) as base:
            exercise(base)
            collector.wait_for_events(3)
        provider.force_flush(5000)
        exporter.force_flush(5000)
    finally:
        provider.shutdown()
    assert collector.event_count == 3


def test_spans_of_any_layout_become_events(collector: Collector) -> None:
    """The exporter reads the SDK's own span attributes directly; a ReadableSpan built by other
    code (a plain dict of attributes, as processors and tests build them) must work as well."""
    context = SpanContext(trace_id=0x1F, span_id=0x2A, is_remote=False)
    built = ReadableSpan(
        name="GET /built",
        context=context,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "url.scheme": "https",
            "server.address": "api.test",
            "url.path": "/built",
            "http.response.status_code": 202,
        },
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_000_005_000_000,
    )
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests").start_as_current_span("GET", kind=SpanKind.SERVER) as span:
        span.set_attributes({"http.request.method": "GET", "url.path": "/sdk"})
        span.set_attribute("http.response.status_code", 200)
    [from_sdk] = memory.get_finished_spans()

    exporter = MoesifSpanExporter({"APPLICATION_ID": "layouts", "BASE_URI": collector.url})
    try:
        exporter.export([built, from_sdk])
        assert exporter.force_flush(5_000)
    finally:
        exporter.shutdown()
    events = {e["request"]["uri"]: e for e in collector.wait_for_events(2)}
    assert events["https://api.test/built"]["response"]["status"] == 202
    assert events["https://api.test/built"]["trace_id"] == f"{0x1F:032x}"
    assert events["http://localhost/sdk"]["response"]["status"] == 200


@pytest.mark.parametrize("processor_type", ["batch", "moesif"])
def test_a_plain_client_span_is_not_an_event_behind_either_processor(
    collector: Collector, processor_type: str
) -> None:
    """A CLIENT span that outgoing capture did not prepare (another instrumentation's call) is not
    sent, whichever processor is in front of the exporter: the same filter applies to both."""
    settings = {
        "APPLICATION_ID": "plain-client",
        "BASE_URI": collector.url,
        "CAPTURE_OUTGOING_REQUESTS": True,
    }
    exporter = MoesifSpanExporter(settings)
    processor = (
        BatchSpanProcessor(exporter, schedule_delay_millis=20)
        if processor_type == "batch"
        else MoesifSpanProcessor(exporter, schedule_delay=0.02)
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests.client")
    try:
        attributes = {"http.request.method": "GET", "url.full": "https://upstream.example/x"}
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attributes) as span:
            span.set_attribute("http.response.status_code", 200)
        # a plain server span in the same batch shows that the exporter did export
        server = {
            "http.request.method": "GET",
            "url.full": "http://app.example/in",
            "http.response.status_code": 201,
        }
        with tracer.start_as_current_span("GET /in", kind=SpanKind.SERVER, attributes=server):
            pass
        [event] = collector.wait_for_events(1)
        assert provider.force_flush(5000) and exporter.force_flush(5000)
    finally:
        provider.shutdown()
    assert (event["direction"], event["request"]["uri"]) == ("Incoming", "http://app.example/in")
    assert collector.event_count == 1
