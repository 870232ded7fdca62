"""Span → Moesif event (moesif_otel/event.py) on ReadableSpans built directly: every field from
the attributes capture writes and from plain OTel HTTP spans (old and stable names), exactly."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from moesif_otel import attributes as A
from moesif_otel.event import EventOptions, event_document, is_api_call, span_attributes

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
START = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123Z
END = START + 45_000_000  # 45 ms later
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
OPTIONS = EventOptions()


def make_span(
    attrs: dict[str, Any], kind: SpanKind = SpanKind.SERVER, *, bounded: bool = True
) -> ReadableSpan:
    """A finished span as the SDK hands it to exporters (its attributes in ``BoundedAttributes``)."""
    attributes: Any = BoundedAttributes(attributes=attrs, immutable=True) if bounded else dict(attrs)
    return ReadableSpan(
        name="GET /items/{item_id}",
        context=SpanContext(TRACE_ID, 0x00F067AA0BA902B7, is_remote=False),
        kind=kind,
        attributes=attributes,
        start_time=START,
        end_time=END,
    )


def captured(**extra: Any) -> dict[str, Any]:
    """A server span's attributes as capture writes them."""
    return {
        A.MOESIF_CAPTURED: True,
        A.HTTP_REQUEST_METHOD: "POST",
        A.HTTP_RESPONSE_STATUS_CODE: 201,
        A.MOESIF_REQUEST_URI: "https://api.example.com/items/7?full=1",
        A.MOESIF_REQUEST_HEADERS: "content-type:application/json\nx-tag:a\nx-tag:b",
        A.MOESIF_RESPONSE_HEADERS: "content-type:application/json",
        A.CLIENT_ADDRESS: "198.51.100.7",
        A.MOESIF_TRANSACTION_ID: "3f1b6e2a-0c4d-4e5f-8a9b-0c1d2e3f4a5b",
        **extra,
    }


