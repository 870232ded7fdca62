"""Wiring: settings → exporter → processor → a TracerProvider, plus flush at exit.

Joins the application's SDK TracerProvider when there is one (its other exporters keep working),
otherwise uses a private provider and leaves the global one alone.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.processor import MoesifSpanProcessor
from moesif_otel.providers import flush_moesif, moesif_processors
from moesif_otel.settings import Settings

logger = logging.getLogger("moesif_otel")


@dataclass
class Pipeline:
    settings: Settings
    exporter: MoesifSpanExporter
    processor: SpanProcessor  # ours, or the provider's (e.g. BatchSpanProcessor) when it had one
    tracer_provider: TracerProvider
    owns_provider: bool
    owns_processor: bool = True

    @classmethod
    def build(cls, settings: Settings, tracer_provider: TracerProvider | None = None) -> Pipeline:
        owns = False
        if tracer_provider is None:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                tracer_provider = current
            else:
                tracer_provider = TracerProvider(
                    resource=Resource.create({"service.name": "moesif-otel"}), shutdown_on_exit=False
                )
                owns = True
        existing = moesif_processors(tracer_provider)
        if existing:
            # opentelemetry-instrument (OTEL_TRACES_EXPORTER=moesif) or the app itself already
            # exports to Moesif from this provider: a second exporter would send every event twice
            processor, exporter = existing[0]
            logger.info("moesif_otel: the TracerProvider already exports to Moesif; using that exporter")
        else:
            exporter = MoesifSpanExporter(settings)
            processor = MoesifSpanProcessor(
                exporter,
                max_queue_size=settings.event_queue_size,
                max_batch_size=settings.batch_size,
                schedule_delay=settings.event_batch_timeout,
                shutdown_timeout=settings.shutdown_timeout,
            )
            tracer_provider.add_span_processor(processor)
        exporter.app_config.start()
        pipeline = cls(settings, exporter, processor, tracer_provider, owns, owns_processor=not existing)
        ref = weakref.ref(pipeline)
        atexit.register(lambda: (p := ref()) is not None and p.shutdown())
        if settings.debug:
            logger.setLevel(logging.DEBUG)
        logger.debug(
            "moesif_otel: exporting to %s (%s TracerProvider)",
            settings.collector_uri,
            "own" if owns else "the application's",
        )
        return pipeline

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything captured so far, within ``timeout`` seconds (SHUTDOWN_TIMEOUT)."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self.owns_processor:
            return self.processor.force_flush(int(timeout * 1000))
        return flush_moesif(self.tracer_provider, timeout)

    def shutdown(self) -> None:
        """Flush within SHUTDOWN_TIMEOUT and stop; idempotent (atexit, lifespan and provider all call it).

        A processor this pipeline found on the provider is the provider's to shut down: only flushed.
        """
        if self.owns_processor:
            self.processor.shutdown()
        else:
            self.flush()

    def stats(self) -> dict[str, int]:
        processor_stats = self.processor.stats() if isinstance(self.processor, MoesifSpanProcessor) else {}
        return {**processor_stats, **self.exporter.stats()}
