"""Outgoing capture: calls the app makes with ``requests`` (and httpx) become Outgoing events.

OTel's own client instrumentations open the CLIENT spans (so they nest under the server span and
carry its trace id); our request/response hooks add what Moesif needs as the same attributes the
server side writes, and the same processor and exporter deliver them, batched. Nothing here does
I/O or parsing: bodies are copied up to ``MAX_BODY_SIZE``, hooks run, attributes are set.

The instrumentations are process-wide singletons: one pipeline at a time receives outgoing calls,
the one enabled last. A ``requests``/httpx instrumentation set up by someone else (for instance
``opentelemetry-instrument``) is replaced by ours, on the pipeline's TracerProvider; hooks given to
it are lost. Every hook body is failsafe: the OTel hooks are not, and a raise would reach the app.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moesif_otel import attributes as A
from moesif_otel.asgi_scope import flat_headers
from moesif_otel.hooks import TIMED_OUT, Hook, capped_metadata_json, make_hook
from moesif_otel.logonce import LogOnce

if TYPE_CHECKING:
    from collections.abc import Iterable

    from moesif_otel.pipeline import Pipeline
    from moesif_otel.settings import Settings

logger = logging.getLogger("moesif_otel")

__all__ = ["OutgoingOptions", "disable_outgoing_capture", "enable_outgoing_capture", "outgoing_pipeline"]

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
    hook_timeout: float = 1.0  # HOOK_TIMEOUT: for the async hooks of one call together

    @classmethod
    def from_settings(cls, settings: Settings) -> OutgoingOptions:
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
        )

    @property
    def has_hooks(self) -> bool:
        return any(
            (self.identify_user, self.identify_company, self.get_session_token, self.get_metadata, self.skip)
        )

    def value_hooks(self) -> tuple[tuple[Hook, str], ...]:
        pairs = (
            (self.identify_user, A.USER_ID),
            (self.identify_company, A.MOESIF_COMPANY_ID),
            (self.get_session_token, A.MOESIF_SESSION_TOKEN),
        )
        return tuple((hook, name) for hook, name in pairs if hook is not None)


# --- enabling ------------------------------------------------------------------------------------

_lock = threading.Lock()
_active: Pipeline | None = None


def enable_outgoing_capture(pipeline: Pipeline) -> None:
    """Instrument requests (and httpx when installed) onto ``pipeline.tracer_provider``; idempotent.

    Enabling for another pipeline moves outgoing capture to it (the instrumentations are singletons).
    """
    global _active
    with _lock:
        if _active is pipeline:
            return
        if _active is not None:
            logger.info("moesif_otel: outgoing capture moves to a newer MoesifMiddleware/pipeline")
        _uninstrument_all()
        options = OutgoingOptions.from_settings(pipeline.settings)
        from moesif_otel import outgoing_httpx, outgoing_requests

        clients = [
            name
            for name, module in (("requests", outgoing_requests), ("httpx", outgoing_httpx))
            if module.instrument(options, pipeline.tracer_provider)
        ]
        _active = pipeline
    logger.debug("moesif_otel: capturing outgoing calls made with %s", ", ".join(clients) or "nothing")


def disable_outgoing_capture(pipeline: Pipeline | None = None) -> None:
    """Remove the instrumentations (only if ``pipeline``, when given, is the one capturing)."""
    global _active
    with _lock:
        if _active is None or (pipeline is not None and _active is not pipeline):
            return
        _uninstrument_all()
        _active = None


def outgoing_pipeline() -> Pipeline | None:
    """The pipeline that receives outgoing calls now, if any."""
    return _active


def _uninstrument_all() -> None:
    from moesif_otel import outgoing_httpx, outgoing_requests

    outgoing_requests.uninstrument()
    outgoing_httpx.uninstrument()


# --- what both clients record ----------------------------------------------------------------------


def take_over(instrumentor: Any, library: str) -> None:
    """Instrumentors are singletons: one already active (opentelemetry-instrument) is replaced."""
    if instrumentor.is_instrumented_by_opentelemetry:
        logger.info(
            "moesif_otel: %s was already instrumented (opentelemetry-instrument?); "
            "re-instrumenting it with moesif_otel's hooks on its TracerProvider",
            library,
        )
        instrumentor.uninstrument()


def header_pairs(items: Iterable[tuple[Any, Any]]) -> str:
    """Client headers (str or bytes) as the flat attribute capture writes.

    Latin-1 is lossless here: http.client cannot send, and never decodes, anything else.
    """
    return flat_headers(((_latin1(name), _latin1(value)) for name, value in items), None)


def _latin1(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("latin-1", "replace")


def is_moesif_sdk_call(headers: Any) -> bool:
    try:
        return headers is not None and MOESIF_SDK_HEADER in headers
    except Exception:
        return False


def body_attributes(
    attrs: dict[str, Any], data: bytes | bytearray | None, *, request: bool, options: OutgoingOptions
) -> None:
    """Size always; content up to the cap when LOG_BODY_OUTGOING."""
    if data is None:
        return
    size_key, content_key = (
        (A.HTTP_REQUEST_BODY_SIZE, A.HTTP_REQUEST_BODY_CONTENT)
        if request
        else (A.HTTP_RESPONSE_BODY_SIZE, A.HTTP_RESPONSE_BODY_CONTENT)
    )
    attrs[size_key] = len(data)
    if options.log_body and data:
        attrs[content_key] = bytes(data[: options.max_body_size])


def request_started(span: Any) -> None:
    """Request hook: note the start; no event until a response exists (a failed call is not an event)."""
    try:
        if span.is_recording():
            span.set_attributes({A.MOESIF_REQUEST_TIME: time.time_ns(), A.MOESIF_SKIP: True})
    except Exception:
        failed("request hook")


def exchange_attributes(method: str, uri: str, request_headers: str, status: int) -> dict[str, Any]:
    return {
        A.MOESIF_CAPTURED: True,
        A.MOESIF_DIRECTION: "Outgoing",
        A.MOESIF_SKIP: False,
        A.HTTP_REQUEST_METHOD: method,
        A.MOESIF_REQUEST_URI: uri,
        A.MOESIF_REQUEST_HEADERS: request_headers,
        A.HTTP_RESPONSE_STATUS_CODE: status,
    }


_failures = LogOnce(logger)


def failed(where: str) -> None:
    """Our own bug must not become the app's: log once per place, never raise."""
    _failures.warning(
        where, "moesif_otel: outgoing capture failed in the %s (logged once)", where, exc_info=True
    )