def test_captured_server_span_with_every_field() -> None:
    attrs = captured(
        **{
            A.HTTP_REQUEST_BODY_CONTENT: b'{"name": "x", "password": "p"}',
            A.HTTP_RESPONSE_BODY_CONTENT: b'{"id": 7}',
            A.USER_ID: "user-1",
            A.MOESIF_COMPANY_ID: "co-1",
            A.MOESIF_SESSION_TOKEN: "sess-1",
            A.MOESIF_METADATA: '{"plan": "gold"}',
            A.MOESIF_WEIGHT: 10,
            A.MOESIF_BLOCKED_BY: "rule-1",
        }
    )
    options = EventOptions(api_version="2.1", request_body_masks=frozenset({"password"}))
    assert event_document(make_span(attrs), options) == {
        "request": {
            "time": "2023-11-14T22:13:20.123Z",
            "uri": "https://api.example.com/items/7?full=1",
            "verb": "POST",
            "headers": {"content-type": "application/json", "x-tag": "a, b"},
            "api_version": "2.1",
            "ip_address": "198.51.100.7",
            # masks apply to outgoing calls only: MASK_EVENT_MODEL is moesifasgi's way for incoming
            "body": {"name": "x", "password": "p"},
            "transfer_encoding": "json",
        },
        "response": {
            "time": "2023-11-14T22:13:20.168Z",
            "status": 201,
            "headers": {"content-type": "application/json"},
            "body": {"id": 7},
            "transfer_encoding": "json",
        },
        "user_id": "user-1",
        "company_id": "co-1",
        "session_token": "sess-1",
        "metadata": {"plan": "gold"},
        "direction": "Incoming",
        "weight": 10,
        "blocked_by": "rule-1",
        "transaction_id": "3f1b6e2a-0c4d-4e5f-8a9b-0c1d2e3f4a5b",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


def test_header_pairs_from_capture_are_decoded_with_the_events_transaction_id() -> None:
    """Capture hands over the server's (name, value) pairs; the event gets lower-case names,
    Latin-1 values, repeats joined, and the event's transaction id in place of the client's."""
    client_sent = (b"X-Moesif-Transaction-Id", b"sent-by-the-client")
    request = ((b"Content-Type", b"application/json"), (b"x-tag", b"a"), client_sent, (b"x-tag", b"caf\xe9"))
    response = [(b"content-type", b"text/plain"), (b"x-moesif-transaction-id", b"3f1b6e2a")]
    attrs = captured(**{A.MOESIF_REQUEST_HEADERS: request, A.MOESIF_RESPONSE_HEADERS: response})
    event = event_document(make_span(attrs, bounded=False), OPTIONS)
    assert event["request"]["headers"] == {
        "content-type": "application/json",
        "x-tag": "a, caf\u00e9",
        "x-moesif-transaction-id": "3f1b6e2a-0c4d-4e5f-8a9b-0c1d2e3f4a5b",
    }
    response_headers = {"content-type": "text/plain", "x-moesif-transaction-id": "3f1b6e2a"}
    assert event["response"]["headers"] == response_headers
    # without an id of its own (DISABLE_TRANSACTION_ID), the request's headers stay as they came
    del attrs[A.MOESIF_TRANSACTION_ID]
    event = event_document(make_span(attrs, bounded=False), OPTIONS)
    assert event["request"]["headers"]["x-moesif-transaction-id"] == "sent-by-the-client"
    # text pairs (a hand-built scope) read the same
    attrs[A.MOESIF_REQUEST_HEADERS] = (("X-Tag", "a"), ("x-tag", "b"))
    assert event_document(make_span(attrs, bounded=False), OPTIONS)["request"]["headers"] == {"x-tag": "a, b"}


def test_captured_times_override_the_spans() -> None:
    attrs = captured(
        **{A.MOESIF_REQUEST_TIME: START + 1_000_000_000, A.MOESIF_RESPONSE_TIME: START + 2_500_000_000}
    )
    event = event_document(make_span(attrs), OPTIONS)
    assert (event["request"]["time"], event["response"]["time"]) == (
        "2023-11-14T22:13:21.123Z",
        "2023-11-14T22:13:22.623Z",
    )


def test_plain_otel_server_span_with_old_names() -> None:
    """OTel's ASGI/FastAPI instrumentation by default (no capture): no bodies, the rest mapped."""
    attrs = {
        A.OLD_HTTP_METHOD: "GET",
        A.OLD_HTTP_SCHEME: "https",
        A.OLD_HTTP_HOST: "api.example.com:8443",
        A.OLD_HTTP_TARGET: "/items/7?full=1",
        A.OLD_HTTP_STATUS_CODE: 200,
        A.OLD_NET_PEER_IP: "198.51.100.7",
        "http.request.header.x_api_key": ("k1", "k2"),
        "http.response.header.content_type": ("text/plain",),
    }
    event = event_document(make_span(attrs), OPTIONS)
    assert UUID4.match(event.pop("transaction_id"))
    assert event == {
        "request": {
            "time": "2023-11-14T22:13:20.123Z",
            "uri": "https://api.example.com:8443/items/7?full=1",
            "verb": "GET",
            "headers": {"x-api-key": "k1, k2"},
            "ip_address": "198.51.100.7",
        },
        "response": {
            "time": "2023-11-14T22:13:20.168Z",
            "status": 200,
            "headers": {"content-type": "text/plain"},
        },
        "direction": "Incoming",
        "weight": 1,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


def test_plain_otel_server_span_with_stable_names() -> None:
    attrs = {
        A.HTTP_REQUEST_METHOD: "DELETE",
        A.URL_SCHEME: "http",
        A.SERVER_ADDRESS: "api.local",
        A.URL_PATH: "/items/7",
        A.URL_QUERY: "hard=1",
        A.HTTP_RESPONSE_STATUS_CODE: 204,
        A.CLIENT_ADDRESS: "192.0.2.1",
    }
    event = event_document(make_span(attrs), OPTIONS)
    assert event["request"] == {
        "time": "2023-11-14T22:13:20.123Z",
        "uri": "http://api.local/items/7?hard=1",
        "verb": "DELETE",
        "headers": {},
        "ip_address": "192.0.2.1",
    }
    assert event["response"]["status"] == 204
    assert event["direction"] == "Incoming"


def test_user_id_from_the_authorization_header_of_incoming_calls_only() -> None:
    token = "e30.eyJzdWIiOiAiand0LXVzZXIifQ.sig"  # {"sub": "jwt-user"}
    headers = f"authorization:Bearer {token}"
    incoming = event_document(make_span(captured(**{A.MOESIF_REQUEST_HEADERS: headers})), OPTIONS)
    assert incoming["user_id"] == "jwt-user"
    outgoing = captured(**{A.MOESIF_REQUEST_HEADERS: headers, A.MOESIF_DIRECTION: "Outgoing"})
    assert "user_id" not in event_document(make_span(outgoing, SpanKind.CLIENT), OPTIONS)


def test_client_span_from_outgoing_capture() -> None:
    attrs = {
        A.MOESIF_CAPTURED: True,
        A.MOESIF_DIRECTION: "Outgoing",
        A.HTTP_REQUEST_METHOD: "POST",
        A.HTTP_RESPONSE_STATUS_CODE: 200,
        A.MOESIF_REQUEST_URI: "https://upstream.example/login",
        A.MOESIF_REQUEST_HEADERS: "content-type:application/json",
        A.MOESIF_RESPONSE_HEADERS: "content-type:application/json",
        A.HTTP_REQUEST_BODY_CONTENT: b'{"user": "u", "password": "p"}',
        A.HTTP_RESPONSE_BODY_CONTENT: b'{"token": "t", "ok": true}',
        A.CLIENT_ADDRESS: "10.0.0.1",
        A.MOESIF_TRANSACTION_ID: "out-1",
    }
    options = EventOptions(
        request_body_masks=frozenset({"password"}), response_body_masks=frozenset({"token"})
    )
    event = event_document(make_span(attrs, SpanKind.CLIENT), options)
    assert event["direction"] == "Outgoing"
    assert "ip_address" not in event["request"]  # the peer of an outgoing call is not a client
    assert event["request"]["body"] == {"user": "u"}
    assert event["response"]["body"] == {"ok": True}
    assert event["transaction_id"] == "out-1"


def test_plain_client_span_is_outgoing_from_its_kind() -> None:
    attrs = {
        A.HTTP_REQUEST_METHOD: "GET",
        A.URL_FULL: "https://upstream.example/x",
        A.HTTP_RESPONSE_STATUS_CODE: 404,
    }
    span = make_span(attrs, SpanKind.CLIENT)
    event = event_document(span, OPTIONS)
    assert (event["direction"], event["request"]["uri"], event["response"]["status"]) == (
        "Outgoing",
        "https://upstream.example/x",
        404,
    )
    assert not is_api_call(span)  # only a call outgoing capture prepared becomes an event


@pytest.mark.parametrize(
    ("content_type", "body", "expected", "encoding"),
    [
        ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}, "json"),
        ("text/plain", "plain text", "cGxhaW4gdGV4dA==", "base64"),  # a str attribute, as its UTF-8
        ("application/octet-stream", b"\x00\x01\xff", "AAH/", "base64"),
    ],
)
def test_bodies_json_or_base64(content_type: str, body: Any, expected: Any, encoding: str) -> None:
    attrs = captured(
        **{A.MOESIF_RESPONSE_HEADERS: f"content-type:{content_type}", A.HTTP_RESPONSE_BODY_CONTENT: body}
    )
    response = event_document(make_span(attrs), OPTIONS)["response"]
    assert (response["body"], response["transfer_encoding"]) == (expected, encoding)


