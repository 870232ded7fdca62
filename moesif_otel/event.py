"""Finished span → Moesif event, on the exporter's thread.

The event is built as the JSON document the collector receives: that is all most exports need,
and it costs a fraction of building moesifapi models. ``MASK_EVENT_MODEL`` hooks receive an
``EventModel`` (:func:`to_event_model`) and the result is turned back (:func:`from_event_model`).

Capture hands each call to the pipeline as a :class:`CapturedRecord` (not as a span: the app's
sampler, span timing and other exporters stay OTel's), with everything under the names of
:mod:`moesif_otel.attributes`; the span it ran under is marked ``moesif.recorded`` and skipped.
Plain OTel HTTP server spans (an existing pipeline without capture) are mapped from the semantic
conventions, old and stable, so they still become events — without bodies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, final

from moesifapi.models import EventModel, EventRequestModel, EventResponseModel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags

from moesif_otel import attributes as A
from moesif_otel.asgi_scope import header_dict
from moesif_otel.body import EncodedBody, encode_body, remove_keys
from moesif_otel.identity import client_ip, user_id_from_authorization
from moesif_otel.internals import span_attribute_dict
from moesif_otel.transaction_ids import TRANSACTION_HEADER_NAME, new_transaction_id
from moesif_otel.types import Direction

_METHOD_KEYS = (A.HTTP_REQUEST_METHOD, A.OLD_HTTP_METHOD)
_STATUS_KEYS = (A.HTTP_RESPONSE_STATUS_CODE, A.OLD_HTTP_STATUS_CODE)
CLIENT_CLOSED_REQUEST = 499
_MIN_BODY_LIMIT = 1_048_576  # decoded bodies may grow past the capture cap; the event limit bounds them


@dataclass(frozen=True)
class EventOptions:
    api_version: str | None = None
    authorization_header_names: tuple[str, ...] = ("authorization",)
    authorization_user_id_field: str = "sub"
    max_body_size: int = 131_072
    # REQUEST_BODY_MASKS / RESPONSE_BODY_MASKS: keys removed from outgoing calls' JSON bodies
    request_body_masks: frozenset[str] = frozenset()
    response_body_masks: frozenset[str] = frozenset()
    # JSON bodies kept as their text (jsoncodec.RawJson) where nothing reads them before they are
    # sent: no MASK_EVENT_MODEL, and no body masks on that side
    raw_json_bodies: bool = False


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


@final
class CapturedRecord:
    """One captured call, handed straight to the Moesif processor (or the SDK's batch processor in
    front of a Moesif exporter): the fields of a finished ``ReadableSpan`` that they and this module
    read. Its context is the request span's (trace id kept), flagged sampled so that the SDK's
    processors accept it whatever the app's sampler decided for the span."""

    __slots__ = ("attributes", "context", "end_time", "kind", "start_time", "weight")

    name = "moesif_otel.record"
    parent = None
    resource = None
    events = ()
    links = ()

    def __init__(
        self, attributes: dict[str, Any], context: Any, kind: SpanKind, start: int, end: int
    ) -> None:
        self.attributes = attributes
        self.context = context
        self.kind = kind
        self.start_time = start
        self.end_time = end
        self.weight = 0  # its EVENT_QUEUE_BYTES charge, once computed (exporter.span_weight)


def sampled_context(span: Span) -> SpanContext:
    """The span's context, flagged sampled (the SDK's batch processor drops others); the trace id
    is valid even for a span the app's sampler dropped."""
    span_context: SpanContext = span.get_span_context()
    if span_context.trace_flags.sampled:
        return span_context
    return SpanContext(
        span_context.trace_id,
        span_context.span_id,
        span_context.is_remote,
        _SAMPLED,
        span_context.trace_state,
    )


def body_value(captured: bytes | bytearray) -> str | bytes:
    """Text when the bytes are UTF-8 (what every span exporter can carry), else the bytes."""
    try:
        return captured.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(captured)


