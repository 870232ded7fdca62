"""Wiring: settings → uplink (delivery, app config, transport) → exporter → processor → a
TracerProvider, plus flush at exit (atexit and SIGTERM).

Joins the application's SDK TracerProvider when there is one (its other exporters keep working),
otherwise uses a private provider and leaves the global one alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from types import FrameType

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from moesif_otel.config_sync import ConfigSync
from moesif_otel.delivery import Delivery, ShutdownClock
from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.processor import MoesifSpanProcessor, merge_stats
from moesif_otel.providers import flush_moesif, moesif_processors
from moesif_otel.self_metrics import register as register_self_metrics
from moesif_otel.settings import Settings
from moesif_otel.uplink import Uplink

logger = logging.getLogger("moesif_otel")


@dataclass
class Pipeline:
    """One Moesif pipeline: its uplink (the delivery, app config and collector transport that the
    exporter, capture and profile updates use), its exporter and processor, on a TracerProvider."""

    settings: Settings
    uplink: Uplink
    exporter: MoesifSpanExporter
    processor: SpanProcessor  # ours, or the provider's (e.g. BatchSpanProcessor) when it had one
    tracer_provider: TracerProvider
    owns_provider: bool
    owns_processor: bool = True

    @classmethod
    def build(
        cls,
        settings: Settings,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Pipeline:
        """``meter_provider`` (else a global SDK one) gets the stats() as ``moesif_otel.*`` metrics."""
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
            uplink = exporter.uplink  # and its delivery and app config
            logger.info("moesif_otel: the TracerProvider already exports to Moesif; using that exporter")
        else:
            uplink = Uplink(settings)
            exporter = MoesifSpanExporter(settings, uplink=uplink)
            processor = MoesifSpanProcessor.for_exporter(exporter)
            tracer_provider.add_span_processor(processor)
        uplink.app_config.start()
        pipeline = cls(
            settings, uplink, exporter, processor, tracer_provider, owns, owns_processor=not existing
        )
        ref = weakref.ref(pipeline)
        atexit.register(lambda: None if (p := ref()) is None else p.shutdown())
        _live[:] = [*(r for r in _live if r() is not None), ref]
        _hook_sigterm()
        register_self_metrics(pipeline, meter_provider)  # nothing without a real meter provider
        if settings.debug:
            logger.setLevel(logging.DEBUG)
        logger.debug(
            "moesif_otel: exporting to %s (%s TracerProvider)",
            settings.collector_uri,
            "own" if owns else "the application's",
        )
        return pipeline

    @property
    def delivery(self) -> Delivery:
        """Uploads events (and profile updates) to the collector; shared per collector and settings."""
        return self.uplink.delivery

    @property
    def app_config(self) -> ConfigSync:
        """The Moesif app config (sampling, governance rules), kept current in the background."""
        return self.uplink.app_config

    @property
    def clock(self) -> ShutdownClock:
        """The shutdown deadline every stage shares (lifespan, atexit, provider, SIGTERM)."""
        return self.exporter.clock

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything captured so far, within ``timeout`` seconds (SHUTDOWN_TIMEOUT)."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self.owns_processor:
            return self.processor.force_flush(int(timeout * 1000))
        return flush_moesif(self.tracer_provider, timeout)

    def flush_at_shutdown(self) -> bool:
        """The lifespan shutdown's flush: starts the shutdown clock, so that atexit, the provider's
        shutdown and SIGTERM that follow get only what is left of SHUTDOWN_TIMEOUT. When everything
        was delivered, the clock stops again: the app may go on (a TestClient left, not the process)."""
        delivered = self.flush(self.clock.remaining())  # starts the clock
        if delivered:
            self.clock.reset()
        return delivered

    def started(self) -> None:
        """A lifespan startup: a new run of the app, with a fresh shutdown clock."""
        self.clock.reset()

    def shutdown(self) -> None:
        """Flush within what is left of the shutdown clock and stop; idempotent (atexit, lifespan,
        provider and SIGTERM all call it).

        A processor this pipeline found on the provider is the provider's to shut down: only flushed.
        """
        if self.owns_processor:
            self.processor.shutdown()
        else:
            self.flush(self.clock.remaining())

    def stats(self) -> dict[str, int]:
        """``captured == sent + sum(dropped_*) + sampled_out_outgoing + pending``; see merge_stats."""
        if isinstance(self.processor, MoesifSpanProcessor):
            return merge_stats(self.processor, self.exporter.stats())
        return self.exporter.stats()


# -- SIGTERM ------------------------------------------------------------------------------------------
# uvicorn (also as gunicorn's worker) handles SIGTERM by shutting down gracefully, restoring the handler
# it found and raising the signal again. With the default handler the process dies right there and
# atexit never runs: without a lifespan flush (``--lifespan off``, a server or framework that doesn't
# pass lifespan through) every queued event was lost. So where SIGTERM still has its default action,
# we shut the pipelines down first (bounded) and then die of SIGTERM as before, same exit status.
# Hooked at import too: a middleware added the Starlette way is built only once uvicorn has taken over
# SIGTERM, but the app module importing us runs before that. With no pipeline it is a pass-through.

_live: list[weakref.ref[Pipeline]] = []
_SIGTERM_MARGIN = 0.2  # seconds past the deadline for the stages to count and log what they dropped
_sigterm_hooked = False


def _hook_sigterm() -> None:
    global _sigterm_hooked
    if _sigterm_hooked or os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the application's own handler: leave it alone (it usually exits, and atexit runs)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        return
    _sigterm_hooked = True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    pipelines = [p for ref in _live if (p := ref()) is not None]
    if pipelines:
        # On other threads: the signal may have interrupted this (main) thread inside one of our locks.
        # Each pipeline's clock may already run (a lifespan flush): the stages share one budget.
        deadline = max(p.clock.start() for p in pipelines) + _SIGTERM_MARGIN
        threads = [
            threading.Thread(target=p.shutdown, name="moesif-otel-sigterm", daemon=True) for p in pipelines
        ]
        try:
            for thread in threads:
                thread.start()
        except RuntimeError:
            pass  # interpreter shutting down: nothing more we can do
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signum)


_hook_sigterm()