def test_truncated_body_is_left_out_with_a_note() -> None:
    attrs = captured(**{A.HTTP_REQUEST_BODY_CONTENT: b'{"a": 1', A.HTTP_REQUEST_BODY_SIZE: 5000})
    event = event_document(make_span(attrs), OPTIONS)
    assert "body" not in event["request"] and "transfer_encoding" not in event["request"]
    assert event["metadata"] == {"moesif_otel": {"request_body": "truncated: 5000 bytes, capture limit 7"}}


def test_metadata_notes_join_the_apps_metadata() -> None:
    attrs = captured(
        **{
            A.MOESIF_METADATA: json.dumps({"plan": "gold"}),
            A.MOESIF_REQUEST_BODY_OMITTED: "not captured: multipart",
            A.MOESIF_RESPONSE_BODY_OMITTED: "not captured: streamed",
            A.MOESIF_ERROR: "RuntimeError",
        }
    )
    assert event_document(make_span(attrs), OPTIONS)["metadata"] == {
        "plan": "gold",
        "moesif_otel": {
            "request_body": "not captured: multipart",
            "response_body": "not captured: streamed",
            "error": "RuntimeError",
        },
    }
    not_an_object = captured(**{A.MOESIF_METADATA: "[1, 2]", A.MOESIF_REQUEST_BODY_TRUNCATED: True})
    assert event_document(make_span(not_an_object), OPTIONS)["metadata"] == {
        "value": [1, 2],
        "moesif_otel": {"request_body": "partial: the app did not read the whole body"},
    }


