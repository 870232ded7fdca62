"""``requests`` calls as Outgoing events, through opentelemetry-instrumentation-requests.

Its ``response_hook`` runs inside the CLIENT span, after ``Session.send`` returned: the body of a
normal call is then in memory (``response.content``); a ``stream=True`` body is not, and reading
it would take it from the app, so such a call is recorded without its response body. requests
has already undone any Content-Encoding of the body it hands over.

The *_OUTGOING hooks need the response too, but must not lengthen the span: the response hook
records the exchange, and the hooks run (in the caller's thread and context) once the
instrumentation has ended the span, from its ``span.end()`` call; then the record is submitted.

Redirects are followed inside the instrumented ``send``, where the instrumentation is suppressed:
one span per call of the app. It records the final exchange (``response.request`` and
``response``), the one whose answer the app got, so that URI, status and body belong together.
"""

from __future__ import annotations

from typing import Any

from moesif_otel.internals import replace_span_end, requests_read_content, restore_span_end
from moesif_otel.outgoing_record import OutgoingCall, OutgoingOptions, failed, take_over

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

    def request_hook(span: Any, request: Any) -> None:
        OutgoingCall.start(options, span, getattr(request, "headers", None))

    instrumentor.instrument(
        tracer_provider=tracer_provider, request_hook=request_hook, response_hook=record_response
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


def record_response(span: Any, request: Any, response: Any) -> None:
    """Response hook: the exchange into the call; the hooks wait for the span's end."""
    try:
        call = OutgoingCall.take(span)
        if call is None:
            return
        request = response.request or request  # the last hop, when redirects were followed
        call.exchange(
            str(request.method),
            str(request.url),
            request.headers.items(),
            response.status_code,
            response.headers.items(),
        )
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")  # what urllib3 sends for a str body
        if body is None or isinstance(body, (bytes, bytearray)):
            call.body(body, request=True)
        else:
            call.omitted(UPLOAD_NOTE, request=True)
        content = requests_read_content(response)
        if isinstance(content, bytes):  # read by requests (or the app) already
            call.body(content, request=False)
        else:
            call.omitted(STREAM_NOTE, request=False)
        call.completed()
    except Exception:
        failed("requests response hook")
        return
    real_end = span.end

    def end(end_time: int | None = None) -> None:
        restore_span_end(span)
        real_end(end_time)
        call.finish(request, response)

    try:
        replace_span_end(span, end)
    except Exception:  # no way to run after the span's end: run the hooks now, inside it
        failed("requests response hook (span end)")
        call.finish(request, response)
