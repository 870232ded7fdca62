"""HTTP server metrics for the drop-in's own server span, as OTel's ASGI instrumentation records them.

Only on a real MeterProvider: one passed to the middleware, or an SDK one set globally. Without
one nothing is created and :meth:`ServerMetrics.create` returns None, so the request path does not
change at all (no wrapped ``send``, no attribute filtering, no clock reads).

Names, units and attributes follow ``OTEL_SEMCONV_STABILITY_OPT_IN`` like OTel's: the stable
``http.server.request.duration`` (s), ``http.server.request.body.size`` and
``http.server.response.body.size`` (By) under ``http``; ``http.server.duration`` (ms),
``http.server.request.size`` and ``http.server.response.size`` under the default (old) mode; both
under ``http/dup``; ``http.server.active_requests`` in every mode. Sizes come from the
Content-Length headers, as OTel's. The duration ends when the response is complete (the span's
end), not after the hooks or background tasks that run later.
"""

from __future__ import annotations

import logging
from timeit import default_timer
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.semconv.metrics import MetricInstruments
from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION
from starlette.types import Message, Scope, Send

from moesif_otel import attributes as A
from moesif_otel._version import __version__
from moesif_otel.http_semconv import StabilityMode, report_new, report_old, route_template, schema_url
from moesif_otel.internals import (
    HTTP_DURATION_HISTOGRAM_BUCKETS_NEW,
    create_http_server_active_requests,
    create_http_server_request_body_size,
    create_http_server_response_body_size,
    server_active_requests_count_attrs_new,
    server_active_requests_count_attrs_old,
    server_duration_attrs_new,
    server_duration_attrs_old,
)
from moesif_otel.logonce import LogOnce

_log = LogOnce(logging.getLogger("moesif_otel"))

_ACTIVE_OLD = frozenset(server_active_requests_count_attrs_old)
_ACTIVE_NEW = frozenset(server_active_requests_count_attrs_new)
_DURATION_OLD = frozenset(server_duration_attrs_old)
_DURATION_NEW = frozenset(server_duration_attrs_new)


def real_meter_provider(meter_provider: metrics.MeterProvider | None) -> metrics.MeterProvider | None:
    """The provider to record on: the one given (unless a no-op), else the global one if it is the SDK's."""
    if meter_provider is not None:
        return None if isinstance(meter_provider, metrics.NoOpMeterProvider) else meter_provider
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

    provider = metrics.get_meter_provider()
    return provider if isinstance(provider, SdkMeterProvider) else None


class ServerMetrics:
    """The instruments of one middleware; :meth:`start` measures one request."""

    def __init__(self, meter: metrics.Meter, mode: StabilityMode) -> None:
        self.old = report_old(mode)
        self.new = report_new(mode)
        self.active = create_http_server_active_requests(meter)
        # http/dup: the active-requests counter carries both name sets, as OTel's does
        self.active_keys = (_ACTIVE_OLD if self.old else frozenset()) | (
            _ACTIVE_NEW if self.new else frozenset()
        )
        self.duration_old = self.request_size_old = self.response_size_old = None
        self.duration_new = self.request_size_new = self.response_size_new = None
        if self.old:
            self.duration_old = meter.create_histogram(
                MetricInstruments.HTTP_SERVER_DURATION,
                unit="ms",
                description="Measures the duration of inbound HTTP requests.",
            )
            self.request_size_old = meter.create_histogram(
                MetricInstruments.HTTP_SERVER_REQUEST_SIZE,
                unit="By",
                description="Measures the size of HTTP request messages (compressed).",
            )
            self.response_size_old = meter.create_histogram(
                MetricInstruments.HTTP_SERVER_RESPONSE_SIZE,
                unit="By",
                description="measures the size of HTTP response messages (compressed).",
            )
        if self.new:
            self.duration_new = meter.create_histogram(
                HTTP_SERVER_REQUEST_DURATION,
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=HTTP_DURATION_HISTOGRAM_BUCKETS_NEW,
            )
            self.request_size_new = create_http_server_request_body_size(meter)
            self.response_size_new = create_http_server_response_body_size(meter)

    @classmethod
    def create(
        cls, meter_provider: metrics.MeterProvider | None, mode: StabilityMode
    ) -> ServerMetrics | None:
        provider = real_meter_provider(meter_provider)
        if provider is None:
            return None
        try:
            return cls(provider.get_meter("moesif_otel", __version__, schema_url=schema_url(mode)), mode)
        except Exception as exc:  # a provider that cannot make instruments must not stop the app
            _failed(exc)
            return None

    def start(self, scope: Scope, attributes: dict[str, Any], send: Send) -> Measured:
        """Count the request as active; ``attributes`` are the span's request attributes."""
        return Measured(self, scope, attributes, send)


