"""ASGI capture: tees one HTTP exchange into a record for the Moesif pipeline.

The layer sits *inside* whatever opens the server span (moesif_otel's ServerSpan in the drop-in,
FastAPIInstrumentor under auto-instrumentation), so the span is the current one. It keeps the
request path minimal: body chunks are appended up to a cap, headers are kept as the server's
pairs, nothing is decoded, parsed or serialised here — the exporter does that on its own thread.

What it captured (bodies, every header, the hooks' results) goes into an
:class:`~moesif_otel.event.CapturedRecord` handed straight to the Moesif processor
(``CaptureOptions.submit``), not onto the span. So the app's sampler decides about the span only
(a sampled-out span still yields its event, weight 1), the span ends when the response is complete
whatever the hooks do after it, and the app's other exporters see what OTel's own instrumentation
would put there: the span gets the response attributes on its own span (status, route, error), the
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` headers, and ``moesif.recorded`` so that the Moesif
processor skips it. ``CAPTURE_ON_SPAN`` writes bodies and all headers onto the span as well.

Hooks need the finished response, yet must not hold it back: the last message goes out first (on
an instrumentor's span, its middleware ends the span with it; capture ends its own span right
after), then the hooks run, then the record is submitted.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    SanitizeValue,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moesif_otel import attributes as A
from moesif_otel.appconfig import AppConfig, keep, weight_for
from moesif_otel.asgi_scope import flat_headers, request_headers, request_uri
from moesif_otel.event import CapturedRecord, body_value, sampled_context
from moesif_otel.governance import govern, request_facts
from moesif_otel.hook_metadata import metadata_steps
from moesif_otel.hooks import Hook, HookRun, Step, run_steps_inline
from moesif_otel.http_semconv import names as semconv_names
from moesif_otel.http_semconv import route_template
from moesif_otel.identity import user_id_from_authorization
from moesif_otel.transaction_ids import TRANSACTION_HEADER, request_transaction_id

logger = logging.getLogger("moesif_otel")

SCOPE_KEY = "moesif_otel.exchange"
_EMPTY_CONTEXT = context.Context()
# How long, at most, capture waits for request body the app never read.
_DRAIN_TIMEOUT = 1.0
# The span the innermost capture in this context records onto. An endpoint that calls another
# MoesifMiddleware-wrapped app in-process (TestClient, httpx.ASGITransport) runs that app with the
# outer request's span current: the inner request must get its own span, not write onto that one.
_CAPTURING: contextvars.ContextVar[Any] = contextvars.ContextVar("moesif_otel.capturing", default=None)


def joinable_server_span() -> bool:
    """True when the current span is the one an instrumentor (FastAPIInstrumentor,
    ``opentelemetry-instrument``) opened for this request, so that capture uses it instead of
    opening a second span (and recording the server metrics twice).

    A recording span is joined when it is a SERVER span no capture holds: a span some capture
    holds is an enclosing request's (an app called in-process from an endpoint), and any other
    kind is a user's. A span the app's sampler dropped tells no kind; it is joined when it was
    started in this process (not a remote parent) and no capture runs in this context at all, so
    that inside another captured request (where it may be any span of that request) the nested
    call still gets its own span."""
    span = trace.get_current_span()
    held = _CAPTURING.get()
    if span is held:
        return False
    if span.is_recording():
        return getattr(span, "kind", None) is SpanKind.SERVER
    span_context = span.get_span_context()
    return held is None and span_context.is_valid and not span_context.is_remote


@dataclass(frozen=True)
class SpanHeaders:
    """``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` / ``_RESPONSE`` and
    ``_SANITIZE_FIELDS``, read once: the ``http.request.header.*`` / ``http.response.header.*``
    attributes OTel's ASGI instrumentation writes, written the same way onto capture's own span."""

    request: list[str]
    response: list[str]
    sanitize: SanitizeValue

    @classmethod
    def from_env(cls) -> SpanHeaders | None:
        """None when neither header list is set: the request path then checks nothing."""
        request = get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST)
        response = get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE)
        if not request and not response:
            return None
        sanitize = SanitizeValue(
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
        )
        return cls(request, response, sanitize)

    def attributes(self, scope: Scope, response_headers: Any) -> dict[str, Any]:
        from opentelemetry.instrumentation.asgi import collect_custom_headers_attributes

        attrs: dict[str, Any] = {}
        if self.request:
            attrs.update(
                collect_custom_headers_attributes(
                    scope,  # type: ignore[arg-type]  # typed dict; reads only "headers"
                    self.sanitize,
                    self.request,
                    normalise_request_header_name,
                )
            )
        if self.response and response_headers:
            attrs.update(
                collect_custom_headers_attributes(
                    {"headers": response_headers},
                    self.sanitize,
                    self.response,
                    normalise_response_header_name,
                )
            )
        return attrs


@dataclass(frozen=True)
class CaptureOptions:
    log_body: bool = True
    max_body_size: int = 131_072
    transaction_id: bool = True
    identify_user: Hook | None = None
    identify_company: Hook | None = None
    get_session_token: Hook | None = None
    get_metadata: Hook | None = None
    skip: Hook | None = None
    # the Moesif app config in force (sampling, governance); None: keep everything, no rules
    app_config: Callable[[], AppConfig] | None = None
    authorization_header_names: tuple[str, ...] = ("authorization",)
    authorization_user_id_field: str = "sub"
    # seconds for all the hooks of one request together (HOOK_TIMEOUT)
    hook_timeout: float = 1.0
    # where each finished call's CapturedRecord goes (a Moesif processor's on_end); None: nowhere
    submit: Callable[[Any], None] | None = None
    # CAPTURE_ON_SPAN: bodies and all headers also onto the span, for the app's other exporters
    capture_on_span: bool = False
    # the headers capture's own span carries, as OTel's instrumentation would (None: none)
    span_headers: SpanHeaders | None = None

    @property
    def has_hooks(self) -> bool:
        return any(
            (self.identify_user, self.identify_company, self.get_session_token, self.get_metadata, self.skip)
        )


class HttpCapture:
    """ASGI middleware: one :class:`Exchange` per HTTP request that runs in a span (recording or
    not) no other capture holds."""

    def __init__(self, app: ASGIApp, options: CaptureOptions, *, owns_span: bool = False) -> None:
        self.app = app
        self.options = options
        # True under moesif_otel's own ServerSpan: capture then writes the response side of the
        # span (status, route, error) and ends it when the response completes
        self.owns_span = owns_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        if span is _CAPTURING.get() or not span.get_span_context().is_valid:
            # no span (a URL OTel's middleware excludes) or an enclosing request's: not ours
            await self.app(scope, receive, send)
            return
        if not self.owns_span and span.is_recording():
            # the instrumentor's span ends with the last message: the event comes as the record
            span.set_attribute(A.MOESIF_RECORDED, True)
        config = self.options.app_config() if self.options.app_config is not None else None
        exchange = Exchange(self.options, scope, span, receive, send, config, self.owns_span)
        # A marker, not the exchange: the exchange holds the scope, and the scope holding it back
        # would make every request a reference cycle (span and bodies included) that only the
        # garbage collector frees; its full collections were the benchmark's p99.
        scope[SCOPE_KEY] = True
        capturing = _CAPTURING.set(span)
        try:
            if config is not None and config.has_rules and await govern(exchange, config):
                return  # blocked: answered for the app, recorded like any response
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if not exchange.finished:
                if exchange.disconnected and exchange.response_headers is None:
                    # The client left before any response (mid-body, say) and got nothing, no
                    # 500: the app's exception (Starlette's ClientDisconnect) is its reaction to
                    # that, not a failure. Hooks and event see the disconnect (the event: 499).
                    await exchange.finish()
                else:
                    await exchange.finish(error=exc)
            raise
        except BaseException as exc:  # cancelled: no more awaiting, record what we have
            if not exchange.finished:
                exchange.record(error=exc)
            raise
        else:
            if not exchange.finished:
                # The app returned without completing the response (client went away, or a bug).
                await exchange.drain_request()
                await exchange.finish()
        finally:
            _CAPTURING.reset(capturing)


class Exchange:
    """What capture knows of one request/response."""

    __slots__ = (
        "_receive",
        "_replay",
        "_send",
        "aborted",
        "blocked_by",
        "company_id",
        "config",
        "disconnected",
        "extra_headers",
        "finished",
        "identified",
        "options",
        "owns_span",
        "request_body",
        "request_complete",
        "request_size",
        "response_body",
        "response_end_ns",
        "response_headers",
        "response_size",
        "scope",
        "span",
        "span_closed",
        "start_ns",
        "status",
        "transaction_id",
        "user_id",
    )

    def __init__(
        self,
        options: CaptureOptions,
        scope: Scope,
        span: Any,
        receive: Receive,
        send: Send,
        config: AppConfig | None = None,
        owns_span: bool = False,
    ) -> None:
        self.options = options
        self.scope = scope
        self.span = span
        # the request's start: the span's when it records one, else now (a sampled-out span)
        self.start_ns = getattr(span, "start_time", None) or time.time_ns()
        self.span_closed = False
        self._receive = receive
        self._send = send
        self.request_body = bytearray()
        self.request_size = 0
        # a bodyless request has nothing to drain: waiting on receive() for it cost a GET more
        # than the rest of capture (a task and a timer per request, and their garbage)
        self.request_complete = _bodyless(scope)
        self.disconnected = False
        self.response_body = bytearray()
        self.response_size = 0
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        self.response_end_ns = 0
        self.status = 0
        self.finished = False
        self.aborted = False
        self.transaction_id = request_transaction_id(scope) if options.transaction_id else None
        self.config = config
        self.owns_span = owns_span
        self._replay: list[Message] = []  # request messages read early (governance), for the app
        self.identified = False
        self.user_id: str | None = None
        self.company_id: str | None = None
        self.blocked_by: str | None = None
        self.extra_headers: tuple[tuple[str, str], ...] = ()

    # -- the request path --------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self._replay:
            return self._replay.pop(0)
        message = await self._receive()
        self._observe_request(message)
        return message

    async def read_request_body(self) -> None:
        """Read the request body now (up to the cap) and keep it for the app to receive later."""
        while not self.request_complete and not self.disconnected:
            if len(self.request_body) >= self.options.max_body_size:
                return
            message = await self._receive()
            self._observe_request(message)
            self._replay.append(message)

    def _observe_request(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                self.request_size += len(chunk)
                room = self.options.max_body_size - len(self.request_body)
                if self.options.log_body and room > 0:
                    self.request_body += chunk[:room]
            if not message.get("more_body", False):
                self.request_complete = True
        elif kind == "http.disconnect":
            self.disconnected = True

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = list(message.get("headers", ()))
            if self.extra_headers:  # governance headers of a rule that did not block
                names = {name.encode("latin-1") for name, _ in self.extra_headers}
                headers = [h for h in headers if h[0].lower() not in names]
                headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.extra_headers]
            if self.transaction_id is not None:
                headers = [h for h in headers if h[0].lower() != TRANSACTION_HEADER]
                headers.append((TRANSACTION_HEADER, self.transaction_id.encode("latin-1")))
            if self.extra_headers or self.transaction_id is not None:
                message = {**message, "headers": headers}
            self.status = message["status"]
            self.response_headers = headers
            await self._send(message)
            return
        if kind != "http.response.body" or self.finished:
            await self._send(message)
            return
        chunk = message.get("body", b"")
        if chunk and self.scope["method"] != "HEAD":  # servers send no body for HEAD
            self.response_size += len(chunk)
            room = self.options.max_body_size - len(self.response_body)
            if self.options.log_body and room > 0:
                self.response_body += chunk[:room]
        if message.get("more_body", False):
            await self._send(message)
            return
        await self.drain_request()  # while the request can still be read
        if self.owns_span:
            # complete the response, then end the span (hooks and background tasks that run
            # after the response are not part of it)
            await self._send_last(message)
            self.response_end_ns = time.time_ns()
            self._close_span(None)
        else:
            # an instrumentor's span ends with this message, in its middleware
            self._close_span(None)
            await self._send_last(message)
            self.response_end_ns = time.time_ns()
        await self.finish()

    async def _send_last(self, message: Message) -> None:
        """Send the message that completes the response with no OTel context attached.

        The client may have sent its next request on this connection (while the hooks ran, say);
        the server starts it from inside this call, and the task it starts copies the caller's
        context: with this request's span current, the next request would join it instead of
        getting its own. An attach, not a task in an empty context: no per-request task, and no
        asyncio-only call (apps run under trio too).
        """
        token = context.attach(_EMPTY_CONTEXT)
        try:
            await self._send(message)
        finally:
            context.detach(token)

    # -- completion -------------------------------------------------------------------------------

    async def finish(self, error: BaseException | None = None) -> None:
        """End the span (ours), run the hooks, submit the record."""
        self.finished = True
        if not self.response_end_ns:
            self.response_end_ns = time.time_ns()
        self._close_span(error)
        try:
            results = await self._complete(error)
        except Exception:  # our own bug must not become the app's
            logger.exception("moesif_otel: completing the event failed")
            results = {}
        self.record(error=error, hook_results=results)

    async def drain_request(self) -> None:
        """Read request body the app left unread, up to the cap, so the event still has it."""
        if not self.options.log_body or self.request_complete or self.disconnected:
            return
        # anyio's cancel scope, not asyncio.wait_for: the same under asyncio and trio, and one timer
        # where wait_for cost a task and a timer
        from anyio import move_on_after

        with move_on_after(_DRAIN_TIMEOUT):
            while (
                not self.request_complete
                and not self.disconnected
                and len(self.request_body) < self.options.max_body_size
            ):
                try:
                    message = await self._receive()
                except Exception:
                    return
                self._observe_request(message)

    async def identify(self, request: Any, response: Any) -> None:
        """User and company, once per request: the hooks, then the Authorization header."""
        options = self.options
        if options.identify_user is None and options.identify_company is None:
            run_steps_inline(self._identify_steps())
            return
        run = HookRun((request, response), options.hook_timeout)
        await run.drive(self._identify_steps)

    def _identify_steps(self) -> Step:
        """Yields each identity hook and receives its value (see HookRun)."""
        options = self.options
        user_id = company_id = None
        if options.identify_user is not None:
            user_id = yield options.identify_user
        if options.identify_company is not None:
            company_id = yield options.identify_company
        if user_id is None and self.config is not None and (self.config.has_rules or self.config.samples):
            user_id = user_id_from_authorization(
                request_headers(self.scope),
                options.authorization_header_names,
                options.authorization_user_id_field,
            )
        self.user_id, self.company_id, self.identified = user_id, company_id, True

    async def _complete(self, error: BaseException | None) -> dict[str, Any]:
        """The hooks under one time budget (HOOK_TIMEOUT), on the loop or off it (see HookRun)."""
        options = self.options
        results: dict[str, Any]
        if not options.has_hooks:
            results = run_steps_inline(self._steps(error))
            return results
        from moesif_otel.hook_args import hook_arguments  # starlette.requests kept off module load

        run = HookRun(hook_arguments(self, error), options.hook_timeout)
        results = await run.drive(lambda: self._steps(error))
        return results

    def _steps(self, error: BaseException | None) -> Step:
        """SKIP, identity, sampling, then the other hooks; the expensive parts only for kept events.
        Yields each hook and receives its value: one logic wherever the hooks run."""
        options = self.options
        if options.skip is not None and (yield options.skip):
            return {A.MOESIF_SKIP: True}
        if not self.identified:
            yield from self._identify_steps()
        results: dict[str, Any] = {}
        if self.user_id is not None:
            results[A.USER_ID] = self.user_id
        if self.company_id is not None:
            results[A.MOESIF_COMPANY_ID] = self.company_id
        config = self.config
        if config is not None and config.samples:
            status = self.status or (500 if error is not None else None)
            rate = config.sample_rate(request_facts(self), status)
            if rate < 100:
                if not keep(self.span.get_span_context().trace_id, rate):
                    return {A.MOESIF_SKIP: True, A.MOESIF_SAMPLED_OUT: True}
                results[A.MOESIF_WEIGHT] = weight_for(rate)
        if options.get_session_token is not None:
            token = yield options.get_session_token
            if token is not None:
                results[A.MOESIF_SESSION_TOKEN] = token
        if options.get_metadata is not None:
            value = yield options.get_metadata
            metadata = yield from metadata_steps(options.get_metadata, value)
            if metadata is not None:
                results[A.MOESIF_METADATA] = metadata
        if self.blocked_by is not None:
            results[A.MOESIF_BLOCKED_BY] = self.blocked_by
        return results

    def _outcome(self, error: BaseException | None) -> int:
        """The status the client got (0: none) and whether the response was cut short."""
        status = self.status
        if error is not None:
            self.aborted = self.response_headers is not None
            if not status:
                status = 500  # what the server answers for an unhandled exception
        elif self.response_headers is None or not self.response_end_ns or self.disconnected:
            self.aborted = self.response_headers is None or self.disconnected
            if self.response_headers is None and not self.disconnected:
                status = 500  # the app returned without a response: the server answers 500
        return status

    def _close_span(self, error: BaseException | None) -> None:
        """What the span carries (see the module docstring); capture's own span ends here. Once."""
        if self.span_closed:
            return
        self.span_closed = True
        span = self.span
        if not span.is_recording():
            return
        options = self.options
        attrs: dict[str, Any] = {}
        try:
            if self.owns_span:
                attrs[A.MOESIF_RECORDED] = True
                self._response_semconv(attrs, self._outcome(error), error)
                if options.span_headers is not None:
                    attrs.update(options.span_headers.attributes(self.scope, self.response_headers))
            if options.capture_on_span:
                self._captured_data(attrs, as_text=True)
            if attrs:
                span.set_attributes(attrs)
            if self.owns_span:
                if isinstance(error, Exception):  # as FastAPIInstrumentor does (ServerSpan finds it ended)
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                span.end()
        except Exception:
            logger.exception("moesif_otel: could not finish the request's span")

    def _captured_data(self, attrs: dict[str, Any], *, as_text: bool = False) -> None:
        """Bodies and complete header maps. For the record, as captured: the exporter's thread
        decodes them (on the event loop, turning headers into text was 2% of a request's CPU in the
        benchmark app). ``as_text`` (CAPTURE_ON_SPAN): as span attribute values."""
        body: Callable[[bytearray], str | bytes]
        if as_text:
            attrs[A.MOESIF_REQUEST_HEADERS] = flat_headers(self.scope.get("headers", ()), self.transaction_id)
            attrs[A.MOESIF_RESPONSE_HEADERS] = flat_headers(self.response_headers or (), None)
            body = body_value
        else:
            attrs[A.MOESIF_REQUEST_HEADERS] = tuple(self.scope.get("headers", ()))
            attrs[A.MOESIF_RESPONSE_HEADERS] = self.response_headers or ()  # capture's own list
            body = bytes
        if self.request_size:
            attrs[A.HTTP_REQUEST_BODY_SIZE] = self.request_size
        if self.response_size:
            attrs[A.HTTP_RESPONSE_BODY_SIZE] = self.response_size
        if self.request_body:
            attrs[A.HTTP_REQUEST_BODY_CONTENT] = body(self.request_body)
        if self.response_body:
            attrs[A.HTTP_RESPONSE_BODY_CONTENT] = body(self.response_body)

    def record(self, error: BaseException | None = None, hook_results: dict[str, Any] | None = None) -> None:
        """Hand everything known about the exchange to the Moesif pipeline, as a CapturedRecord."""
        self.finished = True
        self._close_span(error)
        submit = self.options.submit
        if submit is None or (hook_results and hook_results.get(A.MOESIF_SKIP)):
            return  # SKIPped or sampled out by the app config: not sent
        scope = self.scope
        status = self._outcome(error)
        end_ns = self.response_end_ns or time.time_ns()
        attrs: dict[str, Any] = {
            A.MOESIF_CAPTURED: True,
            A.MOESIF_RESPONSE_TIME: end_ns,
            A.HTTP_REQUEST_METHOD: scope.get("method", "GET"),
            A.MOESIF_REQUEST_URI: request_uri(scope),
        }
        self._captured_data(attrs)
        client = scope.get("client")
        if client:
            attrs[A.CLIENT_ADDRESS] = str(client[0])
        if status:
            attrs[A.HTTP_RESPONSE_STATUS_CODE] = status
        if self.transaction_id is not None:
            attrs[A.MOESIF_TRANSACTION_ID] = self.transaction_id
        if not self.request_complete and not self.disconnected and self.options.log_body and error is None:
            # the app did not read it all and the drain gave up: what we have is partial
            attrs[A.MOESIF_REQUEST_BODY_TRUNCATED] = True
        if self.aborted:
            attrs[A.MOESIF_ABORTED] = True
        if error is not None:
            attrs[A.MOESIF_ERROR] = type(error).__qualname__
        if hook_results:
            attrs.update(hook_results)
        try:
            submit(CapturedRecord(attrs, sampled_context(self.span), SpanKind.SERVER, self.start_ns, end_ns))
        except Exception:
            logger.exception("moesif_otel: could not hand the event to the Moesif pipeline")

    def _response_semconv(self, attrs: dict[str, Any], status: int, error: BaseException | None) -> None:
        """The response side of the span moesif_otel opened: route, name, error status, under the
        names of ``OTEL_SEMCONV_STABILITY_OPT_IN`` (the request side was set at its start)."""
        route = route_template(self.scope)
        if route:
            attrs[A.HTTP_ROUTE] = route
            self.span.update_name(f"{getattr(self.span, 'name', 'HTTP')} {route}")  # "GET /api/items/{id}"
        new = semconv_names.new
        if status:
            if new:
                attrs[A.HTTP_RESPONSE_STATUS_CODE] = status
            if semconv_names.old:
                attrs[A.OLD_HTTP_STATUS_CODE] = status
        if error is not None or status >= 500:
            if new:
                attrs[A.ERROR_TYPE] = type(error).__qualname__ if error is not None else str(status)
            self.span.set_status(Status(StatusCode.ERROR))


def flush_before_shutdown_complete(
    receive: Receive, send: Send, flush: Callable[[], object], on_shutdown: Callable[[], object] | None = None
) -> tuple[Receive, Send]:
    """Wrap a lifespan's ``receive`` and ``send``: run ``flush`` (bounded, off the loop) before the
    server is told the app has shut down, since the server exits right after that message.

    ``on_shutdown`` runs as the server's ``lifespan.shutdown`` arrives, before the app's own shutdown
    handlers: the first moment the process is known to be ending, where the shutdown clock starts
    (the server's stop, the app's handlers and the flush all fit within SHUTDOWN_TIMEOUT then).
    """
    from anyio import to_thread  # asyncio or trio; imported now, not under load at shutdown

    async def lifespan_receive() -> Message:
        message = await receive()
        if on_shutdown is not None and message["type"] == "lifespan.shutdown":
            on_shutdown()
        return message

    async def lifespan_send(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            await to_thread.run_sync(flush)
        await send(message)

    return lifespan_receive, lifespan_send


def _bodyless(scope: Scope) -> bool:
    """HTTP/1 framing (RFC 9112, 6.3): without Content-Length or Transfer-Encoding, or with a
    Content-Length of 0, a request has no body. HTTP/2 and 3 frame bodies without either header."""
    if scope.get("http_version") not in ("1.1", "1.0"):
        return False
    name: bytes
    value: bytes
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return False
        if lowered == b"content-length":
            return value.strip() == b"0"
    return True
