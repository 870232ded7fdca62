"""Self-telemetry (issue 14, point 5): the counters of ``stats()`` as ``moesif_otel.*`` metrics on
the app's MeterProvider, read by an InMemoryMetricReader after real traffic on uvicorn and the
local collector, faults included."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from moesif_otel import MoesifMiddleware, MoesifSpanExporter, self_metrics, server_metrics
from moesif_otel.collector import Collector
from moesif_otel.pipeline import Pipeline
from moesif_otel.processor import MoesifSpanProcessor
from moesif_otel.settings import Settings

from .servers import find_middleware, serve
from .test_autoinstrument import instrumented, moesif_env

Points = dict[str, dict[tuple[tuple[str, Any], ...], tuple[str, int]]]


class Metrics:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> Points:
        """Metric name → {sorted attributes: (unit, value)}, for the moesif_otel.* metrics."""
        data = self.reader.get_metrics_data()
        result: Points = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name.startswith("moesif_otel."):
                        result[metric.name] = {
                            tuple(sorted((p.attributes or {}).items())): (metric.unit, p.value)
                            for p in metric.data.data_points
                        }
        return result


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees its own once-per-cause warnings and leaves none seen for the next."""
    self_metrics._log.clear()
    server_metrics._log.clear()
    yield
    self_metrics._log.clear()
    server_metrics._log.clear()


@pytest.fixture
def meter() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


