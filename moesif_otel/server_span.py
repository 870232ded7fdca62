"""The SERVER span of an HTTP request, for the drop-in middleware.

OTel's ASGI middleware measured at about twice the per-request CPU of this module on the
benchmark app (most of it in collecting request attributes it then sets twice, and in per-message
bookkeeping for metrics that Moesif does not use), which alone put MoesifMiddleware below the
throughput targets. This opens the same kind of span — SERVER kind, the incoming trace context
honoured through the global propagator, the HTTP semantic-convention attributes under the names
``OTEL_SEMCONV_STABILITY_OPT_IN`` selects, exceptions as span events — and leaves the response
side to :class:`~moesif_otel.capture.HttpCapture`, which already sees every message: status code,
route, error status, and the span's end when the response is complete. OTel's HTTP server metrics
are recorded only when the app has a real MeterProvider (:mod:`moesif_otel.server_metrics`).

Under FastAPIInstrumentor or ``opentelemetry-instrument`` their span is used instead (see
``MoesifMiddleware``), so nothing is traced twice. Without any tracing of the app's own, no span is
recorded at all: the request gets only its span context (``recording=False``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.http import redact_url, sanitize_method
from starlette.types import ASGIApp, Receive, Scope, Send

from moesif_otel import attributes as A
from moesif_otel._version import __version__
from moesif_otel.http_semconv import init_mode, report_new, report_old, schema_url
from moesif_otel.server_metrics import ServerMetrics


class _ScopeHeaders(Getter[Scope]):
    """Reads propagation headers straight from the scope's raw header pairs."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [v.decode("latin-1") for n, v in carrier.get("headers", ()) if n.lower() == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [n.decode("latin-1") for n, _ in carrier.get("headers", ())]


_getter = _ScopeHeaders()


def request_attributes(scope: Scope, old: bool = False, new: bool = True) -> dict[str, Any]:
    """The request side of the HTTP server semantic conventions: stable names when ``new``, the
    old ones (as OTel's ASGI instrumentation writes them) when ``old``, both under ``http/dup``."""
    method = scope.get("method") or "GET"
    sanitized = sanitize_method(method)
    scheme = scope.get("scheme") or "http"
    path = scope.get("path") or "/"
    version = scope.get("http_version") or "1.1"
    query = scope.get("query_string")
    host = user_agent = None
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"host":
            host = value.decode("latin-1")
        elif lowered == b"user-agent":
            user_agent = value.decode("latin-1")
    client = scope.get("client")
    attributes: dict[str, Any] = {}
    if new:
        attributes[A.HTTP_REQUEST_METHOD] = sanitized
        attributes[A.URL_SCHEME] = scheme
        attributes[A.URL_PATH] = path
        attributes[A.NETWORK_PROTOCOL_VERSION] = version
        if sanitized != method:
            attributes[A.HTTP_REQUEST_METHOD_ORIGINAL] = method
        if query:
            attributes[A.URL_QUERY] = query.decode("latin-1")
        if user_agent:
            attributes[A.USER_AGENT_ORIGINAL] = user_agent
        if host:
            address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
            attributes[A.SERVER_ADDRESS] = address or host
            if port.isdigit():
                attributes[A.SERVER_PORT] = int(port)
        elif scope.get("server"):
            attributes[A.SERVER_ADDRESS] = str(scope["server"][0])
            if scope["server"][1] is not None:
                attributes[A.SERVER_PORT] = int(scope["server"][1])
        if client:
            attributes[A.CLIENT_ADDRESS] = str(client[0])
            if client[1] is not None:
                attributes[A.CLIENT_PORT] = int(client[1])
    if old:  # OTel's ASGI values: http.host is the socket's address, with its port
        server = scope.get("server") or ("0.0.0.0", 80)
        port = server[1]
        server_host = f"{server[0]}:{port}" if str(port) != "80" else str(server[0])
        url = f"{scheme}://{host or server_host}{path}"
        if query:
            url = redact_url(f"{url}?{unquote(query.decode('latin-1'))}")  # signatures in the query
        attributes[A.OLD_HTTP_METHOD] = sanitized
        attributes[A.OLD_HTTP_SCHEME] = scheme
        attributes[A.OLD_HTTP_HOST] = server_host
        attributes[A.OLD_HTTP_FLAVOR] = version
        attributes[A.OLD_HTTP_TARGET] = path
        attributes[A.OLD_HTTP_URL] = url
        if port:
            attributes[A.OLD_NET_HOST_PORT] = int(port)
        if host:
            attributes[A.OLD_HTTP_SERVER_NAME] = host
        if user_agent:
            attributes[A.OLD_HTTP_USER_AGENT] = user_agent
        if client:
            attributes[A.OLD_NET_PEER_IP] = str(client[0])
            if client[1] is not None:
                attributes[A.OLD_NET_PEER_PORT] = int(client[1])
    return attributes