def span_attributes(span: ReadableSpan | CapturedRecord) -> Mapping[str, Any]:
    """The span's attributes, read-only, as cheaply as the SDK allows.

    ``span.attributes`` is a proxy over the SDK's ``BoundedAttributes``, whose every lookup and
    iteration runs Python code (copying one span's took 2.7 us, the plain dict beneath 0.08 us).
    A finished span's attributes no longer change, so that dict is read directly; any other layout
    gets a copy.
    """
    if type(span) is CapturedRecord:
        return span.attributes
    inner = span_attribute_dict(span)
    if type(inner) is dict:
        return inner
    return dict(span.attributes or {})


def is_api_call(span: ReadableSpan) -> bool:
    """Cheap filter, the same in front of every queue (MoesifSpanProcessor) and in the exporter
    (behind the SDK's batch processor): a captured call, or a plain OTel HTTP server span, that was
    not SKIPped or recorded. A CLIENT span is an event only when outgoing capture prepared it: the
    app's other instrumented calls are not calls it asked to capture (CAPTURE_OUTGOING_REQUESTS
    captures through our own hooks)."""
    attrs = span_attributes(span)
    if attrs.get(A.MOESIF_SKIP) or attrs.get(A.MOESIF_RECORDED):
        return False
    if attrs.get(A.MOESIF_CAPTURED):
        return True
    if span.kind != SpanKind.SERVER:
        return False
    return any(key in attrs for key in _METHOD_KEYS)


_second_cache: tuple[int, str] = (-1, "")


