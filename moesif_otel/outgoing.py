"""Outgoing capture: calls the app makes with ``requests`` (and httpx) become Outgoing events.

OTel's own client instrumentations open the CLIENT spans (so they nest under the server span and
carry its trace id); our request/response hooks capture what Moesif needs under the same names the
server side uses and hand it to the same processor and exporter as a record (see
:mod:`moesif_otel.outgoing_record`), batched. Nothing here does I/O or parsing: bodies are copied
up to ``MAX_BODY_SIZE``, hooks run after the span ended, the record is queued.

The instrumentations are process-wide singletons: one pipeline at a time receives outgoing calls,
the one enabled last. A ``requests``/httpx instrumentation set up by someone else (for instance
``opentelemetry-instrument``) is replaced by ours, on the pipeline's TracerProvider; hooks given to
it are lost. Every hook body is failsafe: the OTel hooks are not, and a raise would reach the app.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from moesif_otel import outgoing_httpx, outgoing_requests
from moesif_otel.outgoing_record import OutgoingOptions

if TYPE_CHECKING:
    from moesif_otel.pipeline import Pipeline

logger = logging.getLogger("moesif_otel")

__all__ = ["OutgoingOptions", "disable_outgoing_capture", "enable_outgoing_capture", "outgoing_pipeline"]


# --- enabling ------------------------------------------------------------------------------------

_lock = threading.Lock()
_active: Pipeline | None = None


def enable_outgoing_capture(pipeline: Pipeline) -> None:
    """Instrument requests (and httpx when installed) onto ``pipeline.tracer_provider``; idempotent.

    Enabling for another pipeline moves outgoing capture to it (the instrumentations are singletons).
    """
    global _active
    with _lock:
        if _active is pipeline:
            return
        if _active is not None:
            logger.info("moesif_otel: outgoing capture moves to a newer MoesifMiddleware/pipeline")
        _uninstrument_all()
        options = OutgoingOptions.from_settings(pipeline.settings, submit=pipeline.processor.on_end)
        clients = [
            name
            for name, module in (("requests", outgoing_requests), ("httpx", outgoing_httpx))
            if module.instrument(options, pipeline.tracer_provider)
        ]
        _active = pipeline
    logger.debug("moesif_otel: capturing outgoing calls made with %s", ", ".join(clients) or "nothing")


def disable_outgoing_capture(pipeline: Pipeline | None = None) -> None:
    """Remove the instrumentations (only if ``pipeline``, when given, is the one capturing)."""
    global _active
    with _lock:
        if _active is None or (pipeline is not None and _active is not pipeline):
            return
        _uninstrument_all()
        _active = None


def outgoing_pipeline() -> Pipeline | None:
    """The pipeline that receives outgoing calls now, if any."""
    return _active


def _uninstrument_all() -> None:
    outgoing_requests.uninstrument()
    outgoing_httpx.uninstrument()