class ServerSpan:
    """ASGI middleware: one SERVER span per HTTP request around ``app`` (HttpCapture)."""

    def __init__(
        self,
        app: ASGIApp,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        recording: bool = True,
    ) -> None:
        """``recording=False``: the provider is the pipeline's private one, which nobody else reads
        (the app traces nothing): each request then gets only a span context, see :meth:`_identity`."""
        self.app = app
        mode = init_mode()
        self._old = report_old(mode)
        self._new = report_new(mode)
        self.tracer = tracer_provider.get_tracer("moesif_otel", __version__, schema_url=schema_url(mode))
        self._ids: IdGenerator | None = None
        if not recording:
            self._ids = getattr(tracer_provider, "id_generator", None) or RandomIdGenerator()
            self._sampler: Sampler = getattr(tracer_provider, "sampler", None) or ParentBased(ALWAYS_ON)
        # None without a real MeterProvider: then nothing below measures anything
        self.metrics = ServerMetrics.create(meter_provider, mode)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parent = propagate.extract(scope, getter=_getter)
        attributes: dict[str, Any] | None = None
        if self._ids is not None:
            span: trace.Span = self._identity(parent, self._ids, scope.get("method") or "GET")
        else:
            attributes = request_attributes(scope, self._old, self._new)
            method = attributes.get(A.HTTP_REQUEST_METHOD) or attributes[A.OLD_HTTP_METHOD]  # sanitized
            span = self.tracer.start_span(
                "HTTP" if method == "_OTHER" else method,  # capture renames it once the route is known
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
            )
        token = context.attach(trace.set_span_in_context(span, parent))
        measured = None
        error = None
        if self.metrics is not None:
            if attributes is None:
                attributes = request_attributes(scope, self._old, self._new)
            measured = self.metrics.start(scope, attributes, send)
            send = measured.send
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            # as FastAPIInstrumentor does; the span is still open unless the response completed
            error = exc
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            context.detach(token)
            if span.is_recording():  # capture ends it when the response completes
                span.end()
            if measured is not None:
                measured.finish(span, error)

    def _identity(self, parent: context.Context, ids: IdGenerator, method: str) -> trace.Span:
        """The request's span context without a span to record, made as the private provider
        would make its span: the incoming trace's id (else a new one), a new span id, the flags and
        tracestate of that provider's sampler (OTEL_TRACES_SAMPLER, parent-based always-on by
        default). Events, outgoing calls (traceparent, their records) and the app's logs read only
        this; recording a span that no exporter reads was about a quarter of the drop-in's
        event-loop CPU per request (docs/opentelemetry.md)."""
        incoming = trace.get_current_span(parent).get_span_context()
        if incoming.is_valid:
            trace_id, random_id = incoming.trace_id, incoming.trace_flags.random_trace_id
        else:
            trace_id, random_id = ids.generate_trace_id(), ids.is_trace_id_random()
        decision = self._sampler.should_sample(parent, trace_id, method, SpanKind.SERVER)
        sampled = decision.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags(
            (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
        )
        span_context = SpanContext(trace_id, ids.generate_span_id(), False, flags, decision.trace_state)
        return trace.NonRecordingSpan(span_context)
