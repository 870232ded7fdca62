"""Every private detail moesif_otel relies on (moesif_otel/internals.py), pinned to the installed versions.

The default env runs these on the newest versions pyproject allows; ``tox -e oldest`` on the
oldest (tests/oldest-constraints.txt). A failure here names the library change to adapt to.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fastapi
import httpx
import pytest
import requests
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from moesif_otel import internals
from moesif_otel.event import span_attributes
from moesif_otel.http_semconv import route_template

from .semconv_mode import use_semconv_mode
from .servers import serve

CHUNKS = [b"first chunk,", b"second chunk,", b"last"]
BODY = b"".join(CHUNKS)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A real server answering /body with BODY in three chunks."""

    async def body(request: Any) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    with serve(Starlette(routes=[Route("/body", body)]), lifespan="off") as base:
        yield base


# -- opentelemetry-sdk ------------------------------------------------------------------------------


def test_span_attribute_dict_is_the_finished_spans_attributes(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    span = provider.get_tracer("t").start_span("s", attributes={"http.request.method": "GET", "n": 1})
    span.set_attribute("later", "yes")
    span.end()
    [finished] = exporter.get_finished_spans()
    inner = internals.span_attribute_dict(finished)
    assert type(inner) is dict
    assert inner == dict(finished.attributes or {}) == {"http.request.method": "GET", "n": 1, "later": "yes"}
    assert span_attributes(finished) is inner  # event.py takes the fast path, no copy


def test_sdk_keeps_binary_attribute_values(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """Public, but the reason for the opentelemetry floor (1.45): older SDKs drop bytes that are not
    UTF-8 (gzip, images), and with them every such body capture records."""
    provider, exporter = spans
    body = gzip.compress(b'{"a": 1}')
    span = provider.get_tracer("t").start_span("s")
    span.set_attribute("http.response.body.content", body)
    span.end()
    [finished] = exporter.get_finished_spans()
    assert span_attributes(finished)["http.response.body.content"] == body


def test_span_processors_are_the_providers_processors_in_order() -> None:
    provider = TracerProvider()
    first, second = SimpleSpanProcessor(InMemorySpanExporter()), SimpleSpanProcessor(InMemorySpanExporter())
    provider.add_span_processor(first)
    provider.add_span_processor(second)
    assert internals.span_processors(provider) == (first, second)
    assert internals.span_processors(trace.NoOpTracerProvider()) == ()
    provider.shutdown()


def test_replaced_span_end_is_what_use_span_calls(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    span = provider.get_tracer("t").start_span("held")
    real_end = span.end
    calls: list[Any] = []
    internals.replace_span_end(span, lambda end_time=None: calls.append(end_time))
    with trace.use_span(span, end_on_exit=True):
        pass
    assert calls == [None]
    assert span.is_recording() and exporter.get_finished_spans() == ()
    real_end()
    assert [s.name for s in exporter.get_finished_spans()] == ["held"]


# -- httpx and its instrumentation ------------------------------------------------------------------


class _Tee:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[bytes] = []
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.seen.append(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.seen.append(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


def test_httpx_transport_stream_can_be_replaced_by_a_tee(upstream: str) -> None:
    """The transport's response (what the instrumentation's hook sees) before the client wraps it."""
    with httpx.HTTPTransport() as transport:
        response = transport.handle_request(httpx.Request("GET", f"{upstream}/body"))
        inner = internals.httpx_transport_stream(response.stream)
        assert inner is not None
        tee = _Tee(inner)
        internals.set_httpx_transport_stream(response.stream, tee)
        assert response.read() == BODY
        response.close()
    assert b"".join(tee.seen) == BODY
    assert tee.closed


def test_httpx_async_transport_stream_can_be_replaced_by_a_tee(upstream: str) -> None:
    async def run() -> _Tee:
        async with httpx.AsyncHTTPTransport() as transport:
            response = await transport.handle_async_request(httpx.Request("GET", f"{upstream}/body"))
            inner = internals.httpx_transport_stream(response.stream)
            assert inner is not None
            tee = _Tee(inner)
            internals.set_httpx_transport_stream(response.stream, tee)
            assert await response.aread() == BODY
            await response.aclose()
        return tee

    tee = asyncio.run(run())
    assert b"".join(tee.seen) == BODY
    assert tee.closed


def test_replaced_end_of_a_non_recording_span_and_its_restore() -> None:
    """outgoing_requests replaces the end of sampled-out CLIENT spans too, and undoes it once called."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    span = TracerProvider(sampler=ALWAYS_OFF).get_tracer("t").start_span("dropped")
    assert not span.is_recording()
    calls: list[Any] = []
    internals.replace_span_end(span, lambda end_time=None: calls.append(end_time))
    with trace.use_span(span, end_on_exit=True):
        pass
    assert calls == [None]
    internals.restore_span_end(span)
    assert "end" not in vars(span) and span.end.__func__ is type(span).end  # type: ignore[attr-defined]


def test_httpx_instrumentation_hook_sees_the_transport_stream_and_ends_through_span_end(
    upstream: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """What outgoing_httpx relies on: the response hook runs before the body is read, on httpx's own
    stream, and the instrumentation ends the span by calling ``span.end`` on the instance."""
    provider, exporter = spans
    held: dict[str, Any] = {}

    def response_hook(span: Any, request: Any, response: Any) -> None:
        held["inner"] = internals.httpx_transport_stream(response.stream)
        held["real_end"] = span.end
        internals.replace_span_end(span, lambda end_time=None: held.setdefault("ended_by_instrumentation", 1))

    with httpx.Client() as client:
        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=provider, response_hook=response_hook
        )
        try:
            assert client.get(f"{upstream}/body").content == BODY
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)
    assert held["inner"] is not None
    assert held.get("ended_by_instrumentation") == 1
    assert exporter.get_finished_spans() == ()  # held back
    held["real_end"]()
    [span] = exporter.get_finished_spans()
    assert span.kind == trace.SpanKind.CLIENT


# -- requests ---------------------------------------------------------------------------------------


def test_requests_read_content_is_the_body_only_once_read(upstream: str) -> None:
    assert internals.requests_read_content(requests.get(f"{upstream}/body", timeout=5)) == BODY
    with requests.get(f"{upstream}/body", stream=True, timeout=5) as streamed:
        assert not isinstance(internals.requests_read_content(streamed), bytes)  # not read for the app
        assert streamed.content == BODY
        assert internals.requests_read_content(streamed) == BODY


# -- opentelemetry-instrumentation: HTTP semantic conventions -------------------------------------------


@pytest.mark.parametrize(
    ("opt_in", "mode", "old", "new"),
    [
        (None, "DEFAULT", True, False),
        ("http", "HTTP", False, True),
        ("http/dup", "HTTP_DUP", True, True),
    ],
)
def test_http_stability_mode_reads_the_opt_in(
    monkeypatch: pytest.MonkeyPatch, opt_in: str | None, mode: str, old: bool, new: bool
) -> None:
    use_semconv_mode(monkeypatch, opt_in)
    found = internals.http_stability_mode()
    assert found is getattr(internals.StabilityMode, mode)
    assert (internals.report_old(found), internals.report_new(found)) == (old, new)
    assert internals.schema_url(found).startswith("https://opentelemetry.io/schemas/")


def test_http_server_metric_attribute_sets_and_instruments() -> None:
    assert {"http.method", "http.status_code"} <= set(internals.server_duration_attrs_old)
    assert {"http.request.method", "http.response.status_code", "http.route"} <= set(
        internals.server_duration_attrs_new
    )
    assert {"http.method", "http.scheme"} <= set(internals.server_active_requests_count_attrs_old)
    assert {"http.request.method", "url.scheme"} <= set(internals.server_active_requests_count_attrs_new)
    assert list(internals.HTTP_DURATION_HISTOGRAM_BUCKETS_NEW)[:2] == [0.005, 0.01]
    noop = NoOpMeter("t")  # any meter will do: the factories name and describe the instruments
    assert internals.create_http_server_active_requests(noop) is not None
    assert internals.create_http_server_request_body_size(noop) is not None
    assert internals.create_http_server_response_body_size(noop) is not None


# -- FastAPI ----------------------------------------------------------------------------------------


def _scope_after(app: Any, path: str) -> dict[str, Any]:
    """Call ``app`` in-process; the scope as the app left it (Starlette adds route keys in place)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(app(scope, receive, send))
    return scope


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def test_fastapi_route_template_of_an_included_router() -> None:
    router = APIRouter(prefix="/api")

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app = FastAPI()
    app.include_router(router)
    scope = _scope_after(app, "/api/items/7")
    route = scope["route"]
    template = internals.fastapi_route_template(scope, route)
    if _version(fastapi.__version__) >= (0, 137):  # the prefix lives in the effective route context
        assert template == "/api/items/{item_id}"
    else:  # include_router copied the prefix into the route itself
        assert template is None
    assert internals.fastapi_route_template(scope, object()) is None
    assert route_template(scope) == "/api/items/{item_id}"


# -- opentelemetry-instrument (the distro) ------------------------------------------------------------


def test_entry_points_find_the_moesif_distro_and_exporter() -> None:
    [distro] = [ep for ep in internals.entry_points(group="opentelemetry_distro") if ep.name == "moesif"]
    assert isinstance(distro, internals.EntryPoint)
    assert distro.value == "moesif_otel.distro:MoesifDistro"
    exporters = internals.entry_points(group="opentelemetry_traces_exporter")
    assert "moesif" in {ep.name for ep in exporters}


def test_configure_sdk_sets_up_the_sdk_from_the_environment() -> None:
    script = (
        "from opentelemetry import trace\n"
        "from moesif_otel.internals import configure_sdk\n"
        "configure_sdk('0')\n"
        "print(type(trace.get_tracer_provider()).__module__)\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    env.update(OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "opentelemetry.sdk.trace"


def test_fastapi_instrumentation_builds_its_middleware_from_the_module_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moesif_otel.distro replaces this global to put capture inside OTel's server span."""
    from opentelemetry.instrumentation import fastapi as module
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    assert module.OpenTelemetryMiddleware is OpenTelemetryMiddleware
    built: list[Any] = []

    def factory(app: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(app)
        return OpenTelemetryMiddleware(app, *args, **kwargs)

    monkeypatch.setattr(module, "OpenTelemetryMiddleware", factory)
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {}

    module.FastAPIInstrumentor.instrument_app(app, tracer_provider=TracerProvider())
    try:
        _scope_after(app, "/")
    finally:
        module.FastAPIInstrumentor.uninstrument_app(app)
    assert len(built) == 1
