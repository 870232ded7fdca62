"""The drop-in's own server span against OTel's FastAPI/ASGI instrumentation (issue 14, point 4):
excluded URLs, OTEL_SEMCONV_STABILITY_OPT_IN, HTTP server metrics, exceptions, mount prefixes.

Each comparison runs the same routes twice on real uvicorn: once under MoesifMiddleware, once under
FastAPIInstrumentor (without its receive/send spans), each with its own in-memory exporter/reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Body, FastAPI
from opentelemetry import metrics
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .semconv_mode import use_semconv_mode
from .servers import find_middleware, serve

MODES = (None, "http", "http/dup")
# what capture adds to a span beyond OTel's names (the Moesif event is built from them)
CAPTURE_EXTRAS = {
    "http.request.body.size",
    "http.response.body.size",
    "http.request.body.content",
    "http.response.body.content",
    "http.route",
    "user.id",
}


class Telemetry:
    """A tracer provider and a meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}

    def metrics(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Metric name → (unit, the attributes of each data point)."""
        data = self.reader.get_metrics_data()
        result: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name.startswith("moesif_otel."):
                        continue  # the pipeline's own counters (test_self_metrics.py), not OTel's
                    points = [dict(p.attributes or {}) for p in metric.data.data_points]
                    result[metric.name] = (metric.unit, points)
        return result

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def ours() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.close()


@pytest.fixture
def theirs() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.close()


def routes() -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @router.post("/items/{item_id}")
    async def update(item_id: int, payload: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return {"id": item_id, **payload}

    app.include_router(router, prefix="/api")
    sub = FastAPI()

    @sub.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, Any]:
        return {"thing": thing_id}

    app.mount("/sub", sub)

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def moesif_app(collector: Collector, telemetry: Telemetry | None, **kwargs: Any) -> FastAPI:
    app = routes()
    settings = {"APPLICATION_ID": "otel", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    if telemetry is not None:
        kwargs = {
            "tracer_provider": telemetry.tracer_provider,
            "meter_provider": telemetry.meter_provider,
            **kwargs,
        }
    app.add_middleware(MoesifMiddleware, settings=settings, **kwargs)
    return app


def otel_app(telemetry: Telemetry) -> FastAPI:
    app = routes()
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        exclude_spans=["receive", "send"],
    )
    return app


def exchange(base: str) -> None:
    headers = {"user-agent": "otel-test/1", "authorization": "Basic dXNlcjpwdw=="}
    assert httpx.get(f"{base}/api/items/7?full=1", headers=headers).status_code == 200
    assert httpx.post(f"{base}/api/items/7", json={"name": "x"}, headers=headers).status_code == 200
    # a method outside the standard set: OTel names it _OTHER, the Moesif event keeps it
    assert httpx.request("PURGE", f"{base}/api/items/7", headers=headers).status_code == 405


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """The event without what differs between any two requests (times, ids, the server's port)."""
    event = {k: v for k, v in event.items() if k not in ("transaction_id", "trace_id")}
    for part in ("request", "response"):
        section = dict(event[part])
        section.pop("time")
        section["headers"] = {
            k: v
            for k, v in section["headers"].items()
            if k not in ("host", "x-moesif-transaction-id", "date")
        }
        if "uri" in section:  # the server's port differs between runs
            section["uri"] = "/" + section["uri"].split("/", 3)[3]
        event[part] = section
    return event


# -- (a) excluded URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environment",
    [
        {"OTEL_PYTHON_EXCLUDED_URLS": "health,internal/.*"},
        # the FastAPI-specific variable wins over the generic one, as in FastAPIInstrumentor
        {"OTEL_PYTHON_EXCLUDED_URLS": "api/items", "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "/health$"},
    ],
)
def test_excluded_urls_get_no_span_no_event_no_metrics(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, collector: Collector, ours: Telemetry
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with serve(moesif_app(collector, ours)) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/api/items/1").status_code == 200
    [event] = collector.wait_for_events(1)
    assert event["request"]["uri"].endswith("/api/items/1")
    assert list(ours.spans()) == ["GET /api/items/{item_id}"]
    durations = ours.reader.get_metrics_data()
    counts = [
        p.count
        for rm in durations.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name in ("http.server.duration", "http.server.request.duration")
        for p in m.data.data_points
    ]
    assert counts == [1]


# -- (b) OTEL_SEMCONV_STABILITY_OPT_IN ------------------------------------------------------------------


def test_span_names_follow_the_opt_in_like_otel_and_events_stay_identical(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    events: dict[str | None, list[dict[str, Any]]] = {}
    for mode in MODES:
        use_semconv_mode(monkeypatch, mode)
        ours, theirs = Telemetry(), Telemetry()
        try:
            with serve(moesif_app(collector, ours)) as base:
                exchange(base)
            with serve(otel_app(theirs)) as base:
                exchange(base)
            for name in ("GET /api/items/{item_id}", "POST /api/items/{item_id}"):
                mine = set(ours.spans()[name].attributes or {})
                other = set(theirs.spans()[name].attributes or {})
                assert other - mine == set(), (mode, name)
                assert {k for k in mine - other if not k.startswith("moesif.")} <= CAPTURE_EXTRAS, (
                    mode,
                    name,
                )
                if mode is None:
                    assert "http.method" in mine and "http.request.method" not in mine
                    assert "http.status_code" in mine and "http.response.status_code" not in mine
                elif mode == "http":
                    assert "http.method" not in mine and "http.status_code" not in mine
        finally:
            ours.close()
            theirs.close()
        arrived = [comparable(e) for e in collector.wait_for_events(3)]
        events[mode] = sorted(arrived, key=lambda e: ["GET", "POST", "PURGE"].index(e["request"]["verb"]))
        collector.reset()
    assert events[None] == events["http"] == events["http/dup"]
    assert [e["request"]["verb"] for e in events["http"]] == ["GET", "POST", "PURGE"]
    assert [e["response"]["status"] for e in events["http"]] == [200, 200, 405]
    assert events["http"][0]["request"]["uri"] == "/api/items/7?full=1"
    assert events["http"][1]["request"]["body"] == {"name": "x"} and events["http"][0]["user_id"] == "user"


# -- (c) HTTP server metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_http_server_metrics_like_otel_on_the_given_meter_provider(
    mode: str | None,
    monkeypatch: pytest.MonkeyPatch,
    collector: Collector,
    ours: Telemetry,
    theirs: Telemetry,
) -> None:
    use_semconv_mode(monkeypatch, mode)
    with serve(moesif_app(collector, ours)) as base:
        exchange(base)
    with serve(otel_app(theirs)) as base:
        exchange(base)
    mine, other = ours.metrics(), theirs.metrics()
    assert {name: unit for name, (unit, _) in mine.items()} == {
        name: unit for name, (unit, _) in other.items()
    }
    for name, (_, points) in mine.items():
        assert [sorted(p) for p in points] == [sorted(p) for p in other[name][1]], name
    expected = {None: "http.server.duration", "http": "http.server.request.duration"}.get(mode)
    assert expected is None or expected in mine
    if mode is not None:
        _, points = mine["http.server.request.duration"]
        assert {p["http.route"] for p in points} == {"/api/items/{item_id}"}
        assert {(p["http.request.method"], p["http.response.status_code"]) for p in points} == {
            ("GET", 200),
            ("POST", 200),
            ("_OTHER", 405),
        }


def test_no_meter_provider_no_instruments_and_a_global_sdk_one_is_used(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    telemetry = Telemetry()
    try:
        app = moesif_app(collector, None, tracer_provider=telemetry.tracer_provider)
        with serve(app) as base:
            assert httpx.get(f"{base}/api/items/1").status_code == 200
            assert find_middleware(app, MoesifMiddleware)._traced.metrics is None
        # a real provider set globally is found without being passed
        monkeypatch.setattr(metrics, "get_meter_provider", lambda: telemetry.meter_provider)
        app = moesif_app(collector, None, tracer_provider=telemetry.tracer_provider)
        with serve(app) as base:
            assert httpx.get(f"{base}/api/items/1").status_code == 200
        assert "http.server.active_requests" in telemetry.metrics()
    finally:
        telemetry.close()


# -- (d) exceptions, (e) mount prefixes ---------------------------------------------------------------


def test_exception_recorded_as_a_span_event_like_fastapi_instrumentor(
    monkeypatch: pytest.MonkeyPatch, collector: Collector, ours: Telemetry, theirs: Telemetry
) -> None:
    use_semconv_mode(monkeypatch, "http")
    with serve(moesif_app(collector, ours)) as base:
        assert httpx.get(f"{base}/boom").status_code == 500
    with serve(otel_app(theirs)) as base:
        assert httpx.get(f"{base}/boom").status_code == 500
    mine, other = ours.spans()["GET /boom"], theirs.spans()["GET /boom"]
    assert [e.name for e in mine.events] == [e.name for e in other.events] == ["exception"]
    assert mine.events[0].attributes["exception.type"] == "RuntimeError"
    assert mine.events[0].attributes["exception.message"] == "boom"
    assert set(mine.events[0].attributes) == set(other.events[0].attributes)
    assert mine.status.status_code == StatusCode.ERROR and mine.status.description == "RuntimeError: boom"
    [event] = collector.wait_for_events(1)
    assert event["response"]["status"] == 500


def test_span_name_and_route_include_router_and_mount_prefixes(
    monkeypatch: pytest.MonkeyPatch, collector: Collector, ours: Telemetry
) -> None:
    use_semconv_mode(monkeypatch, "http")
    with serve(moesif_app(collector, ours)) as base:
        assert httpx.get(f"{base}/api/items/7").status_code == 200
        assert httpx.get(f"{base}/sub/things/3").status_code == 200
    spans = ours.spans()
    assert set(spans) == {"GET /api/items/{item_id}", "GET /sub/things/{thing_id}"}
    assert spans["GET /api/items/{item_id}"].attributes["http.route"] == "/api/items/{item_id}"
    assert spans["GET /sub/things/{thing_id}"].attributes["http.route"] == "/sub/things/{thing_id}"
    _, points = ours.metrics()["http.server.request.duration"]
    assert {p["http.route"] for p in points} == {"/api/items/{item_id}", "/sub/things/{thing_id}"}


class _Broken:
    """An instrument whose every measurement raises."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("meter down")

    record = add


class _BrokenMeter(metrics.NoOpMeter):
    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _Broken()

    def create_up_down_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Broken()


class _BrokenMeterProvider(metrics.MeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        return _BrokenMeter(name)


def test_a_failing_meter_provider_changes_no_answer_and_is_logged_once(
    collector: Collector, ours: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    app = moesif_app(collector, ours, meter_provider=_BrokenMeterProvider())
    with caplog.at_level("WARNING", logger="moesif_otel"), serve(app) as base:
        for _ in range(3):
            assert httpx.get(f"{base}/api/items/1").json() == {"id": 1}
        assert httpx.get(f"{base}/boom").status_code == 500
    assert len(collector.wait_for_events(4)) == 4
    failures = [r for r in caplog.records if "HTTP server metrics failed" in r.getMessage()]
    assert len(failures) == 1 and "meter down" in failures[0].getMessage()
