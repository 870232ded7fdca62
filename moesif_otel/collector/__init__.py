"""A local, standard-library-only stand-in for the Moesif collector API.

Used by the tests (strict event checks, fault injection), the demo (prints what would reach Moesif)
and the benchmarks (a fast sink). Run it alone with ``python -m moesif_otel.collector``.
"""

from __future__ import annotations

from .format import format_event
from .schema import MAX_EVENT_BYTES, validate_event
from .server import DEFAULT_CONFIG, Collector

__all__ = ["DEFAULT_CONFIG", "MAX_EVENT_BYTES", "Collector", "format_event", "validate_event"]
