"""httpx calls (``Client`` and ``AsyncClient``) as Outgoing events, via opentelemetry-instrumentation-httpx.

The instrumentation wraps the transport, so its response hook sees the response before anyone
has read its body, and ends the span right after. To record the body without taking it from the
app, the hook tees the transport's byte stream (bounded, as the app reads it) and holds the
span's end back until the stream is closed — which httpx does once the body was read, for
``stream=True`` when the app closes the response. The span then ends with the body, the response
time and the hooks' results on it. A response the app never closes is recorded when it is garbage
collected. The tee sees the bytes as sent, so a compressed body is recorded compressed, with its
Content-Encoding header, as on the server side.

The *_OUTGOING hooks receive an ``httpx.Request`` and an ``httpx.Response`` rebuilt from what was
captured (bodies up to ``MAX_BODY_SIZE``): reading them never touches the app's stream.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from moesif_otel import attributes as A
from moesif_otel.internals import httpx_transport_stream, replace_span_end, set_httpx_transport_stream
from moesif_otel.outgoing import (
    OutgoingOptions,
    arun_hooks,
    body_attributes,
    exchange_attributes,
    failed,
    header_pairs,
    is_moesif_sdk_call,
    request_started,
    run_hooks,
    take_over,
)

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
        request_started(span)

    async def async_request_hook(span: Any, request: Any) -> None:
        request_started(span)

    def response_hook(span: Any, request: Any, response: Any) -> None:
        start_recording(span, request, response, options, asynchronous=False)

    async def async_response_hook(span: Any, request: Any, response: Any) -> None:
        start_recording(span, request, response, options, asynchronous=True)

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


def start_recording(
    span: Any, request: Any, response: Any, options: OutgoingOptions, *, asynchronous: bool
) -> None:
    """Response hook: tee the body stream and hold the span open until the app is done with it."""
    try:
        if not span.is_recording() or is_moesif_sdk_call(request.headers):
            return
        pending = PendingResponse(span, request, response, options)
        stream = response.stream
        inner = httpx_transport_stream(stream)
        if inner is None:  # not httpx's own transport stream: record what is known now
            pending.attrs[A.MOESIF_RESPONSE_BODY_OMITTED] = NO_TEE_NOTE
            pending.complete = True
            pending.finish()
            return
        tee = AsyncTee(inner, pending) if asynchronous else SyncTee(inner, pending)
        set_httpx_transport_stream(stream, tee)
        pending.finalizer = weakref.finalize(stream, pending.finish, abandoned=True)
        replace_span_end(span, pending.instrumentation_end)  # the real end comes with the body
    except Exception:
        failed("httpx response hook")


def _raw(headers: Any) -> Any:
    return getattr(headers, "raw", headers) or ()


class PendingResponse:
    """One response whose span waits for its body."""

    def __init__(self, span: Any, request: Any, response: Any, options: OutgoingOptions) -> None:
        self.span = span
        self.real_end = span.end
        self.options = options
        self.method = request.method.decode("ascii", "replace")
        self.url = str(request.url)
        self.request_headers = _raw(request.headers)
        self.response_headers = _raw(response.headers)
        self.status = int(response.status_code)
        self.attrs = exchange_attributes(
            self.method, self.url, header_pairs(self.request_headers), self.status
        )
        self.attrs[A.MOESIF_RESPONSE_HEADERS] = header_pairs(self.response_headers)
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
            body_attributes(self.attrs, body, request=True, options=self.options)
            return body[: self.options.max_body_size]
        if self.options.log_body:
            self.attrs[A.MOESIF_REQUEST_BODY_OMITTED] = UPLOAD_NOTE
        return None

    # -- as the app reads ------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.options.max_body_size - len(self.body)
        if room > 0:
            self.body += chunk[:room]

    def instrumentation_end(self, end_time: int | None = None) -> None:
        with self._lock:
            self._ended = True
            recorded = self._recorded
        if recorded:
            self.real_end()

    # -- when the stream is closed -----------------------------------------------------------------

    def _claim(self) -> bool:
        with self._lock:
            if self._recorded:
                return False
            self._recorded = True
        if self.finalizer is not None:
            self.finalizer.detach()
        return True

    def _body_attributes(self, abandoned: bool) -> dict[str, Any]:
        attrs = self.attrs
        attrs[A.MOESIF_RESPONSE_TIME] = time.time_ns()
        if A.MOESIF_RESPONSE_BODY_OMITTED in attrs:
            return attrs
        if self.complete:
            attrs[A.HTTP_RESPONSE_BODY_SIZE] = self.size
            if self.options.log_body and self.body:
                attrs[A.HTTP_RESPONSE_BODY_CONTENT] = bytes(self.body)
        elif self.options.log_body:
            attrs[A.MOESIF_RESPONSE_BODY_OMITTED] = UNREAD_NOTE if abandoned else PARTIAL_NOTE
        return attrs

    def finish(self, abandoned: bool = False) -> None:
        """Sync client (or garbage collection): hooks on this thread, then the span ends."""
        if not self._claim():
            return
        try:
            attrs = self._body_attributes(abandoned)
            if self.options.has_hooks:
                attrs.update(run_hooks(self.options, *self._hook_arguments()))
            self.span.set_attributes(attrs)
        except Exception:
            failed("httpx response recording")
        self._end()

    async def afinish(self) -> None:
        """AsyncClient: the same, async hooks awaited on the app's loop."""
        if not self._claim():
            return
        try:
            attrs = self._body_attributes(False)
            if self.options.has_hooks:
                attrs.update(await arun_hooks(self.options, *self._hook_arguments()))
            self.span.set_attributes(attrs)
        except Exception:
            failed("httpx response recording")
        self._end()

    def _end(self) -> None:
        with self._lock:
            ended = self._ended
        if ended:
            self.real_end()

    def _hook_arguments(self) -> tuple[Any, Any]:
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
