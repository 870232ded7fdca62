"""What both outgoing clients share: options, the call being recorded, its hooks and its record.

A leaf for :mod:`moesif_otel.outgoing_requests` and :mod:`moesif_otel.outgoing_httpx` (and for
:mod:`moesif_otel.outgoing`, which imports them): it imports none of them.

An outgoing call reaches Moesif as a :class:`~moesif_otel.event.CapturedRecord` handed to the
pipeline (``OutgoingOptions.submit``), never as OTel's CLIENT span, exactly as capture does for
incoming calls. So the app's sampler decides about the span only (a sampled-out call still
yields its event, weight 1: the instrumentations call the hooks for non-recording spans too),
the *_OUTGOING hooks run after the span ended, and the app's other exporters see OTel's own
attributes plus ``moesif.recorded`` (which keeps the span from becoming a second event);
``CAPTURE_ON_SPAN`` writes bodies and all headers onto the span as well.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind

from moesif_otel import attributes as A
from moesif_otel.asgi_scope import flat_headers
from moesif_otel.event import CapturedRecord, body_value, sampled_context
from moesif_otel.hook_metadata import metadata_steps
from moesif_otel.hooks import Hook, HookRun, Step, make_hook, run_steps_inline
from moesif_otel.logonce import LogOnce

if TYPE_CHECKING:
    from collections.abc import Callable

    from moesif_otel.settings import Settings

logger = logging.getLogger("moesif_otel")

# Calls made by a Moesif SDK (moesifapi) carry the collector's application-id header: they are the
# app talking to Moesif's collector API, not an API call of the app. Decided by header, never by host.
MOESIF_SDK_HEADER = "x-moesif-application-id"


@dataclass(frozen=True)
class OutgoingOptions:
    log_body: bool = True
    max_body_size: int = 131_072
    identify_user: Hook | None = None
    identify_company: Hook | None = None
    get_session_token: Hook | None = None
    get_metadata: Hook | None = None
    skip: Hook | None = None
    hook_timeout: float = 1.0  # HOOK_TIMEOUT: for the hooks of one call together
    # where each finished call's CapturedRecord goes (a Moesif processor's on_end); None: nowhere
    submit: Callable[[Any], None] | None = None
    # CAPTURE_ON_SPAN: bodies and all headers also onto the CLIENT span, for the app's other exporters
    capture_on_span: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, submit: Callable[[Any], None] | None = None
    ) -> OutgoingOptions:
        return cls(
            log_body=settings.log_body_outgoing,
            max_body_size=settings.max_body_size,
            identify_user=make_hook("IDENTIFY_USER_OUTGOING", settings.identify_user_outgoing, "text"),
            identify_company=make_hook(
                "IDENTIFY_COMPANY_OUTGOING", settings.identify_company_outgoing, "text"
            ),
            get_session_token=make_hook(
                "GET_SESSION_TOKEN_OUTGOING", settings.get_session_token_outgoing, "text"
            ),
            get_metadata=make_hook("GET_METADATA_OUTGOING", settings.get_metadata_outgoing, "mapping"),
            skip=make_hook("SKIP_OUTGOING", settings.skip_outgoing, "flag"),
            hook_timeout=settings.hook_timeout,
            submit=submit,
            capture_on_span=settings.capture_on_span,
        )

    @property
    def has_hooks(self) -> bool:
        return any(
            (self.identify_user, self.identify_company, self.get_session_token, self.get_metadata, self.skip)
        )

    def steps(self) -> Step:
        """SKIP_OUTGOING, then the value hooks; yields each hook and receives its value (see HookRun)."""
        if self.skip is not None and (yield self.skip):
            return {A.MOESIF_SKIP: True}
        results: dict[str, Any] = {}
        for hook, name in (
            (self.identify_user, A.USER_ID),
            (self.identify_company, A.MOESIF_COMPANY_ID),
            (self.get_session_token, A.MOESIF_SESSION_TOKEN),
        ):
            if hook is not None:
                value = yield hook
                if value is not None:
                    results[name] = value
        if self.get_metadata is not None:
            value = yield self.get_metadata
            metadata = yield from metadata_steps(self.get_metadata, value)
            if metadata is not None:
                results[A.MOESIF_METADATA] = metadata
        return results


def take_over(instrumentor: Any, library: str) -> None:
    """Instrumentors are singletons: one already active (opentelemetry-instrument) is replaced."""
    if instrumentor.is_instrumented_by_opentelemetry:
        logger.info(
            "moesif_otel: %s was already instrumented (opentelemetry-instrument?); "
            "re-instrumenting it with moesif_otel's hooks on its TracerProvider",
            library,
        )
        instrumentor.uninstrument()


def is_moesif_sdk_call(headers: Any) -> bool:
    try:
        return headers is not None and MOESIF_SDK_HEADER in headers
    except Exception:
        return False


_failures = LogOnce(logger)


def failed(where: str) -> None:
    """Our own bug must not become the app's: log once per place, never raise."""
    _failures.warning(
        where, "moesif_otel: outgoing capture failed in the %s (logged once)", where, exc_info=True
    )


# The call whose request hook ran last in this context, until its response hook takes it: the two
# hooks of one call run in the same thread (or task) and context, and the span may not record.
_STARTED: contextvars.ContextVar[OutgoingCall | None] = contextvars.ContextVar(
    "moesif_otel.outgoing_call", default=None
)