class Measured:
    """One request's measurements; its :meth:`send` wraps the server's."""

    __slots__ = (
        "_send",
        "active_attrs",
        "attributes",
        "end",
        "metrics",
        "response_size",
        "scope",
        "start",
        "status",
    )

    def __init__(
        self, server_metrics: ServerMetrics, scope: Scope, attributes: dict[str, Any], send: Send
    ) -> None:
        self.metrics = server_metrics
        self.scope = scope
        self.attributes = attributes
        self._send = send
        self.status = 0
        self.response_size: int | None = None
        self.end = 0.0
        allowed = server_metrics.active_keys
        self.active_attrs = {k: v for k, v in attributes.items() if k in allowed}
        try:
            server_metrics.active.add(1, self.active_attrs)
        except Exception as exc:  # the app's meter provider must not fail its requests
            _failed(exc)
        self.start = default_timer()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message.get("status") or 0
            self.response_size = _content_length(message.get("headers", ()))
        elif kind == "http.response.body" and not message.get("more_body", False) and not self.end:
            self.end = default_timer()
        await self._send(message)

    def finish(self, span: trace.Span, error: BaseException | None) -> None:
        """Record the request (after the app returned or raised); never raises."""
        try:
            self._record(span, error)
        except Exception as exc:
            _failed(exc)

    def _record(self, span: trace.Span, error: BaseException | None) -> None:
        duration = (self.end or default_timer()) - self.start
        m = self.metrics
        m.active.add(-1, self.active_attrs)
        attrs = self.attributes
        status = self.status or (500 if error is not None else 0)
        route = route_template(self.scope)
        ctx = trace.set_span_in_context(span)
        request_size = _content_length(self.scope.get("headers", ()))
        if m.old:
            old = {k: v for k, v in attrs.items() if k in _DURATION_OLD}
            if status:
                old[A.OLD_HTTP_STATUS_CODE] = status
            if route:
                old[A.OLD_HTTP_TARGET] = route
            m.duration_old.record(max(round(duration * 1000), 0), old, context=ctx)  # type: ignore[union-attr]
            if self.response_size is not None:
                m.response_size_old.record(self.response_size, old, context=ctx)  # type: ignore[union-attr]
            if request_size is not None:
                m.request_size_old.record(request_size, old, context=ctx)  # type: ignore[union-attr]
        if m.new:
            new = {k: v for k, v in attrs.items() if k in _DURATION_NEW}
            if status:
                new[A.HTTP_RESPONSE_STATUS_CODE] = status
            if error is not None:
                new[A.ERROR_TYPE] = type(error).__qualname__
            elif status >= 500:
                new[A.ERROR_TYPE] = str(status)
            if route:
                new[A.HTTP_ROUTE] = route
            m.duration_new.record(max(duration, 0.0), new, context=ctx)  # type: ignore[union-attr]
            if self.response_size is not None:
                m.response_size_new.record(self.response_size, new, context=ctx)  # type: ignore[union-attr]
            if request_size is not None:
                m.request_size_new.record(request_size, new, context=ctx)  # type: ignore[union-attr]


def _failed(exc: Exception) -> None:
    _log.warning(
        f"metrics:{type(exc).__qualname__}",
        "moesif_otel: recording HTTP server metrics failed (%s: %s); the requests are unaffected",
        type(exc).__qualname__,
        exc,
    )


def _content_length(headers: Any) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
