"""The Moesif event contract, checked strictly.

Moesif's real collector accepts a lot and silently drops or mangles the rest, so a mistake in an event
shows up as a missing field in a dashboard weeks later. This check is stricter than Moesif on purpose:
anything outside the documented schema (moesif-api.md §1-§2) is reported, so our tests fail instead.

``null`` is accepted for every optional field because ``moesifapi`` serializes unset attributes as
``null`` and Moesif treats that as absent.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

# Moesif's "1 MB" per event: the one constant the exporter keeps each event under
from moesif_otel.payload import MAX_EVENT_BYTES as MAX_EVENT_BYTES

EVENT_KEYS = frozenset(
    {
        "request",
        "response",
        "session_token",
        "tags",
        "user_id",
        "company_id",
        "metadata",
        "direction",
        "weight",
        "blocked_by",
        "transaction_id",
        "trace_id",
        "span",
        "action_name",
        "subscription_id",
    }
)
REQUEST_KEYS = frozenset(
    {"time", "uri", "verb", "headers", "api_version", "ip_address", "body", "transfer_encoding"}
)
RESPONSE_KEYS = frozenset({"time", "status", "headers", "body", "ip_address", "transfer_encoding"})
# The docs spell the parent both ways (table: parent_id, example: parent_span_id).
SPAN_KEYS = frozenset({"id", "parent_id", "parent_span_id", "links", "status"})
DIRECTIONS = ("Incoming", "Outgoing", "Internal")
TRANSFER_ENCODINGS = ("json", "base64")

_OPTIONAL_STR_KEYS = (
    "session_token",
    "tags",
    "user_id",
    "company_id",
    "blocked_by",
    "transaction_id",
    "action_name",
    "subscription_id",
)
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|\+00:00)?")
_TIME_WITH_OFFSET_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?[+-]\d{2}:?\d{2}")
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_HEX16_RE = re.compile(r"[0-9a-f]{16}")
_BAD_URI_CHARS_RE = re.compile(r"[\x00-\x20\x7f]")
# Fast path for the common well-formed URL; anything it does not match gets the thorough check.
_SIMPLE_URI_RE = re.compile(
    r"https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::(\d{1,5}))?(?:[/?#][^\x00-\x20\x7f]*)?"
)
_BAD_VERB_CHARS_RE = re.compile(r"[\x00-\x20\x7f()<>@,;:\\\"/\[\]?={}]")
_MAX_HEADER_PROBLEMS = 3
_STR_TYPE = frozenset({str})


def validate_event(event: object) -> list[str]:
    """Every way ``event`` breaks the Moesif event schema; an empty list means it is valid."""
    return check_event(event, check_size=True)


def check_event(event: object, *, check_size: bool) -> list[str]:
    """``validate_event`` with the size check optional: the collector skips it when the whole request
    body is already under the limit, which saves re-serializing every event of a batch."""
    if not isinstance(event, dict):
        return [f"event: must be a JSON object, got {_type_name(event)}"]
    problems: list[str] = []
    _check_keys(event, EVENT_KEYS, "event", problems)

    request_time = response_time = None
    request = event.get("request")
    if request is None:
        problems.append("request: missing (required)")
    elif not isinstance(request, dict):
        problems.append(f"request: must be an object, got {_type_name(request)}")
    else:
        request_time = _check_request(request, problems)

    response = event.get("response")
    if response is not None:
        if not isinstance(response, dict):
            problems.append(f"response: must be an object or null, got {_type_name(response)}")
        else:
            response_time = _check_response(response, problems)
    if request_time is not None and response_time is not None and response_time < request_time:
        problems.append(
            f"response.time: {response['time']!r} is before request.time {request['time']!r}"  # type: ignore[index]
        )

    for key in _OPTIONAL_STR_KEYS:
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key}: must be a string or null, got {_type_name(value)}")

    direction = event.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        problems.append(f"direction: must be one of {', '.join(DIRECTIONS)} or null, got {direction!r}")
    weight = event.get("weight")
    if weight is not None and (not _is_int(weight) or weight < 1):
        problems.append(f"weight: must be an integer >= 1 or null, got {weight!r}")
    metadata = event.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(f"metadata: must be an object or null, got {_type_name(metadata)}")
    trace_id = event.get("trace_id")
    if trace_id is not None and not _is_otel_id(trace_id, _HEX32_RE):
        problems.append(f"trace_id: must be 32 lowercase hex digits, not all zero, got {trace_id!r}")
    span = event.get("span")
    if span is not None:
        _check_span(span, problems)

    if check_size and not problems:
        _check_size(event, problems)
    return problems


def _check_request(request: dict[str, Any], problems: list[str]) -> datetime | None:
    _check_keys(request, REQUEST_KEYS, "request", problems)
    when = _check_time(request, "request", problems)
    uri = request.get("uri")
    if uri is None:
        problems.append("request.uri: missing (required)")
    elif not isinstance(uri, str):
        problems.append(f"request.uri: must be a string, got {_type_name(uri)}")
    else:
        _check_uri(uri, problems)
    verb = request.get("verb")
    if verb is None:
        problems.append("request.verb: missing (required)")
    elif not isinstance(verb, str) or not verb or _BAD_VERB_CHARS_RE.search(verb):
        problems.append(f"request.verb: must be a non-empty HTTP method token, got {verb!r}")
    _check_headers(request, "request", problems)
    api_version = request.get("api_version")
    if api_version is not None and not isinstance(api_version, str):
        problems.append(f"request.api_version: must be a string or null, got {_type_name(api_version)}")
    _check_ip(request, "request", problems)
    _check_body(request, "request", problems)
    return when


def _check_response(response: dict[str, Any], problems: list[str]) -> datetime | None:
    _check_keys(response, RESPONSE_KEYS, "response", problems)
    when = _check_time(response, "response", problems)
    status = response.get("status")
    if status is None:
        problems.append("response.status: missing (required when response is present)")
    elif not _is_int(status) or not 100 <= status <= 599:
        problems.append(f"response.status: must be an integer 100-599, got {status!r}")
    _check_headers(response, "response", problems)
    _check_ip(response, "response", problems)
    _check_body(response, "response", problems)
    return when


def _check_keys(obj: dict[Any, Any], allowed: frozenset[str], where: str, problems: list[str]) -> None:
    unknown = obj.keys() - allowed
    if unknown:
        problems.extend(f"{where}: unknown key {key!r}" for key in sorted(map(str, unknown)))


def _check_time(container: dict[str, Any], where: str, problems: list[str]) -> datetime | None:
    value = container.get("time")
    if value is None:
        problems.append(f"{where}.time: missing (required)")
        return None
    if not isinstance(value, str):
        problems.append(f"{where}.time: must be an ISO-8601 string, got {_type_name(value)}")
        return None
    parsed = _parse_time(value)
    if isinstance(parsed, str):
        problems.append(f"{where}.time: {parsed}")
        return None
    return parsed


@functools.lru_cache(maxsize=8192)
def _parse_time(value: str) -> datetime | str:
    """The UTC time, or what is wrong with it. Cached: events of one batch share most timestamps."""
    match = _TIME_RE.fullmatch(value)
    if match is None:
        if _TIME_WITH_OFFSET_RE.fullmatch(value):
            return f"must be UTC (suffix 'Z', '+00:00' or none), got {value!r}"
        return f"not an ISO-8601 timestamp like 2024-10-30T04:45:42.914Z, got {value!r}"
    year, month, day, hour, minute, second, fraction, _zone = match.groups()
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
    except ValueError as exc:
        return f"not a valid date/time ({exc}), got {value!r}"


def _check_uri(uri: str, problems: list[str]) -> None:
    simple = _SIMPLE_URI_RE.fullmatch(uri)
    if simple is not None and (simple.group(1) is None or int(simple.group(1)) <= 65535):
        return
    if _BAD_URI_CHARS_RE.search(uri):
        problems.append(
            f"request.uri: contains whitespace or control characters (not percent-encoded): {uri!r}"
        )
        return
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        problems.append(f"request.uri: not a valid URL ({exc}): {uri!r}")
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"request.uri: must be an absolute http(s) URL with a host, got {uri!r}")


def _check_headers(container: dict[str, Any], where: str, problems: list[str]) -> None:
    headers = container.get("headers")
    if headers is None:
        problems.append(f"{where}.headers: missing (required)")
        return
    if not isinstance(headers, dict):
        problems.append(f"{where}.headers: must be an object of string to string, got {_type_name(headers)}")
        return
    if (
        set(map(type, headers.values())) <= _STR_TYPE
        and set(map(type, headers)) <= _STR_TYPE
        and "" not in headers
    ):
        return  # the common case, checked without a Python-level loop
    bad = 0
    for name, value in headers.items():
        if isinstance(name, str) and name and isinstance(value, str):
            continue
        bad += 1
        if bad > _MAX_HEADER_PROBLEMS:
            continue
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.headers: names must be non-empty strings, got {name!r}")
        else:
            problems.append(f"{where}.headers[{name!r}]: values must be strings, got {_type_name(value)}")
    if bad > _MAX_HEADER_PROBLEMS:
        problems.append(f"{where}.headers: {bad - _MAX_HEADER_PROBLEMS} more invalid headers")


def _check_ip(container: dict[str, Any], where: str, problems: list[str]) -> None:
    ip = container.get("ip_address")
    if ip is None:
        return
    if not isinstance(ip, str):
        problems.append(f"{where}.ip_address: must be a string or null, got {_type_name(ip)}")
        return
    if not _is_ip(ip):
        problems.append(f"{where}.ip_address: not a valid IP address: {ip!r}")


def _check_body(container: dict[str, Any], where: str, problems: list[str]) -> None:
    encoding = container.get("transfer_encoding")
    if encoding is not None and encoding not in TRANSFER_ENCODINGS:
        problems.append(f"{where}.transfer_encoding: must be 'json', 'base64' or null, got {encoding!r}")
        return
    if encoding != "base64":
        return
    body = container.get("body")
    if body is None:
        problems.append(f"{where}.body: missing although transfer_encoding is 'base64'")
    elif not isinstance(body, str):
        problems.append(
            f"{where}.body: must be a base64 string (transfer_encoding 'base64'), got {_type_name(body)}"
        )
    elif _BASE64_RE.fullmatch(body) is None:
        problems.append(
            f"{where}.body: not valid base64 (standard alphabet, padded to a multiple of 4 characters): "
            f"{_preview(body)}"
        )


def _check_span(span: Any, problems: list[str]) -> None:
    if not isinstance(span, dict):
        problems.append(f"span: must be an object or null, got {_type_name(span)}")
        return
    _check_keys(span, SPAN_KEYS, "span", problems)
    span_id = span.get("id")
    if span_id is not None and not _is_otel_id(span_id, _HEX16_RE):
        problems.append(f"span.id: must be 16 lowercase hex digits, not all zero, got {span_id!r}")
    for key in ("parent_id", "parent_span_id"):
        parent = span.get(key)
        if parent is not None and not _is_otel_id(parent, _HEX16_RE):
            problems.append(f"span.{key}: must be 16 lowercase hex digits or null, got {parent!r}")
    links = span.get("links")
    if links is not None and not isinstance(links, list):
        problems.append(f"span.links: must be an array or null, got {_type_name(links)}")
    status = span.get("status")
    if status is not None and not _is_int(status):
        problems.append(f"span.status: must be an integer or null, got {status!r}")


def _check_size(event: dict[str, Any], problems: list[str]) -> None:
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"event: not serializable as JSON ({exc})")
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        problems.append(
            f"event: serialized size {size} bytes exceeds Moesif's 1 MB limit ({MAX_EVENT_BYTES} bytes)"
        )


@functools.lru_cache(maxsize=4096)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_otel_id(value: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None and value.strip("0") != ""


def _preview(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