class OutgoingCall:
    """One outgoing call: its start (kept here, not on the span), then what was captured of it."""

    __slots__ = ("attrs", "end_ns", "options", "span", "start_ns")

    def __init__(self, options: OutgoingOptions, span: Span) -> None:
        self.options = options
        self.span = span
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.attrs: dict[str, Any] = {}

    @classmethod
    def start(cls, options: OutgoingOptions, span: Span, headers: Any) -> None:
        """Request hook: note the start; no event until a response exists (a failed call is not one).

        The span is marked ``moesif.recorded`` (the call comes as a record, the span is not an
        event), a Moesif SDK call's too (never an event)."""
        try:
            if span.is_recording():
                span.set_attribute(A.MOESIF_RECORDED, True)
            _STARTED.set(None if is_moesif_sdk_call(headers) else cls(options, span))
        except Exception:
            failed("request hook")

    @staticmethod
    def take(span: Span) -> OutgoingCall | None:
        """Response hook: the call the request hook started for ``span``, once."""
        call = _STARTED.get()
        if call is None:
            return None
        _STARTED.set(None)
        return call if call.span is span else None

    def exchange(
        self, method: str, uri: str, request_headers: Any, status: int, response_headers: Any
    ) -> None:
        """The exchange's head; headers as (name, value) pairs, str or bytes."""
        self.attrs.update(
            {
                A.MOESIF_CAPTURED: True,
                A.MOESIF_DIRECTION: "Outgoing",
                A.HTTP_REQUEST_METHOD: method,
                A.MOESIF_REQUEST_URI: uri,
                A.MOESIF_REQUEST_HEADERS: flat_headers(request_headers, None),
                A.HTTP_RESPONSE_STATUS_CODE: status,
                A.MOESIF_RESPONSE_HEADERS: flat_headers(response_headers, None),
            }
        )

    def body(self, data: bytes | bytearray | None, *, request: bool) -> None:
        """Size always; content up to the cap when LOG_BODY_OUTGOING."""
        if data is None:
            return
        size_key, content_key = (
            (A.HTTP_REQUEST_BODY_SIZE, A.HTTP_REQUEST_BODY_CONTENT)
            if request
            else (A.HTTP_RESPONSE_BODY_SIZE, A.HTTP_RESPONSE_BODY_CONTENT)
        )
        self.attrs[size_key] = len(data)
        if self.options.log_body and data:
            self.attrs[content_key] = bytes(data[: self.options.max_body_size])

    def omitted(self, note: str, *, request: bool) -> None:
        if self.options.log_body:
            self.attrs[A.MOESIF_REQUEST_BODY_OMITTED if request else A.MOESIF_RESPONSE_BODY_OMITTED] = note

    def completed(self) -> None:
        """The exchange is complete: its response time; with CAPTURE_ON_SPAN, what was captured
        onto the span (before the span ends)."""
        self.end_ns = time.time_ns()
        if self.options.capture_on_span:
            try:
                if self.span.is_recording():
                    self.span.set_attributes(
                        {
                            k: body_value(v) if type(v) is bytes else v
                            for k, v in self.attrs.items()
                            if k in _ON_SPAN
                        }
                    )
            except Exception:
                failed("CAPTURE_ON_SPAN")

    # -- after the span ended: the hooks, then the record ----------------------------------------

    def finish(self, *hook_args: Any) -> None:
        """From the caller's thread (blocking clients, garbage collection)."""
        try:
            options = self.options
            if options.has_hooks:
                results = HookRun(hook_args, options.hook_timeout).run(options.steps)
            else:
                results = run_steps_inline(options.steps())
            self.submit(results)
        except Exception:
            failed("outgoing hooks")

    async def afinish(self, *hook_args: Any) -> None:
        """On the app's event loop (httpx.AsyncClient): as capture runs its hooks."""
        try:
            options = self.options
            if options.has_hooks:
                results = await HookRun(hook_args, options.hook_timeout).drive(options.steps)
            else:
                results = run_steps_inline(options.steps())
            self.submit(results)
        except Exception:
            failed("outgoing hooks")

    def submit(self, results: dict[str, Any]) -> None:
        submit = self.options.submit
        if submit is None or results.get(A.MOESIF_SKIP):
            return  # SKIP_OUTGOING
        attrs = self.attrs
        end_ns = self.end_ns or time.time_ns()
        attrs[A.MOESIF_RESPONSE_TIME] = end_ns
        attrs.update(results)
        try:
            submit(CapturedRecord(attrs, sampled_context(self.span), SpanKind.CLIENT, self.start_ns, end_ns))
        except Exception:
            failed("hand-over to the Moesif pipeline")


# What CAPTURE_ON_SPAN adds to the CLIENT span: what capture adds to the server span.
_ON_SPAN = frozenset(
    (
        A.MOESIF_REQUEST_HEADERS,
        A.MOESIF_RESPONSE_HEADERS,
        A.HTTP_REQUEST_BODY_SIZE,
        A.HTTP_RESPONSE_BODY_SIZE,
        A.HTTP_REQUEST_BODY_CONTENT,
        A.HTTP_RESPONSE_BODY_CONTENT,
    )
)
