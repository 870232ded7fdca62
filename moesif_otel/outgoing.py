"""Outgoing capture: calls the app makes with ``requests`` (and httpx) become Outgoing events.

(Being written for issue 4.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moesif_otel.pipeline import Pipeline


def enable_outgoing_capture(pipeline: Pipeline) -> None:
    """Instrument requests (and httpx when installed) onto ``pipeline.tracer_provider``; idempotent."""
    raise NotImplementedError("outgoing capture is not implemented yet")
