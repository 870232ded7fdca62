"""The local Moesif collector, over real HTTP: contract checks, recording, fault injection, CLI."""

from __future__ import annotations

import copy
import gzip
import http.client
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moesif_otel import exporter
from moesif_otel.collector import DEFAULT_CONFIG, MAX_EVENT_BYTES, Collector, format_event, validate_event

REPO = Path(__file__).resolve().parent.parent


def make_event(i: int = 0, **top: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "request": {
            "time": "2026-11-23T10:00:00.123Z",
            "uri": f"http://127.0.0.1:8000/items/{i}?x=1",
            "verb": "POST",
            "headers": {"host": "127.0.0.1:8000", "content-type": "application/json"},
            "ip_address": "10.0.0.1",
            "api_version": "1.0",
            "body": {"name": "widget"},
            "transfer_encoding": "json",
        },
        "response": {
            "time": "2026-11-23T10:00:00.125Z",
            "status": 201,
            "headers": {"content-type": "application/json"},
            "body": {"id": i},
            "transfer_encoding": "json",
        },
        "user_id": "12345",
        "company_id": "67890",
        "direction": "Incoming",
        "weight": 1,
        "transaction_id": "6f1ed002-ab5d-42e3-8c66-ae6b0e1d6a63",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    event.update(top)
    return event


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.status, self.headers, self.body = status, headers, body


def send(
    collector: Collector,
    method: str,
    path: str,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    encoding: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    body = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    sent_headers = {"Content-Type": "application/json"}
    if body is not None and encoding == "gzip":
        body = gzip.compress(body)
    elif body is not None and encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        sent_headers["Content-Encoding"] = encoding
    sent_headers.update(headers or {})
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", collector.port, timeout=timeout)
    try:
        conn.request(method, path, body, sent_headers)
        response = conn.getresponse()
        data = response.read()
        assert response.getheader("Content-Length") == str(len(data))
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            json.loads(data) if data else None,
        )
    finally:
        if own:
            conn.close()


def post(collector: Collector, path: str, payload: Any = None, **kwargs: Any) -> Reply:
    return send(collector, "POST", path, payload, **kwargs)


def get(collector: Collector, path: str, **kwargs: Any) -> Reply:
    return send(collector, "GET", path, **kwargs)


def collector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("moesif-collector")]


@pytest.fixture(autouse=True)
def no_leaked_collector_threads() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 3
    while collector_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector_threads() == []


# --- events endpoints -----------------------------------------------------------------------------


def test_gzip_batch_is_accepted_and_recorded(collector: Collector) -> None:
    events = [make_event(i) for i in range(3)]
    reply = post(
        collector, "/v1/events/batch", events, encoding="gzip", headers={"X-Moesif-Application-Id": "a"}
    )
    assert reply.status == 201
    assert reply.body == {}
    assert reply.headers["x-moesif-config-etag"]
    assert reply.headers["x-moesif-rules-tag"]
    assert collector.wait_for_events(3) == events
    [batch] = collector.batches
    assert batch["path"] == "/v1/events/batch"
    assert batch["count"] == 3
    assert batch["content_encoding"] == "gzip"
    assert batch["bytes"] == len(gzip.compress(json.dumps(events).encode()))
    assert batch["headers"]["x-moesif-application-id"] == "a"
    assert collector.rejected == []


def test_plain_single_event_and_deflate_batch(collector: Collector) -> None:
    assert post(collector, "/v1/events", make_event(1)).status == 201
    assert post(collector, "/v1/events/batch", [make_event(2)], encoding="deflate").status == 201
    assert [e["request"]["uri"] for e in collector.events] == [
        "http://127.0.0.1:8000/items/1?x=1",
        "http://127.0.0.1:8000/items/2?x=1",
    ]
    assert [b["content_encoding"] for b in collector.batches] == [None, "deflate"]


def test_chunked_body_is_read(collector: Collector) -> None:
    data = json.dumps([make_event(i) for i in range(2)]).encode()
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        chunks = iter([data[:100], data[100:]])
        conn.request(
            "POST", "/v1/events/batch", chunks, {"Content-Type": "application/json"}, encode_chunked=True
        )
        assert conn.getresponse().status == 201
    finally:
        conn.close()
    assert len(collector.events) == 2


