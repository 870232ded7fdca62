"""The benchmarked FastAPI app, built once per variant so every variant serves identical routes.

Served by uvicorn as ``app:app`` with ``BENCH_VARIANT`` (and ``BENCH_COLLECTOR_URL`` for the Moesif
variants) in the environment; ``make_app`` is importable for in-process use.

Variants:
- ``bare``: the app alone.
- ``otel_lean``: OTel's ASGI middleware without the per-message receive/send spans and with a
  no-op meter, on an SDK ``TracerProvider`` + ``BatchSpanProcessor`` feeding an exporter that
  drops everything (spans are created, ended and queued, as in a real pipeline, but not shipped).
- ``otel_lean_metrics``: ``otel_lean`` with an SDK ``MeterProvider`` instead of the no-op one (OTel's
  HTTP server metrics recorded, collected every second by a reader whose exporter drops them).
- ``otel_fastapi``: ``FastAPIInstrumentor.instrument_app`` with its defaults on the same kind of
  provider (receive/send spans on; metrics go to the global meter provider, a no-op proxy).
- ``moesifasgi``: moesifasgi 1.1.8 with its default batching, posting to the local collector.
- ``moesif_otel``: this project's drop-in middleware, body capture on, an IDENTIFY_USER hook,
  exporting to the local collector.
- ``moesif_otel_metrics``: ``moesif_otel`` with the same kind of SDK ``MeterProvider`` as
  ``otel_lean_metrics`` (``meter_provider=``): its HTTP server metrics and its own ``moesif_otel.*``
  counters, collected every second.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

VARIANTS = (
    "bare",
    "otel_lean",
    "otel_lean_metrics",
    "otel_fastapi",
    "moesifasgi",
    "moesif_otel",
    "moesif_otel_metrics",
)
METRICS_INTERVAL_MS = 1000  # 60x OTel's default: every run collects (and pays for it) several times

STREAM_CHUNK = 64 * 1024
_CHUNK_BYTES = b"x" * STREAM_CHUNK


def identify_user(request: Any, response: Any) -> str:
    """A constant user id: the hook's cost is calling it, which is what is being measured."""
    return "12345"


def _routes(app: FastAPI) -> None:
    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "name": "widget", "price": 9.99, "tags": ["a", "b"], "in_stock": True}

    @app.post("/echo")
    async def echo(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return payload

    @app.get("/stream")
    async def stream(size: int = 1024 * 1024) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            left = size
            while left > 0:
                n = min(left, STREAM_CHUNK)
                yield _CHUNK_BYTES if n == STREAM_CHUNK else _CHUNK_BYTES[:n]
                left -= n

        return StreamingResponse(chunks(), media_type="application/octet-stream")


def _sdk_tracer_provider() -> Any:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DroppingExporter(SpanExporter):
        """Accepts and forgets: isolates instrumentation cost from any exporter's cost."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    return provider


def _sdk_meter_provider() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )

    class DroppingMetricExporter(MetricExporter):
        """Accepts and forgets: the instruments and the collection are paid for, not any shipping."""

        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    reader = PeriodicExportingMetricReader(
        DroppingMetricExporter(), export_interval_millis=METRICS_INTERVAL_MS
    )
    return MeterProvider(metric_readers=[reader])


def moesif_settings(collector_url: str) -> dict[str, Any]:
    """The settings dict both Moesif variants get: moesifasgi's own keys, so moesif_otel takes it as-is."""
    return {
        "APPLICATION_ID": "bench",
        "BASE_URI": collector_url,
        "LOG_BODY": True,
        "IDENTIFY_USER": identify_user,
    }


def make_app(variant: str, collector_url: str | None = None) -> FastAPI:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    app = FastAPI()
    _routes(app)

    if variant in ("otel_lean", "otel_lean_metrics"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.metrics import NoOpMeterProvider

        app.add_middleware(
            OpenTelemetryMiddleware,
            tracer_provider=_sdk_tracer_provider(),
            meter_provider=_sdk_meter_provider() if variant == "otel_lean_metrics" else NoOpMeterProvider(),
            exclude_spans=["receive", "send"],
        )
    elif variant == "otel_fastapi":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=_sdk_tracer_provider())
    elif variant in ("moesifasgi", "moesif_otel", "moesif_otel_metrics"):
        if not collector_url:
            raise ValueError(f"variant {variant} needs a collector URL")
        if variant == "moesifasgi":
            from moesifasgi import MoesifMiddleware

            app.add_middleware(MoesifMiddleware, settings=moesif_settings(collector_url))
        else:
            from moesif_otel import MoesifMiddleware

            # no meter provider at all for moesif_otel (the global one is the API's no-op proxy)
            extra = {"meter_provider": _sdk_meter_provider()} if variant == "moesif_otel_metrics" else {}
            app.add_middleware(MoesifMiddleware, settings=moesif_settings(collector_url), **extra)
    return app


_variant = os.environ.get("BENCH_VARIANT")
if _variant:
    app = make_app(_variant, os.environ.get("BENCH_COLLECTOR_URL"))
