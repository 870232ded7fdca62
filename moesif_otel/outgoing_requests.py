"""``requests`` calls as Outgoing events, through opentelemetry-instrumentation-requests.

Its ``response_hook`` runs inside the CLIENT span, after ``Session.send`` returned: the body of a
normal call is then in memory (``response.content``); a ``stream=True`` body is not, and reading
it would take it from the app, so such a call is recorded without its response body. requests
has already undone any Content-Encoding of the body it hands over.

Redirects are followed inside the instrumented ``send``, where the instrumentation is suppressed:
one span per call of the app. It records the final exchange (``response.request`` and
``response``), the one whose answer the app got, so that URI, status and body belong together.
"""

from __future__ import annotations

import time
from typing import Any

from moesif_otel import attributes as A
from moesif_otel.internals import requests_read_content
from moesif_otel.outgoing import (
    OutgoingOptions,
    body_attributes,
    exchange_attributes,
    failed,
    header_pairs,
    is_moesif_sdk_call,
    request_started,
    run_hooks,
    take_over,
)

STREAM_NOTE = "not captured: stream=True, the app reads the body itself"
UPLOAD_NOTE = "not captured: streamed upload (file or iterator)"


def instrument(options: OutgoingOptions, tracer_provider: Any) -> bool:
    """Instrument requests with our hooks; False when requests or its instrumentation is missing."""
    try:
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
    except ImportError:
        return False
    instrumentor = RequestsInstrumentor()
    take_over(instrumentor, "requests")

    def response_hook(span: Any, request: Any, response: Any) -> None:
        record_response(span, request, response, options)

    instrumentor.instrument(
        tracer_provider=tracer_provider,
        request_hook=lambda span, request: request_started(span),
        response_hook=response_hook,
    )
    return bool(instrumentor.is_instrumented_by_opentelemetry)


def uninstrument() -> None:
    try:
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
    except ImportError:
        return
    instrumentor = RequestsInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def record_response(span: Any, request: Any, response: Any, options: OutgoingOptions) -> None:
    try:
        if not span.is_recording() or is_moesif_sdk_call(request.headers):
            return
        request = response.request or request  # the last hop, when redirects were followed
        attrs = exchange_attributes(
            str(request.method), str(request.url), header_pairs(request.headers.items()), response.status_code
        )
        attrs[A.MOESIF_RESPONSE_HEADERS] = header_pairs(response.headers.items())
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")  # what urllib3 sends for a str body
        if body is None or isinstance(body, (bytes, bytearray)):
            body_attributes(attrs, body, request=True, options=options)
        elif options.log_body:
            attrs[A.MOESIF_REQUEST_BODY_OMITTED] = UPLOAD_NOTE
        content = requests_read_content(response)
        if isinstance(content, bytes):  # read by requests (or the app) already
            body_attributes(attrs, content, request=False, options=options)
        elif options.log_body:
            attrs[A.MOESIF_RESPONSE_BODY_OMITTED] = STREAM_NOTE
        attrs[A.MOESIF_RESPONSE_TIME] = time.time_ns()
        if options.has_hooks:
            attrs.update(run_hooks(options, request, response))
        span.set_attributes(attrs)
    except Exception:
        failed("requests response hook")