# --- hooks -----------------------------------------------------------------------------------------


def run_hooks(options: OutgoingOptions, request: Any, response: Any) -> dict[str, Any]:
    """The *_OUTGOING hooks from the calling thread (sync clients); their results as attributes."""
    budget = _Budget(options.hook_timeout)
    if options.skip is not None and budget.call(options.skip, request, response):
        return {A.MOESIF_SKIP: True}
    results: dict[str, Any] = {}
    for hook, name in options.value_hooks():
        value = budget.call(hook, request, response)
        if value is not None:
            results[name] = value
    if options.get_metadata is not None:
        value = budget.call(options.get_metadata, request, response)
        _metadata(options.get_metadata, value, results)
    return results


async def arun_hooks(options: OutgoingOptions, request: Any, response: Any) -> dict[str, Any]:
    """The same on the event loop (httpx.AsyncClient): async hooks are awaited there, all of them
    within HOOK_TIMEOUT; past it, the values still missing are left out."""
    budget = _Budget(options.hook_timeout)
    if options.skip is not None and await budget.acall(options.skip, request, response):
        return {A.MOESIF_SKIP: True}
    results: dict[str, Any] = {}
    for hook, name in options.value_hooks():
        value = await budget.acall(hook, request, response)
        if value is not None:
            results[name] = value
    if options.get_metadata is not None:
        _metadata(options.get_metadata, await budget.acall(options.get_metadata, request, response), results)
    return results


class _Budget:
    """HOOK_TIMEOUT shared by the hooks of one outgoing call."""

    __slots__ = ("deadline", "expired", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.expired = False

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _value(self, hook: Hook, value: Any) -> Any:
        if value is TIMED_OUT:
            self.expired = True
            hook.timed_out(self.timeout)
            return None
        return value

    def call(self, hook: Hook, *args: Any) -> Any:
        return None if self.expired else self._value(hook, call_hook(hook, *args, timeout=self._left()))

    async def acall(self, hook: Hook, *args: Any) -> Any:
        return None if self.expired else self._value(hook, await hook.acall(*args, timeout=self._left()))


def _metadata(hook: Hook, value: Any, results: dict[str, Any]) -> None:
    metadata = capped_metadata_json(hook, value) if value is not None else None
    if metadata is not None:
        results[A.MOESIF_METADATA] = metadata


_side_lock = threading.Lock()
_side: ThreadPoolExecutor | None = None


def call_hook(hook: Hook, *args: Any, timeout: float | None = None) -> Any:
    """``Hook.call``, except for an ``async def`` hook on a thread that runs an event loop.

    That happens when a blocking ``requests`` call sits in an ``async def`` endpoint: the loop is
    busy in the call, so the hook cannot run on it, nor on a second loop in the same thread.
    It runs on one side thread (with its own loop and the caller's context) while the caller waits.
    An awaitable hook gets at most ``timeout`` seconds; past it, :data:`TIMED_OUT`.
    """
    if not inspect.iscoroutinefunction(hook.fn):
        return hook.call(*args, timeout=timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return hook.call(*args, timeout=timeout)
    global _side
    with _side_lock:
        if _side is None:
            _side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesif-otel-hooks")
        side = _side
    context = contextvars.copy_context()
    return side.submit(context.run, lambda: hook.call(*args, timeout=timeout)).result()
