"""Which span processors of a TracerProvider already deliver to Moesif.

The SDK keeps a provider's processors private; this is the one place that looks at them
(through :func:`moesif_otel.internals.span_processors`), so that a second Moesif exporter is
never added to a provider that has one (duplicate events) and so that a shutdown can flush the
exporters the SDK configurator created.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace

from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.internals import span_processors


def moesif_exporter_of(processor: Any) -> MoesifSpanExporter | None:
    """The Moesif exporter behind a processor (ours, the SDK's batch or simple one), if any."""
    for name in ("exporter", "span_exporter"):
        exporter = getattr(processor, name, None)
        if isinstance(exporter, MoesifSpanExporter):
            return exporter
    return None


def moesif_processors(provider: Any) -> list[tuple[Any, MoesifSpanExporter]]:
    """(processor, exporter) for every processor of ``provider`` that delivers to Moesif."""
    found = []
    for processor in span_processors(provider):
        exporter = moesif_exporter_of(processor)
        if exporter is not None:
            found.append((processor, exporter))
    return found


def flush_moesif(provider: Any | None = None, timeout: float = 5.0) -> bool:
    """Push queued spans through every Moesif processor of ``provider`` and deliver them, bounded.

    A batch processor's ``force_flush`` only hands spans to the exporter; the exporter's own
    ``force_flush`` is what waits for the uploads.
    """
    provider = trace.get_tracer_provider() if provider is None else provider
    deadline = time.monotonic() + timeout
    ok = True
    for processor, exporter in moesif_processors(provider):
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        ok = bool(processor.force_flush(remaining)) and ok
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        ok = bool(exporter.force_flush(remaining)) and ok
    return ok