@pytest.mark.parametrize(
    ("path", "raw", "encoding", "problem"),
    [
        ("/v1/events/batch", b"[{not json", None, "invalid JSON"),
        ("/v1/events/batch", b'[{"weight": NaN}]', None, "NaN is not valid JSON"),
        ("/v1/events/batch", b"\xff\xfe[]", None, "not UTF-8"),
        ("/v1/events/batch", json.dumps(make_event()).encode(), None, "expects a JSON array"),
        ("/v1/events", json.dumps([make_event()]).encode(), None, "expects one JSON event object"),
        ("/v1/events/batch", b"[]", "gzip", "not valid gzip"),
        ("/v1/events/batch", b"[]", "br", "unsupported Content-Encoding"),
    ],
)
def test_undecodable_bodies_are_400(
    collector: Collector, path: str, raw: bytes, encoding: str | None, problem: str
) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    reply = post(collector, path, raw=raw, headers=headers)
    assert reply.status == 400
    assert problem in " ".join(reply.body["errors"])
    assert collector.events == []
    assert collector.batches[0]["count"] == 0


def test_content_type_must_be_json(collector: Collector) -> None:
    reply = post(collector, "/v1/events/batch", [make_event()], headers={"Content-Type": "text/plain"})
    assert reply.status == 400
    assert "Content-Type must be application/json" in reply.body["errors"][0]
    assert collector.events == []


def test_batch_with_invalid_events_is_400_but_keeps_the_valid_ones(collector: Collector) -> None:
    bad = make_event(1)
    del bad["request"]["verb"]
    bad["response"]["transfer_encoding"] = "gzip"
    good = make_event(2)
    reply = post(collector, "/v1/events/batch", [good, bad], encoding="gzip")
    assert reply.status == 400
    assert "event[1]: request.verb: missing (required)" in reply.body["errors"]
    assert any(e.startswith("event[1]: response.transfer_encoding") for e in reply.body["errors"])
    assert collector.events == [good]
    [(event, problems)] = collector.rejected
    assert event == bad
    assert "request.verb: missing (required)" in problems
    assert collector.batches[0]["count"] == 2
    assert collector.batches[0]["status"] == 400


