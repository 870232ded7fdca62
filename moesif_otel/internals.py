"""Every private detail of another library that moesif_otel relies on, in one place.

Each function names the private thing it touches, why no public API does the job, and what
happens when a release removes or changes it. ``tests/test_internals.py`` pins each one against
the installed versions; ``tox -e oldest`` runs those tests on the oldest versions pyproject
allows, the default env on the newest. A new private access belongs here, with its test.

This module imports nothing of moesif_otel, so every stage can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.instrumentation._semconv import (
    HTTP_DURATION_HISTOGRAM_BUCKETS_NEW,
    _get_schema_url,
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _report_new,
    _report_old,
    _server_active_requests_count_attrs_new,
    _server_active_requests_count_attrs_old,
    _server_duration_attrs_new,
    _server_duration_attrs_old,
    _StabilityMode,
)
from opentelemetry.semconv._incubating.metrics.http_metrics import (
    create_http_server_active_requests,
    create_http_server_request_body_size,
    create_http_server_response_body_size,
)
from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

__all__ = [
    "HTTP_DURATION_HISTOGRAM_BUCKETS_NEW",
    "EntryPoint",
    "StabilityMode",
    "configure_sdk",
    "create_http_server_active_requests",
    "create_http_server_request_body_size",
    "create_http_server_response_body_size",
    "entry_points",
    "fastapi_route_template",
    "http_stability_mode",
    "httpx_transport_stream",
    "replace_span_end",
    "report_new",
    "report_old",
    "requests_read_content",
    "restore_span_end",
    "schema_url",
    "server_active_requests_count_attrs_new",
    "server_active_requests_count_attrs_old",
    "server_duration_attrs_new",
    "server_duration_attrs_old",
    "set_httpx_transport_stream",
    "span_attribute_dict",
    "span_processors",
]

# -- opentelemetry-instrumentation: HTTP semantic-convention mode and metric attributes ----------------
#
# ``opentelemetry.instrumentation._semconv`` is what OTel's own HTTP instrumentations use to read
# OTEL_SEMCONV_STABILITY_OPT_IN and to pick the attributes of http.server.* metrics. Reading the
# opt-in through it (not os.environ) keeps the drop-in and any OTel instrumentation in the process
# on the same names; its metric attribute sets keep our metrics identical to theirs. No public API
# offers either. When the module changes, importing moesif_otel fails here, at once, naming it
# (tests/test_internals.py checks the names and what they return).

StabilityMode = _StabilityMode
report_new = _report_new
report_old = _report_old
schema_url = _get_schema_url
server_active_requests_count_attrs_new = _server_active_requests_count_attrs_new
server_active_requests_count_attrs_old = _server_active_requests_count_attrs_old
server_duration_attrs_new = _server_duration_attrs_new
server_duration_attrs_old = _server_duration_attrs_old
# ``opentelemetry.semconv._incubating``: the body-size and active-requests instruments are not yet
# stable semantic conventions; these factories give them OTel's names, units and descriptions.


def http_stability_mode() -> StabilityMode:
    """The HTTP mode of ``OTEL_SEMCONV_STABILITY_OPT_IN``, through OTel's private, process-wide cache.

    Touches ``_OpenTelemetrySemanticConventionStability._initialize`` and
    ``._get_opentelemetry_stability_opt_in_mode``: the reader OTel's instrumentations share, so
    that everyone in the process reads the variable once and agrees. If they go, the drop-in's
    span cannot start (AttributeError at the middleware's construction) until this is adapted.
    """
    _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]  # OTel: unannotated
    return _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
        _OpenTelemetryStabilitySignalType.HTTP
    )


# -- opentelemetry-sdk ------------------------------------------------------------------------------


def span_attribute_dict(span: Any) -> Any:
    """The plain dict beneath a finished SDK span's attributes (``span._attributes._dict``), or None.

    ``span.attributes`` is a read-only proxy over ``BoundedAttributes`` whose every lookup runs
    Python code (copying one span's: 2.7 us; the dict beneath: 0.08 us). A finished span's
    attributes no longer change, so reading the dict is safe. When the layout changes this returns
    None (or something that is not a dict) and :func:`moesif_otel.event.span_attributes` copies
    the public attributes instead: slower, same events.
    """
    return getattr(getattr(span, "_attributes", None), "_dict", None)


def span_processors(provider: Any) -> tuple[Any, ...]:
    """The processors added to an SDK TracerProvider, in order; () for any other provider.

    Touches ``TracerProvider._active_span_processor._span_processors``: the SDK offers no way to
    list a provider's processors, and moesif_otel needs them so that a second Moesif exporter is
    never added to a provider that has one (duplicate events) and so that shutdown can flush the
    exporters the SDK configurator created. When it is gone this returns (): a provider set up by
    ``opentelemetry-instrument`` plus the drop-in would then export every event twice, and the
    lifespan flush would not reach the configurator's exporter (the SDK's exit-time flush still does).
    """
    multi = getattr(provider, "_active_span_processor", None)
    return tuple(getattr(multi, "_span_processors", ()))


def replace_span_end(span: Any, end: Any) -> None:
    """Make the instrumentation's ``span.end()`` call ``end`` instead (an instance attribute).

    The client instrumentations offer no hook that runs after the span ended. For ``requests`` this
    is how the *_OUTGOING hooks run right after the CLIENT span's end instead of inside it (on
    recording and non-recording spans alike). httpx's ends the span when the transport returns,
    before the app has read the body; with CAPTURE_ON_SPAN, holding the end back until the body
    stream closes is how the body gets onto the span. The SDK's Span and NonRecordingSpan have no
    ``__slots__`` and the instrumentations end spans through ``use_span(..., end_on_exit=True)``,
    which looks ``end`` up on the instance. If a span gains slots this raises AttributeError,
    logged once: ``requests``' hooks then run inside the span, as before; an httpx span gets no
    response body.
    """
    span.end = end


def restore_span_end(span: Any) -> None:
    """Undo :func:`replace_span_end` once it served: the replacement refers back to the span (a
    reference cycle, freed only by the garbage collector, while it stays on the instance)."""
    vars(span).pop("end", None)


# -- httpx ------------------------------------------------------------------------------------------


def httpx_transport_stream(stream: Any) -> Any:
    """httpcore's byte stream inside httpx's ``ResponseStream`` (``stream._httpcore_stream``), or None.

    Replacing it (:func:`set_httpx_transport_stream`) is the only way to see the response body
    as the app reads it without reading it for the app. When httpx renames it this returns None
    and the call is recorded without its body, noted "unknown httpx transport stream".
    """
    return getattr(stream, "_httpcore_stream", None)


def set_httpx_transport_stream(stream: Any, inner: Any) -> None:
    """Put ``inner`` (a tee) in place of httpx's ``ResponseStream._httpcore_stream``."""
    stream._httpcore_stream = inner


