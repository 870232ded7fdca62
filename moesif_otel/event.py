"""Finished span → Moesif ``EventModel``, on the exporter's thread.

Spans prepared by capture carry everything under the names of :mod:`moesif_otel.attributes`.
Plain OTel HTTP spans (an existing pipeline without capture) are mapped from the semantic
conventions, old and stable, so they still become events — without bodies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from moesifapi.models import EventModel, EventRequestModel, EventResponseModel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from moesif_otel import attributes as A
from moesif_otel.body import encode_body
from moesif_otel.identity import client_ip, user_id_from_authorization

_METHOD_KEYS = (A.HTTP_REQUEST_METHOD, A.OLD_HTTP_METHOD)
_STATUS_KEYS = (A.HTTP_RESPONSE_STATUS_CODE, A.OLD_HTTP_STATUS_CODE)


@dataclass(frozen=True)
class EventOptions:
    api_version: str | None = None
    authorization_header_names: tuple[str, ...] = ("authorization",)
    authorization_user_id_field: str = "sub"
    max_body_size: int = 131_072


def is_api_call(span: ReadableSpan) -> bool:
    """Cheap filter: an HTTP server or client span that was not SKIPped."""
    attrs = span.attributes or {}
    if attrs.get(A.MOESIF_SKIP):
        return False
    if attrs.get(A.MOESIF_CAPTURED):
        return True
    if span.kind not in (SpanKind.SERVER, SpanKind.CLIENT):
        return False
    return any(key in attrs for key in _METHOD_KEYS)


def format_time(ns: int) -> str:
    """UTC ISO-8601 with milliseconds, as Moesif's docs show it."""
    moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def header_map(text: str | None) -> dict[str, str]:
    """``name:value`` lines (see ``capture.flat_headers``) → names to values, repeats joined by ', '."""
    result: dict[str, str] = {}
    if not text:
        return result
    for line in text.split("\n"):
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


def _body(attrs: Mapping[str, Any], content: str, size: str, headers: Mapping[str, str], limit: int) -> Any:
    raw = attrs.get(content)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return encode_body(
        bytes(raw),
        content_type=headers.get("content-type"),
        content_encoding=headers.get("content-encoding"),
        total_size=attrs.get(size),
        max_size=max(limit, 1_048_576),
    )


def span_to_event(span: ReadableSpan, options: EventOptions) -> EventModel:
    attrs: Mapping[str, Any] = span.attributes or {}
    captured = bool(attrs.get(A.MOESIF_CAPTURED))
    if captured:
        request_headers = header_map(attrs.get(A.MOESIF_REQUEST_HEADERS))
        response_headers = header_map(attrs.get(A.MOESIF_RESPONSE_HEADERS))
        uri = attrs.get(A.MOESIF_REQUEST_URI) or _semconv_uri(attrs)
        start_ns = attrs.get(A.MOESIF_REQUEST_TIME) or span.start_time or 0
        end_ns = attrs.get(A.MOESIF_RESPONSE_TIME) or span.end_time or start_ns
        direction = attrs.get(A.MOESIF_DIRECTION) or "Incoming"
    else:
        request_headers = _semconv_headers(attrs, A.HTTP_REQUEST_HEADER_PREFIX)
        response_headers = _semconv_headers(attrs, A.HTTP_RESPONSE_HEADER_PREFIX)
        uri = _semconv_uri(attrs)
        start_ns = span.start_time or 0
        end_ns = span.end_time or start_ns
        direction = "Outgoing" if span.kind == SpanKind.CLIENT else "Incoming"

    notes: dict[str, str] = {}
    request_body = _body(
        attrs, A.HTTP_REQUEST_BODY_CONTENT, A.HTTP_REQUEST_BODY_SIZE, request_headers, options.max_body_size
    )
    response_body = _body(
        attrs,
        A.HTTP_RESPONSE_BODY_CONTENT,
        A.HTTP_RESPONSE_BODY_SIZE,
        response_headers,
        options.max_body_size,
    )
    if request_body is not None and request_body.note:
        notes["request_body"] = request_body.note
    elif attrs.get(A.MOESIF_REQUEST_BODY_TRUNCATED):
        notes["request_body"] = "partial: the app did not read the whole body"
    if response_body is not None and response_body.note:
        notes["response_body"] = response_body.note

    peer = attrs.get(A.CLIENT_ADDRESS) or attrs.get(A.OLD_NET_PEER_IP)
    request = EventRequestModel(
        time=format_time(start_ns),
        uri=str(uri),
        verb=str(_first(attrs, _METHOD_KEYS) or "GET"),
        headers=request_headers,
        api_version=options.api_version,
        ip_address=client_ip(request_headers, str(peer) if peer else None)
        if direction == "Incoming"
        else None,
        body=request_body.body if request_body else None,
        transfer_encoding=request_body.transfer_encoding if request_body else None,
    )
    status = _first(attrs, _STATUS_KEYS)
    response = EventResponseModel(
        time=format_time(max(end_ns, start_ns)),
        status=int(status) if status is not None else 0,
        headers=response_headers,
        body=response_body.body if response_body else None,
        transfer_encoding=response_body.transfer_encoding if response_body else None,
    )

    user_id = attrs.get(A.USER_ID)
    if user_id is None and direction == "Incoming":
        user_id = user_id_from_authorization(
            request_headers, options.authorization_header_names, options.authorization_user_id_field
        )
    metadata: Any = None
    raw_metadata = attrs.get(A.MOESIF_METADATA)
    if raw_metadata:
        metadata = json.loads(raw_metadata)
    if attrs.get(A.MOESIF_ABORTED):
        notes["aborted"] = "the response did not complete (client disconnected or the app failed)"
    if attrs.get(A.MOESIF_ERROR):
        notes["error"] = str(attrs[A.MOESIF_ERROR])
    if notes:
        metadata = dict(metadata) if isinstance(metadata, dict) else ({"value": metadata} if metadata else {})
        metadata["moesif_otel"] = notes

    return EventModel(
        request=request,
        response=response,
        session_token=attrs.get(A.MOESIF_SESSION_TOKEN),
        user_id=user_id,
        company_id=attrs.get(A.MOESIF_COMPANY_ID),
        metadata=metadata,
        direction=direction,
        weight=int(attrs.get(A.MOESIF_WEIGHT) or 1),
        blocked_by=attrs.get(A.MOESIF_BLOCKED_BY),
        transaction_id=attrs.get(A.MOESIF_TRANSACTION_ID),
    )
