"""OTEL_SEMCONV_STABILITY_OPT_IN for one test: OTel reads it once per process and caches it."""

from __future__ import annotations

import pytest
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability as Stability


def use_semconv_mode(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Set (or unset) the opt-in and make the next reader (ours or OTel's) read it afresh."""
    if value is None:
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", value)
    monkeypatch.setattr(Stability, "_initialized", False)
    monkeypatch.setattr(Stability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})
