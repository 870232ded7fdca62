"""The SERVER span of an HTTP request, for the drop-in middleware.

OTel's ASGI middleware measured at about twice the per-request CPU of this module on the
benchmark app (most of it in collecting request attributes it then sets twice, and in per-message
bookkeeping for metrics that Moesif does not use), which alone put MoesifMiddleware below the
throughput targets. This opens the same kind of span — SERVER kind, the incoming trace context
honoured through the global propagator, the stable HTTP semantic-convention attributes — and
leaves the response side to :class:`~moesif_otel.capture.HttpCapture`, which already sees every
message: status code, route, error status, and the span's end when the response is complete.

Under FastAPIInstrumentor or ``opentelemetry-instrument`` their span is used instead (see
``MoesifMiddleware``), so nothing is traced twice.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import sanitize_method

from moesif_otel import attributes as A
from moesif_otel._version import __version__
from moesif_otel.capture import ASGIApp, Receive, Scope, Send

SCHEMA_URL = "https://opentelemetry.io/schemas/1.21.0"


class _ScopeHeaders(Getter[Scope]):
    """Reads propagation headers straight from the scope's raw header pairs."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [v.decode("latin-1") for n, v in carrier.get("headers", ()) if n.lower() == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [n.decode("latin-1") for n, _ in carrier.get("headers", ())]


_getter = _ScopeHeaders()


def request_attributes(scope: Scope) -> dict[str, Any]:
    """The request side of the HTTP server semantic conventions (stable names)."""
    method = scope.get("method") or "GET"
    sanitized = sanitize_method(method)
    attributes: dict[str, Any] = {
        A.HTTP_REQUEST_METHOD: sanitized,
        A.URL_SCHEME: scope.get("scheme") or "http",
        A.URL_PATH: scope.get("path") or "/",
        "network.protocol.version": scope.get("http_version") or "1.1",
    }
    if sanitized != method:
        attributes["http.request.method_original"] = method
    query = scope.get("query_string")
    if query:
        attributes[A.URL_QUERY] = query.decode("latin-1")
    host = None
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"host":
            host = value.decode("latin-1")
        elif lowered == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    if host:
        address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        attributes[A.SERVER_ADDRESS] = address or host
        if port.isdigit():
            attributes[A.SERVER_PORT] = int(port)
    elif scope.get("server"):
        attributes[A.SERVER_ADDRESS] = str(scope["server"][0])
        if scope["server"][1] is not None:
            attributes[A.SERVER_PORT] = int(scope["server"][1])
    client = scope.get("client")
    if client:
        attributes[A.CLIENT_ADDRESS] = str(client[0])
        if client[1] is not None:
            attributes["client.port"] = int(client[1])
    return attributes


class ServerSpan:
    """ASGI middleware: one SERVER span per HTTP request around ``app`` (HttpCapture)."""

    def __init__(self, app: ASGIApp, tracer_provider: trace.TracerProvider) -> None:
        self.app = app
        self.tracer = tracer_provider.get_tracer("moesif_otel", __version__, schema_url=SCHEMA_URL)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parent = propagate.extract(scope, getter=_getter)
        method = sanitize_method(scope.get("method") or "GET")
        span = self.tracer.start_span(
            "HTTP" if method == "_OTHER" else method,  # capture renames it once the route is known
            context=parent,
            kind=SpanKind.SERVER,
            attributes=request_attributes(scope),
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
            if span.is_recording():  # capture ends it when the response completes
                span.end()