def test_aborted_without_a_response_is_499() -> None:
    attrs = captured(**{A.MOESIF_ABORTED: True})
    del attrs[A.HTTP_RESPONSE_STATUS_CODE]
    event = event_document(make_span(attrs), OPTIONS)
    assert event["response"]["status"] == 499
    assert event["metadata"] == {"moesif_otel": {"aborted": "no response: the client disconnected first"}}


def test_aborted_after_the_status_keeps_the_status() -> None:
    event = event_document(make_span(captured(**{A.MOESIF_ABORTED: True})), OPTIONS)
    assert event["response"]["status"] == 201
    assert event["metadata"] == {
        "moesif_otel": {"aborted": "the response did not complete (client disconnected or the app failed)"}
    }


def test_transaction_id_from_capture_or_one_per_event() -> None:
    assert event_document(make_span(captured()), OPTIONS)["transaction_id"] == (
        "3f1b6e2a-0c4d-4e5f-8a9b-0c1d2e3f4a5b"
    )
    plain = make_span({A.HTTP_REQUEST_METHOD: "GET", A.HTTP_RESPONSE_STATUS_CODE: 200})
    first, second = (event_document(plain, OPTIONS)["transaction_id"] for _ in range(2))
    assert UUID4.match(first) and UUID4.match(second) and first != second


@pytest.mark.parametrize(("weight", "expected"), [(None, 1), (1, 1), (20, 20)])
def test_weight_from_sampling(weight: int | None, expected: int) -> None:
    attrs = captured() if weight is None else captured(**{A.MOESIF_WEIGHT: weight})
    assert event_document(make_span(attrs), OPTIONS)["weight"] == expected


@pytest.mark.parametrize("bounded", [True, False], ids=["BoundedAttributes", "plain dict"])
def test_span_attributes_with_and_without_the_sdks_layout(bounded: bool) -> None:
    """The fast path reads the SDK's dict; any other ReadableSpan gets a copy, same event."""
    span = make_span(captured(), bounded=bounded)
    attrs = span_attributes(span)
    assert dict(attrs) == captured()
    assert (attrs is span._attributes._dict) if bounded else (attrs is not span._attributes)  # type: ignore[union-attr]
    assert event_document(span, OPTIONS)["request"]["verb"] == "POST"


def test_is_api_call_filters_skipped_and_non_http_spans() -> None:
    assert is_api_call(make_span(captured()))
    assert not is_api_call(make_span(captured(**{A.MOESIF_SKIP: True})))
    assert not is_api_call(make_span({"db.system": "postgresql"}, SpanKind.SERVER))
    assert not is_api_call(make_span({A.HTTP_REQUEST_METHOD: "GET"}, SpanKind.INTERNAL))
    assert is_api_call(make_span({A.OLD_HTTP_METHOD: "GET"}))


@pytest.mark.parametrize("direction", ["Incoming", "Outgoing"])
def test_raw_json_bodies_send_the_same_values(direction: str) -> None:
    # Kept as their text (not parsed and written back) the bodies reach the collector unchanged,
    # a 25-digit id included; outgoing body masks still see parsed values to remove keys from.
    from moesif_otel import jsoncodec

    attrs = captured(
        **{
            A.HTTP_REQUEST_BODY_CONTENT: b'{"name": "x",  "password": "p", "id": 1234567890123456789012345}',
            A.HTTP_RESPONSE_BODY_CONTENT: b'[1, 2.5, {"ok": true}]',
            A.MOESIF_DIRECTION: direction,
        }
    )
    masks = frozenset({"password"})
    parsed = EventOptions(request_body_masks=masks)
    raw = EventOptions(request_body_masks=masks, raw_json_bodies=True)
    plain_doc, raw_doc = event_document(make_span(attrs), parsed), event_document(make_span(attrs), raw)
    assert isinstance(raw_doc["response"]["body"], jsoncodec.RawJson)
    outgoing = direction == "Outgoing"
    assert isinstance(raw_doc["request"]["body"], dict if outgoing else jsoncodec.RawJson)
    assert json.loads(jsoncodec.dumps(raw_doc)) == json.loads(jsoncodec.dumps(plain_doc))
    sent = json.loads(jsoncodec.dumps(raw_doc))["request"]["body"]
    assert sent["id"] == 1234567890123456789012345
    assert ("password" in sent) is not outgoing