def format_time(ns: int) -> str:
    """UTC ISO-8601 with milliseconds, as Moesif's docs show it (the second's text is reused)."""
    global _second_cache
    seconds, rest = divmod(ns, 1_000_000_000)
    cached_second, prefix = _second_cache
    if seconds != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{rest // 1_000_000:03d}Z"


def header_map(headers: str | Iterable[tuple[Any, Any]] | None) -> dict[str, str]:
    """Captured headers → names to values, repeats joined by ', '.

    A record from capture holds the request's header pairs as the server gave them (decoding them
    here, not on the event loop); outgoing calls and spans hold ``name:value`` lines (see
    ``asgi_scope.flat_headers``), lower-cased already.
    """
    if not headers:
        return {}
    if not isinstance(headers, str):
        return header_dict(headers)
    result: dict[str, str] = {}
    for line in headers.split("\n"):
        name, _, value = line.partition(":")
        result[name] = f"{result[name]}, {value}" if name in result else value
    return result


def _semconv_headers(attrs: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """OTel's per-header attributes (``http.request.header.content_type``: ('a', 'b'))."""
    result: dict[str, str] = {}
    for key, value in attrs.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].replace("_", "-").lower()
            result[name] = ", ".join(value) if isinstance(value, (tuple, list)) else str(value)
    return result


def _first(attrs: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def _semconv_uri(attrs: Mapping[str, Any]) -> str:
    full = _first(attrs, (A.URL_FULL, A.OLD_HTTP_URL))
    if full:
        return str(full)
    scheme = _first(attrs, (A.URL_SCHEME, A.OLD_HTTP_SCHEME)) or "http"
    host = _first(attrs, (A.OLD_HTTP_HOST, A.OLD_HTTP_SERVER_NAME, A.SERVER_ADDRESS)) or "localhost"
    target = attrs.get(A.OLD_HTTP_TARGET)
    if not target:
        target = attrs.get(A.URL_PATH) or "/"
        query = attrs.get(A.URL_QUERY)
        if query:
            target = f"{target}?{query}"
    return f"{scheme}://{host}{target}"


def _body(
    attrs: Mapping[str, Any],
    content: str,
    size: str,
    decoded: str,
    headers: Mapping[str, str],
    limit: int,
    raw_json: bool,
) -> EncodedBody | None:
    raw = attrs.get(content)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return encode_body(
        raw,
        content_type=headers.get("content-type"),
        # a client library may hand over bytes it already decompressed, header still in place
        content_encoding=None if attrs.get(decoded) else headers.get("content-encoding"),
        total_size=attrs.get(size),
        max_size=max(limit, _MIN_BODY_LIMIT),
        raw_json=raw_json,
    )


def _remove_masked_keys(encoded: EncodedBody | None, keys: frozenset[str]) -> None:
    if keys and encoded is not None and encoded.transfer_encoding == "json":
        remove_keys(encoded.body, keys)


def _put_body(part: dict[str, Any], encoded: EncodedBody | None) -> None:
    if encoded is not None and encoded.body is not None:
        part["body"] = encoded.body
        part["transfer_encoding"] = encoded.transfer_encoding


def event_document(span: ReadableSpan, options: EventOptions) -> dict[str, Any]:
    """The event as the collector receives it (absent fields left out, not null)."""
    attrs = span_attributes(span)
    captured = bool(attrs.get(A.MOESIF_CAPTURED))
    if captured:
        raw_request_headers = attrs.get(A.MOESIF_REQUEST_HEADERS)
        request_headers = header_map(raw_request_headers)
        response_headers = header_map(attrs.get(A.MOESIF_RESPONSE_HEADERS))
        uri = attrs.get(A.MOESIF_REQUEST_URI) or _semconv_uri(attrs)
        start_ns = attrs.get(A.MOESIF_REQUEST_TIME) or span.start_time or 0  # an app may set it
        end_ns = attrs.get(A.MOESIF_RESPONSE_TIME) or span.end_time or start_ns
        direction: Direction = attrs.get(A.MOESIF_DIRECTION) or (
            "Outgoing" if span.kind == SpanKind.CLIENT else "Incoming"
        )
        transaction_id = attrs.get(A.MOESIF_TRANSACTION_ID)
        if transaction_id is not None and not isinstance(raw_request_headers, str):
            # capture's pairs are the request's as it came: the event's id replaces any the client
            # sent (text lines carry it already)
            request_headers.pop(TRANSACTION_HEADER_NAME, None)
            request_headers[TRANSACTION_HEADER_NAME] = transaction_id
    else:
        request_headers = _semconv_headers(attrs, A.HTTP_REQUEST_HEADER_PREFIX)
        response_headers = _semconv_headers(attrs, A.HTTP_RESPONSE_HEADER_PREFIX)
        uri = _semconv_uri(attrs)
        start_ns = span.start_time or 0
        end_ns = span.end_time or start_ns
        direction = "Outgoing" if span.kind == SpanKind.CLIENT else "Incoming"
    incoming = direction == "Incoming"

    request: dict[str, Any] = {
        "time": format_time(start_ns),
        "uri": str(uri),
        "verb": str(_first(attrs, _METHOD_KEYS) or "GET"),
        "headers": request_headers,
    }
    if options.api_version is not None:
        request["api_version"] = options.api_version
    if incoming:
        peer = attrs.get(A.CLIENT_ADDRESS) or attrs.get(A.OLD_NET_PEER_IP)
        ip = client_ip(request_headers, str(peer) if peer else None, lowered=captured)
        if ip is not None:
            request["ip_address"] = ip
    status = _first(attrs, _STATUS_KEYS)
    # Aborted with no status: the client left before any response. Moesif takes 100-599 only (a 0
    # fails the whole batch); 499 is nginx's "client closed request". The span keeps no status.
    no_response = status is None and bool(attrs.get(A.MOESIF_ABORTED))
    response: dict[str, Any] = {
        "time": format_time(max(end_ns, start_ns)),
        "status": int(status) if status is not None else (CLIENT_CLOSED_REQUEST if no_response else 0),
        "headers": response_headers,
    }

    notes: dict[str, str] = {}
    raw_json = options.raw_json_bodies
    request_body = _body(
        attrs,
        A.HTTP_REQUEST_BODY_CONTENT,
        A.HTTP_REQUEST_BODY_SIZE,
        A.MOESIF_REQUEST_BODY_DECODED,
        request_headers,
        options.max_body_size,
        raw_json and (incoming or not options.request_body_masks),
    )
    response_body = _body(
        attrs,
        A.HTTP_RESPONSE_BODY_CONTENT,
        A.HTTP_RESPONSE_BODY_SIZE,
        A.MOESIF_RESPONSE_BODY_DECODED,
        response_headers,
        options.max_body_size,
        raw_json and (incoming or not options.response_body_masks),
    )
    if not incoming:
        _remove_masked_keys(request_body, options.request_body_masks)
        _remove_masked_keys(response_body, options.response_body_masks)
    _put_body(request, request_body)
    _put_body(response, response_body)
    if request_body is not None and request_body.note:
        notes["request_body"] = request_body.note
    elif attrs.get(A.MOESIF_REQUEST_BODY_OMITTED):
        notes["request_body"] = str(attrs[A.MOESIF_REQUEST_BODY_OMITTED])
    elif attrs.get(A.MOESIF_REQUEST_BODY_TRUNCATED):
        notes["request_body"] = "partial: the app did not read the whole body"
    if response_body is not None and response_body.note:
        notes["response_body"] = response_body.note
    elif attrs.get(A.MOESIF_RESPONSE_BODY_OMITTED):
        notes["response_body"] = str(attrs[A.MOESIF_RESPONSE_BODY_OMITTED])

    event: dict[str, Any] = {"request": request, "response": response}
    user_id = attrs.get(A.USER_ID)
    if user_id is None and incoming:
        user_id = user_id_from_authorization(
            request_headers,
            options.authorization_header_names,
            options.authorization_user_id_field,
            lowered=captured,
        )
    for key, value in (
        ("user_id", user_id),
        ("company_id", attrs.get(A.MOESIF_COMPANY_ID)),
        ("session_token", attrs.get(A.MOESIF_SESSION_TOKEN)),
    ):
        if value is not None:
            event[key] = value

    metadata: Any = None
    raw_metadata = attrs.get(A.MOESIF_METADATA)
    if raw_metadata:
        metadata = json.loads(raw_metadata)
    if no_response:
        notes["aborted"] = "no response: the client disconnected first"
    elif attrs.get(A.MOESIF_ABORTED):
        notes["aborted"] = "the response did not complete (client disconnected or the app failed)"
    if attrs.get(A.MOESIF_ERROR):
        notes["error"] = str(attrs[A.MOESIF_ERROR])
    if notes:
        metadata = dict(metadata) if isinstance(metadata, dict) else ({"value": metadata} if metadata else {})
        earlier = metadata.get("moesif_otel")  # capture's own note (GET_METADATA over its cap) stays
        metadata["moesif_otel"] = {**earlier, **notes} if isinstance(earlier, dict) else notes
    if metadata is not None:
        event["metadata"] = metadata

    event["direction"] = direction
    event["weight"] = int(attrs.get(A.MOESIF_WEIGHT) or 1)
    blocked_by = attrs.get(A.MOESIF_BLOCKED_BY)
    if blocked_by is not None:
        event["blocked_by"] = blocked_by
    transaction_id = attrs.get(A.MOESIF_TRANSACTION_ID)
    if transaction_id is None:
        transaction_id = new_transaction_id()  # Moesif deduplicates by it: one per event
    event["transaction_id"] = transaction_id
    if span.context is not None and span.context.trace_id:
        event["trace_id"] = format(span.context.trace_id, "032x")
    return event


# -- EventModel, for MASK_EVENT_MODEL -----------------------------------------------------------------

_REQUEST_FIELDS = ("time", "uri", "verb", "headers", "api_version", "ip_address", "body", "transfer_encoding")
_RESPONSE_FIELDS = ("time", "status", "headers", "body", "ip_address", "transfer_encoding")
_EVENT_FIELDS = (
    "session_token",
    "tags",
    "user_id",
    "company_id",
    "metadata",
    "direction",
    "weight",
    "blocked_by",
    "transaction_id",
)


def to_event_model(event: Mapping[str, Any]) -> EventModel:
    """The ``EventModel`` users' MASK_EVENT_MODEL hooks expect, bodies already filled."""
    request = event.get("request") or {}
    response = event.get("response")
    return EventModel(
        request=EventRequestModel(**{k: request.get(k) for k in _REQUEST_FIELDS}),
        response=EventResponseModel(**{k: response.get(k) for k in _RESPONSE_FIELDS}) if response else None,
        **{k: event.get(k) for k in _EVENT_FIELDS},
    )


def _compact(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.to_dictionary().items() if v is not None}


def from_event_model(model: EventModel, trace_id: str | None) -> dict[str, Any]:
    """The document of a (masked) EventModel, nulls left out, the trace id kept."""
    event = _compact(model)
    event["request"] = _compact(model.request) if model.request is not None else {}
    if model.response is not None:
        event["response"] = _compact(model.response)
    if trace_id:
        event["trace_id"] = trace_id
    return event
