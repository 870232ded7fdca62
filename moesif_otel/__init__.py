"""OpenTelemetry-based API-call capture for Python web apps, with a Moesif exporter."""

from moesif_otel._version import __version__
from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.middleware import MoesifMiddleware
from moesif_otel.processor import MoesifSpanProcessor
from moesif_otel.settings import ConfigurationError, Settings

__all__ = [
    "ConfigurationError",
    "MoesifMiddleware",
    "MoesifSpanExporter",
    "MoesifSpanProcessor",
    "Settings",
    "__version__",
]