def app_with(collector: Collector, **kwargs: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    settings = {"APPLICATION_ID": "self", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.02}
    app.add_middleware(MoesifMiddleware, settings=settings, tracer_provider=TracerProvider(), **kwargs)
    return app


def expected(stats: dict[str, int], pipeline: int = 0) -> Points:
    """What the metrics must say for one pipeline's stats()."""
    p = (("moesif_otel.pipeline", pipeline),)
    events = {(*p, ("outcome", "sent")): ("{event}", stats["sent"])}
    events[(*p, ("outcome", "sampled_out"))] = ("{event}", stats["sampled_out_outgoing"])
    for key in stats:
        if key.startswith("dropped_"):
            attributes = tuple(sorted((*p, ("outcome", "dropped"), ("error.type", key[8:]))))
            events[attributes] = ("{event}", stats[key])
    return {
        "moesif_otel.captured": {p: ("{event}", stats["captured"])},
        "moesif_otel.events": events,
        "moesif_otel.retries": {p: ("{event}", stats["retried"])},
        "moesif_otel.batches": {p: ("{batch}", stats["batches_sent"])},
        "moesif_otel.queue.size": {p: ("{event}", stats["pending"])},
        "moesif_otel.queue.bytes": {p: ("By", stats["queue_bytes"])},
    }


def wait_until_settled(middleware: MoesifMiddleware, captured: int, timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        stats = middleware.stats()
        if stats["captured"] == captured and stats["pending"] == 0:
            return stats
        assert time.monotonic() < deadline, stats
        middleware.flush(0.2)


def test_metrics_match_stats_after_real_traffic_with_drops_and_retries(
    collector: Collector, meter: Metrics
) -> None:
    app = app_with(collector, meter_provider=meter.provider)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        for i in range(3):
            assert client.get(f"/items/{i}").status_code == 200
        middleware = find_middleware(app, MoesifMiddleware)
        wait_until_settled(middleware, 3)
        collector.fail_next(1, status=400)  # the next batch is refused: dropped_rejected
        assert client.get("/items/3").status_code == 200
        wait_until_settled(middleware, 4)
        collector.fail_next(1, status=503, retry_after="0")  # retried, then sent
        assert client.get("/items/4").status_code == 200
        stats = wait_until_settled(middleware, 5)
        assert (stats["sent"], stats["dropped_rejected"], stats["retried"]) == (4, 1, 1)
        assert meter.collect() == expected(stats)
        # the counters keep counting; each collection reads stats() afresh
        assert client.get("/items/5").status_code == 200
        stats = wait_until_settled(middleware, 6)
        assert stats["sent"] == 5
        assert meter.collect() == expected(stats)
    assert collector.event_count == 5


def test_pending_and_queue_bytes_while_the_collector_hangs(collector: Collector, meter: Metrics) -> None:
    app = app_with(collector, meter_provider=meter.provider)
    collector.set_delay(2.0)  # uploads in flight while we collect
    with serve(app) as base, httpx.Client(base_url=base) as client:
        for i in range(3):
            assert client.get(f"/items/{i}").status_code == 200
        middleware = find_middleware(app, MoesifMiddleware)
        deadline = time.monotonic() + 5
        while (stats := middleware.stats())["captured"] < 3:
            assert time.monotonic() < deadline
            middleware.flush(0.05)
        points = meter.collect()
        # one snapshot per collection: captured == sum of outcomes + pending within the same read
        captured = points["moesif_otel.captured"][(("moesif_otel.pipeline", 0),)][1]
        ended = sum(value for _, value in points["moesif_otel.events"].values())
        pending = points["moesif_otel.queue.size"][(("moesif_otel.pipeline", 0),)][1]
        assert captured == 3 and ended + pending == 3 and pending > 0
        collector.set_delay(0)
        stats = wait_until_settled(middleware, 3)
        assert meter.collect() == expected(stats)


def test_no_meter_provider_no_instruments(collector: Collector, meter: Metrics) -> None:
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)  # no SDK provider set globally
    before = len(self_metrics._registries)
    app = app_with(collector)
    with serve(app) as base:
        assert httpx.get(f"{base}/items/1").status_code == 200
        wait_until_settled(find_middleware(app, MoesifMiddleware), 1)
    assert len(self_metrics._registries) == before
    assert meter.collect() == {}  # a provider that was not given gets nothing either
    assert self_metrics.register(find_middleware(app, MoesifMiddleware)) is None


def test_a_global_sdk_meter_provider_is_used(
    collector: Collector, meter: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meter.provider)
    app = app_with(collector)
    with serve(app) as base:
        assert httpx.get(f"{base}/items/1").status_code == 200
        stats = wait_until_settled(find_middleware(app, MoesifMiddleware), 1)
    assert meter.collect() == expected(stats)


def test_several_pipelines_one_series_each_and_a_shared_exporter_once(
    collector: Collector, meter: Metrics
) -> None:
    settings = Settings.from_mapping({"APPLICATION_ID": "a", "BASE_URI": collector.url})
    first = Pipeline.build(settings, TracerProvider(), meter.provider)
    second = Pipeline.build(settings, TracerProvider(), meter.provider)
    # a provider that already exports to Moesif: the pipeline joins its exporter, counted once
    provider = TracerProvider()
    exporter = MoesifSpanExporter(settings)
    provider.add_span_processor(MoesifSpanProcessor.for_exporter(exporter))
    assert self_metrics.register(exporter, meter.provider) == {"moesif_otel.pipeline": 2}
    joined = Pipeline.build(settings, provider, meter.provider)
    assert joined.exporter is exporter
    try:
        captured = meter.collect()["moesif_otel.captured"]
        assert sorted(captured) == [(("moesif_otel.pipeline", i),) for i in range(3)]
        assert self_metrics.register(first, meter.provider) == {"moesif_otel.pipeline": 0}
    finally:
        for pipeline in (first, second, joined):
            pipeline.shutdown()


class _RefusingMeterProvider(metrics.MeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        raise RuntimeError("meter down")


def test_a_failing_meter_provider_changes_nothing_and_is_logged_once(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _RefusingMeterProvider()
    with caplog.at_level("WARNING", logger="moesif_otel"):
        apps = [app_with(collector, meter_provider=provider) for _ in range(2)]
        for app in apps:
            with serve(app) as base:
                assert httpx.get(f"{base}/items/1").json() == {"id": 1}
    assert len(collector.wait_for_events(2)) == 2
    failures = [r for r in caplog.records if "registering its metrics" in r.getMessage()]
    assert len(failures) == 1 and "meter down" in failures[0].getMessage()


def test_a_failing_stats_read_leaves_the_collection_and_is_logged_once(
    collector: Collector, meter: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_mapping({"APPLICATION_ID": "a", "BASE_URI": collector.url})
    good = Pipeline.build(settings, TracerProvider(), meter.provider)

    class Broken:
        def stats(self) -> dict[str, int]:
            raise RuntimeError("stats down")

    broken = Broken()
    self_metrics.register(broken, meter.provider)
    try:
        with caplog.at_level("WARNING", logger="moesif_otel"):
            for _ in range(2):
                assert meter.collect() == expected(good.stats())
        failures = [r for r in caplog.records if "stats down" in r.getMessage()]
        assert len(failures) == 1
    finally:
        good.shutdown()


# -- opentelemetry-instrument: the exporter the SDK configurator built reports on the global provider --


def console_points(output: str, name: str) -> list[list[dict[str, Any]]]:
    """The data points of ``name`` in each complete block the console metric exporter printed."""
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r'^\{\s*"resource_metrics"', output, re.MULTILINE):
        try:
            data, _ = decoder.raw_decode(output, match.start())
        except ValueError:  # cut by another line, or not printed completely yet
            continue
        for resource_metrics in data["resource_metrics"]:
            for scope_metrics in resource_metrics["scope_metrics"]:
                for metric in scope_metrics["metrics"]:
                    if metric["name"] == name:
                        found.append(metric["data"]["data_points"])
    return found


def test_under_opentelemetry_instrument_on_the_global_meter_provider(collector: Collector) -> None:
    env = moesif_env(collector, OTEL_METRICS_EXPORTER="console", OTEL_METRIC_EXPORT_INTERVAL="100")
    with instrumented("tests.plain_app:app", env) as server:
        with httpx.Client(base_url=server.base) as client:
            for i in range(3):
                assert client.get(f"/items/{i}").status_code == 200
        collector.wait_for_events(3)
        for count in range(1, 100):
            server.wait_for_output('"moesif_otel.events"', count=count)
            blocks = console_points(server.drain(), "moesif_otel.events")
            sent = (
                [p["value"] for p in blocks[-1] if p["attributes"].get("outcome") == "sent"] if blocks else []
            )
            if sent == [3]:
                break
        else:
            raise AssertionError(server.drain())
        assert {p["attributes"]["moesif_otel.pipeline"] for p in blocks[-1]} == {0}
        captured = console_points(server.drain(), "moesif_otel.captured")
        assert captured and captured[-1][0]["value"] >= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_child_forked_during_a_collection_collects_its_own_counts(
    collector: Collector, meter: Metrics
) -> None:
    settings = Settings.from_mapping({"APPLICATION_ID": "a", "BASE_URI": collector.url})
    pipeline = Pipeline.build(settings, TracerProvider(), meter.provider)
    try:
        registry = self_metrics._registries[meter.provider]
        source = registry.sources[0]
        with source._lock, registry.lock:  # the parent forks in the middle of a collection
            pid = os.fork()
            if pid == 0:  # the child: collect within a deadline, report by exit status
                signal.alarm(5)
                try:
                    ok = meter.collect() == expected(pipeline.stats())
                finally:
                    os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        pipeline.shutdown()