def test_oversized_event_is_rejected_but_a_large_batch_of_small_events_is_not(collector: Collector) -> None:
    big = make_event(1)
    big["response"]["body"] = "x" * MAX_EVENT_BYTES
    reply = post(collector, "/v1/events/batch", [make_event(0), big], encoding="gzip")
    assert reply.status == 400
    assert any("exceeds Moesif's 1 MB limit" in e for e in reply.body["errors"])
    assert len(collector.events) == 1

    collector.reset()
    halves = [make_event(i) for i in range(3)]
    for event in halves:
        event["response"]["body"] = "y" * (MAX_EVENT_BYTES // 2)
    assert post(collector, "/v1/events/batch", halves, encoding="gzip").status == 201
    assert len(collector.events) == 3


def test_declared_body_over_50mb_is_413_without_reading_it(collector: Collector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        conn.putrequest("POST", "/v1/events/batch")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(60 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()


# --- the event schema -----------------------------------------------------------------------------


def mutate(path: str, value: Any) -> dict[str, Any]:
    """A valid event with one field set (value ``...`` deletes it); path like ``request.verb``."""
    event = make_event()
    *parents, leaf = path.split(".")
    node = event
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return event


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("request", ..., "request: missing (required)"),
        ("request.verb", ..., "request.verb: missing (required)"),
        ("request.verb", "", "request.verb: must be a non-empty HTTP method token"),
        ("request.time", ..., "request.time: missing"),
        ("request.time", "30/10/2024 04:45", "request.time: not an ISO-8601 timestamp"),
        ("request.time", "2026-11-23T12:00:00.123+02:00", "request.time: must be UTC"),
        ("request.time", "2026-02-30T10:00:00.000Z", "request.time: not a valid date/time"),
        ("request.time", 1732356000, "request.time: must be an ISO-8601 string"),
        ("request.uri", "/items/1?x=1", "request.uri: must be an absolute http(s) URL with a host"),
        ("request.uri", "http://127.0.0.1:8000/a b", "request.uri: contains whitespace"),
        ("request.uri", "http://127.0.0.1:99999/", "request.uri: not a valid URL"),
        ("request.headers", ..., "request.headers: missing"),
        ("request.headers", {"accept": ["a", "b"]}, "request.headers['accept']: values must be strings"),
        ("request.headers", [["accept", "a"]], "request.headers: must be an object"),
        ("request.ip_address", "999.1.1.1", "request.ip_address: not a valid IP address"),
        ("request.api_version", 2, "request.api_version: must be a string"),
        ("request.transfer_encoding", "gzip", "request.transfer_encoding: must be 'json', 'base64' or null"),
        ("request.status_code", 200, "request: unknown key 'status_code'"),
        ("response.status", 700, "response.status: must be an integer 100-599"),
        ("response.status", "201", "response.status: must be an integer 100-599"),
        ("response.status", ..., "response.status: missing"),
        ("response.time", "2026-11-23T09:59:59.999Z", "response.time: '2026-11-23T09:59:59.999Z' is before"),
        ("response.headers", {"x": 1}, "response.headers['x']: values must be strings"),
        ("response", [], "response: must be an object or null"),
        ("direction", "incoming", "direction: must be one of Incoming, Outgoing, Internal"),
        ("weight", 0, "weight: must be an integer >= 1"),
        ("weight", 1.5, "weight: must be an integer >= 1"),
        ("user_id", 12345, "user_id: must be a string or null"),
        ("company_id", ["a"], "company_id: must be a string or null"),
        ("metadata", ["a"], "metadata: must be an object or null"),
        ("trace_id", "0AF7651916CD43DD8448EB211C80319C", "trace_id: must be 32 lowercase hex digits"),
        ("trace_id", "0" * 32, "trace_id: must be 32 lowercase hex digits, not all zero"),
        ("span", {"id": "xyz"}, "span.id: must be 16 lowercase hex digits"),
        ("request_id", "r1", "event: unknown key 'request_id'"),
    ],
)
def test_schema_violations_are_named(path: str, value: Any, problem: str) -> None:
    problems = validate_event(mutate(path, value))
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not base64!!", "request.body: not valid base64"),
        ("YWJj=", "request.body: not valid base64"),
        ("YWJjZA", "request.body: not valid base64"),
        ("YW Jj", "request.body: not valid base64"),
        ("-_-_", "request.body: not valid base64"),
        (None, "request.body: missing although transfer_encoding is 'base64'"),
        ({"a": 1}, "request.body: must be a base64 string"),
    ],
)
def test_base64_bodies_must_decode(body: Any, problem: str) -> None:
    event = make_event()
    event["request"].update(body=body, transfer_encoding="base64")
    assert any(p.startswith(problem) for p in validate_event(event)), validate_event(event)