# -- requests ---------------------------------------------------------------------------------------


def requests_read_content(response: Any) -> Any:
    """The body requests has already read (``response._content``, bytes), else False or None.

    ``response.content`` would read a ``stream=True`` body on the app's behalf (and consume it);
    the private attribute tells whether it was read already without reading it. It is read from
    ``__dict__`` so that no subclass property runs. When requests renames it this returns False:
    bodies are no longer recorded ("streamed response"), calls still are.
    """
    return response.__dict__.get("_content", False)


# -- FastAPI ----------------------------------------------------------------------------------------


def fastapi_route_template(scope: Mapping[str, Any], route: Any) -> Any:
    """The template of ``route`` with its ``include_router`` prefixes, as FastAPI 0.137+ keeps it.

    Touches ``scope["fastapi"]["effective_route_context"]`` (``.original_route``, ``.path_format``):
    from FastAPI 0.137 an included router's prefix is no longer in the route's own ``path_format``,
    and this private context is the only place that has the whole template. Returns None when it
    is absent (older FastAPI, Starlette alone) or is not about ``route``; if FastAPI moves it,
    routes under a router prefix are named without that prefix (span name, http.route).
    """
    fastapi_scope = scope.get("fastapi")
    if type(fastapi_scope) is not dict:
        return None
    effective = fastapi_scope.get("effective_route_context")
    if effective is None or getattr(effective, "original_route", None) is not route:
        return None
    return getattr(effective, "path_format", None)


# -- opentelemetry-instrument (the distro) ------------------------------------------------------------
#
# ``opentelemetry.util._importlib_metadata`` (EntryPoint, entry_points, imported above): the
# entry-point reader opentelemetry-instrument itself uses, so the distro finds the same
# instrumentors it would (the stdlib's differs across Python versions).
#
# Not private by name but an implementation detail all the same: the FastAPI (and Starlette)
# instrumentation builds its middleware from its module's global ``OpenTelemetryMiddleware``
# when the app starts, and ``moesif_otel.distro`` replaces that global to put capture inside it.
# If that changes the distro warns once and records events without bodies
# (tests/test_internals.py pins the global; tests/test_autoinstrument.py the whole path).


def configure_sdk(version: str) -> None:
    """Set up the SDK from ``OTEL_*`` as ``opentelemetry-instrument`` does (``_OTelSDKConfigurator``).

    The distro needs it when no other configurator will run. If the class goes, the distro's
    ``configure`` raises ImportError, which ``opentelemetry-instrument`` logs; the app then runs
    without the SDK set up.
    """
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator

    configurator = _OTelSDKConfigurator()  # type: ignore[no-untyped-call]  # OTel: unannotated
    configurator.configure(auto_instrumentation_version=version)  # type: ignore[no-untyped-call]
