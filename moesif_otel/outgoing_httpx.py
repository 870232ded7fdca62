"""httpx calls (``Client`` and ``AsyncClient``) as Outgoing events, via opentelemetry-instrumentation-httpx.

The instrumentation wraps the transport, so its response hook sees the response before anyone
has read its body, and ends the span right after, as OTel does without us. To record the body
without taking it from the app, the hook tees the transport's byte stream (bounded, as the app
reads it); the call is complete when the stream is closed — which httpx does once the body was
read, for ``stream=True`` when the app closes the response. Then the hooks run (in the app's
thread, or task for ``AsyncClient``) and the record is submitted. A response the app never closes
is recorded when it is garbage collected. The tee sees the bytes as sent, so a compressed body is
recorded compressed, with its Content-Encoding header, as on the server side.

With ``CAPTURE_ON_SPAN`` the span's end is held back until the stream is closed, so that the body
can be written onto it; it ends before the hooks run.

The *_OUTGOING hooks receive an ``httpx.Request`` and an ``httpx.Response`` rebuilt from what was
captured (bodies up to ``MAX_BODY_SIZE``): reading them never touches the app's stream.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from moesif_otel import attributes as A
from moesif_otel.internals import (
    httpx_transport_stream,
    replace_span_end,
    restore_span_end,
    set_httpx_transport_stream,
)
from moesif_otel.outgoing_record import OutgoingCall, OutgoingOptions, failed, take_over

UPLOAD_NOTE = "not captured: streamed upload"
PARTIAL_NOTE = "not captured: the app closed the response before reading all of it"
UNREAD_NOTE = "not captured: the response was never closed"
NO_TEE_NOTE = "not captured: unknown httpx transport stream"


def instrument(options: OutgoingOptions, tracer_provider: Any) -> bool:
    """Instrument httpx with our hooks; False when httpx or its instrumentation is not installed."""
    try:
        import httpx  # noqa: F401
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        return False
    instrumentor = HTTPXClientInstrumentor()
    take_over(instrumentor, "httpx")

    def request_hook(span: Any, request: Any) -> None:
        OutgoingCall.start(options, span, request.headers)

    async def async_request_hook(span: Any, request: Any) -> None:
        OutgoingCall.start(options, span, request.headers)

    def response_hook(span: Any, request: Any, response: Any) -> None:
        start_recording(span, request, response, asynchronous=False)

    async def async_response_hook(span: Any, request: Any, response: Any) -> None:
        start_recording(span, request, response, asynchronous=True)

    instrumentor.instrument(
        tracer_provider=tracer_provider,
        request_hook=request_hook,
        response_hook=response_hook,
        async_request_hook=async_request_hook,
        async_response_hook=async_response_hook,
    )
    return bool(instrumentor.is_instrumented_by_opentelemetry)


def uninstrument() -> None:
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        return
    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def start_recording(span: Any, request: Any, response: Any, *, asynchronous: bool) -> None:
    """Response hook: tee the body stream; the call completes when the app is done with it."""
    try:
        call = OutgoingCall.take(span)
        if call is None:
            return
        pending = PendingResponse(call, request, response)
        stream = response.stream
        inner = httpx_transport_stream(stream)
        if inner is None:  # not httpx's own transport stream: record what is known now
            call.omitted(NO_TEE_NOTE, request=False)
            pending.complete = True
            pending.finish()
            return
        tee = AsyncTee(inner, pending) if asynchronous else SyncTee(inner, pending)
        set_httpx_transport_stream(stream, tee)
        pending.finalizer = weakref.finalize(stream, pending.finish, abandoned=True)
        if call.options.capture_on_span and span.is_recording():
            pending.real_end = span.end
            replace_span_end(span, pending.instrumentation_end)  # the body goes onto it first
    except Exception:
        failed("httpx response hook")


def _raw(headers: Any) -> Any:
    return getattr(headers, "raw", headers) or ()


class PendingResponse:
    """One response whose record waits for its body."""

    def __init__(self, call: OutgoingCall, request: Any, response: Any) -> None:
        self.call = call
        self.options = call.options
        self.real_end: Any = None  # CAPTURE_ON_SPAN: the span's end, held back until the body is in
        self.method = request.method.decode("ascii", "replace")
        self.url = str(request.url)
        self.request_headers = _raw(request.headers)
        self.response_headers = _raw(response.headers)
        self.status = int(response.status_code)
        call.exchange(self.method, self.url, self.request_headers, self.status, self.response_headers)
        self.request_body = self._request_body(request.stream)
        self.body = bytearray()
        self.size = 0
        self.complete = False
        self.finalizer: Any = None
        self._lock = threading.Lock()
        self._ended = False  # the instrumentation is done with the span
        self._recorded = False

    def _request_body(self, stream: Any) -> bytes | None:
        import httpx

        if stream is None or isinstance(stream, httpx.ByteStream):
            body = b"".join(stream) if stream is not None else b""  # a ByteStream re-iterates its bytes
            self.call.body(body, request=True)
            return body[: self.options.max_body_size]
        self.call.omitted(UPLOAD_NOTE, request=True)
        return None

    # -- as the app reads ------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.options.max_body_size - len(self.body)
        if room > 0:
            self.body += chunk[:room]

    def instrumentation_end(self, end_time: int | None = None) -> None:
        restore_span_end(self.call.span)
        with self._lock:
            self._ended = True
            recorded = self._recorded
        if recorded:
            self.real_end()

    # -- when the stream is closed -----------------------------------------------------------------

    def _claim(self, abandoned: bool) -> bool:
        """The body is in (or never will be): complete the call and end a held span, once."""
        with self._lock:
            if self._recorded:
                return False
            self._recorded = True
        if self.finalizer is not None:
            self.finalizer.detach()
        try:
            self._body(abandoned)
            self.call.completed()
        except Exception:
            failed("httpx response recording")
        with self._lock:
            ended = self._ended
        if ended and self.real_end is not None:
            self.real_end()
        return True

    def _body(self, abandoned: bool) -> None:
        call = self.call
        if A.MOESIF_RESPONSE_BODY_OMITTED in call.attrs:
            return
        if self.complete:
            call.body(bytes(self.body), request=False)
            call.attrs[A.HTTP_RESPONSE_BODY_SIZE] = self.size
        else:
            call.omitted(UNREAD_NOTE if abandoned else PARTIAL_NOTE, request=False)

    def finish(self, abandoned: bool = False) -> None:
        """Sync client (or garbage collection): hooks on this thread, then the record."""
        if self._claim(abandoned):
            self.call.finish(*self._hook_arguments())

    async def afinish(self) -> None:
        """AsyncClient: the same, the hooks run as capture runs them on the app's loop."""
        if self._claim(False):
            await self.call.afinish(*self._hook_arguments())

    def _hook_arguments(self) -> tuple[Any, ...]:
        if not self.options.has_hooks:
            return ()
        try:
            return self._rebuilt()
        except Exception:
            failed("httpx hook arguments")
            return (None, None)

    def _rebuilt(self) -> tuple[Any, Any]:
        import httpx

        request = httpx.Request(
            self.method,
            self.url,
            headers=self.request_headers,
            stream=httpx.ByteStream(self.request_body or b""),
        )
        request.read()
        body = bytes(self.body) if self.complete else b""
        response = httpx.Response(
            self.status, headers=self.response_headers, stream=httpx.ByteStream(body), request=request
        )
        try:
            response.read()  # undoes Content-Encoding, as for the app
        except Exception:  # a body cut at the capture limit does not decompress
            response = httpx.Response(
                self.status, headers=self.response_headers, stream=httpx.ByteStream(b""), request=request
            )
            response.read()
        return request, response


class SyncTee:
    """Stands in for the transport's byte stream: passes every chunk on, keeps a bounded copy."""

    def __init__(self, inner: Any, pending: PendingResponse) -> None:
        self._inner = inner
        self._pending = pending

    def __iter__(self) -> Iterator[bytes]:
        pending = self._pending
        for chunk in self._inner:
            try:
                pending.feed(chunk)
            except Exception:
                failed("httpx body tee")
            yield chunk
        pending.complete = True

    def close(self) -> None:
        try:
            if hasattr(self._inner, "close"):
                self._inner.close()
        finally:
            self._pending.finish()


class AsyncTee:
    def __init__(self, inner: Any, pending: PendingResponse) -> None:
        self._inner = inner
        self._pending = pending

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = self._pending
        async for chunk in self._inner:
            try:
                pending.feed(chunk)
            except Exception:
                failed("httpx body tee")
            yield chunk
        pending.complete = True

    async def aclose(self) -> None:
        try:
            if hasattr(self._inner, "aclose"):
                await self._inner.aclose()
        finally:
            await self._pending.afinish()