def test_event_over_one_megabyte_is_invalid() -> None:
    event = make_event()
    event["request"]["body"] = "é" * (MAX_EVENT_BYTES // 2)  # 2 bytes each in UTF-8: over the limit
    [problem] = validate_event(event)
    assert problem.startswith("event: serialized size")
    assert "exceeds Moesif's 1 MB limit" in problem
    event["request"]["body"] = "e" * (MAX_EVENT_BYTES // 2)
    assert validate_event(event) == []


def test_the_collector_checks_the_event_limit_the_exporter_keeps_to() -> None:
    """Moesif's "1 MB" is one constant: an event the exporter would not send is not valid here either."""
    assert MAX_EVENT_BYTES == exporter.MAX_EVENT_BYTES == 1_000_000
    event = make_event()
    event["request"]["body"] = "e" * 1_010_000  # over 1,000,000 bytes, under 1 MiB
    [problem] = validate_event(event)
    assert "exceeds Moesif's 1 MB limit (1000000 bytes)" in problem


@pytest.mark.parametrize(
    "event",
    [
        make_event(),
        mutate("request.time", "2026-11-23T10:00:00.123"),
        mutate("request.time", "2026-11-23T10:00:00+00:00"),
        mutate("response.time", "2026-11-23T10:00:00.123456789Z"),
        mutate("response", ...),
        mutate("response", None),
        mutate("request.uri", "https://user@api.example.com/v1/x?q=%20#frag"),
        mutate("request.uri", "http://[::1]:8000/"),
        mutate("request.ip_address", "2001:db8::1"),
        mutate("direction", "Outgoing"),
        mutate("span", {"id": "00f067aa0ba902b7", "parent_id": None, "links": [], "status": 1}),
        # moesifapi's EventModel.to_dictionary emits every key, unset ones as null
        make_event(
            session_token=None, tags=None, metadata=None, blocked_by=None, weight=None, direction=None
        ),
        {
            "request": {
                "time": "2024-10-30T04:45:42.914",
                "uri": "https://a.io/",
                "verb": "GET",
                "headers": {},
            }
        },
    ],
)
def test_valid_events_pass(event: dict[str, Any]) -> None:
    assert validate_event(event) == []


def test_valid_base64_body_passes_and_non_object_event_fails() -> None:
    event = make_event()
    event["response"].update(body="aGVsbG8=", transfer_encoding="base64")
    assert validate_event(event) == []
    assert validate_event(["not", "an", "event"]) == ["event: must be a JSON object, got array"]


# --- auth, entities, config -----------------------------------------------------------------------


def test_application_id_mismatch_is_401() -> None:
    with Collector(application_id="app-1") as collector:
        assert post(collector, "/v1/events/batch", [make_event()]).status == 401
        wrong = {"X-Moesif-Application-Id": "app-2"}
        assert post(collector, "/v1/events/batch", [make_event()], headers=wrong).status == 401
        assert get(collector, "/v1/config", headers=wrong).status == 401
        right = {"X-Moesif-Application-Id": "app-1"}
        assert post(collector, "/v1/events/batch", [make_event()], headers=right).status == 201
        assert get(collector, "/health/probe").body == {"status": True, "region": "local"}
        assert len(collector.events) == 1
        assert collector.config_fetches == 0
        assert [r["status"] for r in collector.requests] == [401, 401, 401, 201, 200]


def test_users_companies_subscriptions(collector: Collector) -> None:
    assert post(collector, "/v1/users", {"user_id": "u1", "metadata": {"a": 1}}).status == 201
    assert (
        post(collector, "/v1/users/batch", [{"user_id": "u2"}, {"user_id": "u3"}], encoding="gzip").status
        == 201
    )
    assert post(collector, "/v1/companies", {"company_id": "c1"}).status == 201
    assert post(collector, "/v1/companies/batch", [{"company_id": "c2"}]).status == 201
    sub = {"subscription_id": "s1", "company_id": "c1", "status": "active"}
    assert post(collector, "/v1/subscriptions", sub).status == 201
    assert post(collector, "/v1/subscriptions/batch", [{"subscription_id": "s2"}]).status == 201
    assert [u["user_id"] for u in collector.users] == ["u1", "u2", "u3"]
    assert [c["company_id"] for c in collector.companies] == ["c1", "c2"]
    assert [s["subscription_id"] for s in collector.subscriptions] == ["s1", "s2"]
    assert collector.batches == []  # entity posts are not event batches


@pytest.mark.parametrize(
    ("path", "payload", "problem"),
    [
        ("/v1/users", {"company_id": "c1"}, "user_id: missing"),
        ("/v1/users/batch", [{"user_id": "u1"}, {"user_id": ""}], "users[1]: user_id: missing"),
        ("/v1/users/batch", {"user_id": "u1"}, "expects a JSON array"),
        ("/v1/companies", {"company_id": None}, "company_id: missing"),
        ("/v1/subscriptions", {"subscription_id": "s1", "company_id": "c1"}, "status: missing"),
        ("/v1/subscriptions/batch", [{"company_id": "c1"}], "subscriptions[0]: subscription_id: missing"),
    ],
)
def test_entities_without_ids_are_400(collector: Collector, path: str, payload: Any, problem: str) -> None:
    reply = post(collector, path, payload)
    assert reply.status == 400
    assert any(problem in e for e in reply.body["errors"]), reply.body


def test_config_and_rules_are_served_with_tags(collector: Collector) -> None:
    reply = get(collector, "/v1/config")
    assert reply.status == 200
    assert reply.body == DEFAULT_CONFIG
    default_etag = reply.headers["x-moesif-config-etag"]
    assert get(collector, "/v1/rules").body == []

    config = {**DEFAULT_CONFIG, "sample_rate": 50, "user_sample_rate": {"u1": 10}}
    collector.set_config(config, etag="etag-2")
    rules = [{"_id": "r1", "type": "regex", "block": True}]
    collector.set_rules(rules, tag="tag-2")
    reply = get(collector, "/v1/config")
    assert (reply.body, reply.headers["x-moesif-config-etag"]) == (config, "etag-2")
    reply = get(collector, "/v1/rules")
    assert (reply.body, reply.headers["x-moesif-rules-tag"]) == (rules, "tag-2")
    assert (collector.config_fetches, collector.rules_fetches) == (2, 2)

    reply = post(collector, "/v1/events/batch", [make_event()])
    assert reply.headers["x-moesif-config-etag"] == "etag-2"
    assert reply.headers["x-moesif-rules-tag"] == "tag-2"

    collector.set_config({**DEFAULT_CONFIG, "sample_rate": 10})  # no etag given: derived from the content
    assert get(collector, "/v1/config").headers["x-moesif-config-etag"] not in ("etag-2", default_etag)
    collector.reset()
    assert get(collector, "/v1/config").headers["x-moesif-config-etag"] == default_etag


def test_unknown_path_404_wrong_method_405_and_keep_alive(collector: Collector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        assert send(collector, "GET", "/v2/events", conn=conn).status == 404
        sock = conn.sock
        assert send(collector, "POST", "/v1/events/batch/", raw=b"[]", conn=conn).status == 404
        reply = send(collector, "GET", "/v1/events/batch", conn=conn)
        assert (reply.status, reply.headers["allow"]) == (405, "POST")
        assert send(collector, "POST", "/v1/events/batch", [make_event()], conn=conn).status == 201
        assert conn.sock is sock  # one connection served all four
    finally:
        conn.close()


# --- fault injection ------------------------------------------------------------------------------


def test_fail_next_with_retry_after_then_recovers(collector: Collector) -> None:
    collector.fail_next(2, 503, retry_after="1")
    collector.fail_next(1, 500, path_prefix="/v1/users")
    for _ in range(2):
        reply = post(collector, "/v1/events/batch", [make_event()], encoding="gzip")
        assert (reply.status, reply.headers.get("retry-after")) == (503, "1")
    assert get(collector, "/v1/config").status == 200  # other paths are not affected
    assert post(collector, "/v1/events/batch", [make_event(7)]).status == 201
    assert post(collector, "/v1/users", {"user_id": "u"}).status == 500
    assert post(collector, "/v1/users", {"user_id": "u"}).status == 201
    assert [e["request"]["uri"] for e in collector.events] == ["http://127.0.0.1:8000/items/7?x=1"]
    assert len(collector.batches) == 1  # injected failures are not processed batches
    assert [r["status"] for r in collector.requests] == [503, 503, 200, 201, 500, 201]


def test_set_delay_delays_answers(collector: Collector) -> None:
    collector.set_delay(0.3)
    started = time.monotonic()
    assert post(collector, "/v1/events/batch", [make_event()]).status == 201
    assert time.monotonic() - started >= 0.3
    with pytest.raises(TimeoutError):
        post(collector, "/v1/events/batch", [make_event()], timeout=0.05)
    collector.set_delay(0)
    assert post(collector, "/v1/events/batch", [make_event()]).status == 201


def post_in_thread(collector: Collector, payload: Any, results: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(post(collector, "/v1/events/batch", payload, timeout=10).status)
        except (OSError, http.client.HTTPException) as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def pending(collector: Collector) -> int:
    return sum(1 for r in collector.requests if r["path"] == "/v1/events/batch" and r["status"] is None)


def test_hang_holds_requests_until_released(collector: Collector) -> None:
    collector.hang()
    results: list[Any] = []
    thread = post_in_thread(collector, [make_event()], results)
    collector.wait_for(lambda c: pending(c) == 1)
    # the control endpoints still answer while the collector hangs
    assert get(collector, "/_collector/events").body == []
    assert thread.is_alive()
    assert results == []
    collector.hang(False)
    thread.join(5)
    assert results == [201]
    assert len(collector.events) == 1


def test_stop_does_not_block_on_hung_requests() -> None:
    collector = Collector().start()
    try:
        collector.hang()
        results: list[Any] = []
        thread = post_in_thread(collector, [make_event()], results)
        collector.wait_for(lambda c: pending(c) == 1)
        started = time.monotonic()
    finally:
        collector.stop()
    assert time.monotonic() - started < 2.0
    thread.join(5)
    assert len(results) == 1
    assert isinstance(results[0], (OSError, http.client.HTTPException))
    assert collector.events == []


def test_refuse_and_accept_on_the_same_port(collector: Collector) -> None:
    port = collector.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        assert send(collector, "POST", "/v1/events/batch", [make_event()], conn=conn).status == 201
        collector.refuse()
        with pytest.raises((OSError, http.client.HTTPException)):  # the open connection was dropped
            send(collector, "POST", "/v1/events/batch", [make_event()], conn=conn)
    finally:
        conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    collector.accept()
    assert collector.port == port
    assert post(collector, "/v1/events/batch", [make_event()]).status == 201
    assert len(collector.events) == 2


def test_reset_clears_records_and_faults(collector: Collector) -> None:
    post(collector, "/v1/events/batch", [make_event(), {"bad": 1}])
    post(collector, "/v1/users", {"user_id": "u"})
    collector.fail_next(5)
    collector.set_delay(5)
    collector.set_config({"sample_rate": 1}, etag="x")
    collector.reset()
    assert (collector.events, collector.rejected, collector.batches, collector.users) == ([], [], [], [])
    assert collector.requests == []
    assert post(collector, "/v1/events/batch", [make_event()], timeout=2).status == 201
    assert get(collector, "/v1/config").body == DEFAULT_CONFIG


def test_wait_for_events_timeout_says_what_arrived(collector: Collector) -> None:
    bad = make_event()
    del bad["request"]["verb"]
    post(collector, "/v1/events/batch", [make_event(), bad])
    assert len(collector.wait_for_events(1, timeout=1)) == 1
    with pytest.raises(
        AssertionError, match=r"expected 3 events within 0\.2s, 1 arrived.*1 rejected.*request\.verb"
    ):
        collector.wait_for_events(3, timeout=0.2)
    with pytest.raises(AssertionError, match="condition not met"):
        collector.wait_for(lambda c: len(c.users) > 0, timeout=0.1)


def test_concurrent_batches_are_all_recorded(collector: Collector) -> None:
    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=10)
        try:
            for b in range(20):
                batch = [make_event(n * 1000 + b * 10 + i) for i in range(10)]
                assert (
                    send(collector, "POST", "/v1/events/batch", batch, encoding="gzip", conn=conn).status
                    == 201
                )
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    events = collector.wait_for_events(1600)
    assert len({e["request"]["uri"] for e in events}) == 1600
    assert len(collector.batches) == 160


# --- control endpoints ----------------------------------------------------------------------------


def test_control_endpoints(collector: Collector) -> None:
    fault = {"fail_next": 1, "status": 500, "retry_after": 2, "delay": 0}
    assert post(collector, "/_collector/fault", fault).status == 200
    reply = post(collector, "/v1/events/batch", [make_event(1)])
    assert (reply.status, reply.headers["retry-after"]) == (500, "2")
    assert post(collector, "/v1/events/batch", [make_event(2)]).status == 201
    assert get(collector, "/_collector/events").body == [make_event(2)]

    state = get(collector, "/_collector/state").body
    assert [r["status"] for r in state["requests"] if r["path"].startswith("/v1/")] == [500, 201]
    assert state["batches"][0]["count"] == 1

    config = {**DEFAULT_CONFIG, "sample_rate": 25}
    assert post(collector, "/_collector/config", {"config": config, "etag": "e9"}).status == 200
    assert post(collector, "/_collector/rules", {"rules": [{"_id": "r"}], "tag": "t9"}).status == 200
    reply = get(collector, "/v1/config")
    assert (reply.body, reply.headers["x-moesif-config-etag"]) == (config, "e9")
    assert get(collector, "/v1/rules").headers["x-moesif-rules-tag"] == "t9"

    assert post(collector, "/_collector/fault", {"bogus": 1}).status == 400
    assert post(collector, "/_collector/fault", {"fail_next": -1}).status == 400
    assert post(collector, "/_collector/reset").status == 200
    assert get(collector, "/_collector/events").body == []
    assert get(collector, "/v1/config").body == DEFAULT_CONFIG


def test_control_fault_hang_and_release(collector: Collector) -> None:
    assert post(collector, "/_collector/fault", {"hang": True}).status == 200
    results: list[Any] = []
    thread = post_in_thread(collector, [make_event()], results)
    collector.wait_for(lambda c: pending(c) == 1)
    assert post(collector, "/_collector/fault", {"hang": False}).status == 200
    thread.join(5)
    assert results == [201]


# --- output ---------------------------------------------------------------------------------------


def test_format_event() -> None:
    event = make_event()
    event["request"]["body"] = {"a": "b" * 34}  # 42 bytes of compact JSON
    event["response"]["body"] = {"id": 1234567, "ok": 1}  # 21 bytes
    assert format_event(event) == (
        "Incoming POST http://127.0.0.1:8000/items/0?x=1 -> 201 user=12345 company=67890 "
        "(req json 42B, resp json 21B)"
    )
    outgoing = make_event(direction="Outgoing", user_id=None, company_id=None, weight=4, response=None)
    outgoing["request"].update(verb="GET", body="aGVsbG8=", transfer_encoding="base64")
    assert format_event(outgoing) == (
        "Outgoing GET http://127.0.0.1:8000/items/0?x=1 -> (no response) weight=4 "
        "(req base64 5B, resp no body)"
    )
    assert (
        format_event({"request": {"uri": "http://x/\nnext"}})
        == "? ? http://x/\\nnext -> (no response) (req no body, resp no body)"
    )
    assert format_event(None) == "<not an event: NoneType>"


def test_out_stream_gets_one_line_per_event_and_json_when_verbose() -> None:
    out = io.StringIO()
    bad = make_event(2)
    bad["weight"] = 0
    with Collector(out=out) as collector:
        post(collector, "/v1/events/batch", [make_event(1), bad])
    lines = out.getvalue().splitlines()
    assert lines[0] == format_event(make_event(1))
    assert lines[1].startswith("REJECTED Incoming POST")
    assert "weight: must be an integer >= 1" in lines[1]
    assert len(lines) == 2

    out = io.StringIO()
    with Collector(out=out, verbose=True) as collector:
        post(collector, "/v1/events", make_event(1))
    summary, _, rest = out.getvalue().partition("\n")
    assert summary == format_event(make_event(1))
    assert json.loads(rest) == make_event(1)


def test_cli_prints_events_and_stops_on_sigterm() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moesif_otel.collector", "--port", "0", "--application-id", "cli-app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = lines.get(timeout=20)
        match = re.fullmatch(r"Moesif local collector listening on (http://127\.0\.0\.1:(\d+))\n", first)
        assert match, first
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(2)), timeout=5)
        try:
            body = gzip.compress(json.dumps([make_event(5)]).encode())
            headers = {
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "X-Moesif-Application-Id": "cli-app",
            }
            conn.request("POST", "/v1/events/batch", body, headers)
            assert conn.getresponse().status == 201
        finally:
            conn.close()
        assert lines.get(timeout=10) == format_event(make_event(5)) + "\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        reader.join(5)
        assert lines.get(timeout=1) == "Moesif local collector stopped\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_max_events_keeps_the_most_recent_and_counts_all() -> None:
    with Collector(max_events=3) as collector:
        post(collector, "/v1/events/batch", [make_event(i) for i in range(5)])
        post(collector, "/v1/events/batch", [make_event(5)])
        assert collector.event_count == 6
        assert [e["request"]["uri"][-5] for e in collector.wait_for_events(6)] == ["3", "4", "5"]
        assert get(collector, "/_collector/state").body["event_count"] == 6
        collector.reset()
        assert collector.event_count == 0


def test_event_copies_do_not_alias_the_record(collector: Collector) -> None:
    post(collector, "/v1/events/batch", [make_event()])
    events = collector.events
    events.clear()
    assert len(collector.events) == 1
    requests = collector.requests
    requests[0]["status"] = 999
    assert collector.requests[0]["status"] == 201
    assert copy.deepcopy(collector.batches) == collector.batches
