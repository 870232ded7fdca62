"""MoesifMiddleware under a real uvicorn, events checked as the local collector received them."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from moesif_otel import MoesifMiddleware, __version__
from moesif_otel.collector import Collector

from .apps import BINARY, STREAM_CHUNKS, make_app
from .servers import find_middleware, serve

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "test-app-id", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def test_json_post_with_query_string_every_field(collector: Collector) -> None:
    def identify_user(request, response):
        return "user-1"

    async def identify_company(request, response):
        return "company-1"

    settings = settings_for(
        collector,
        API_VERSION="v9",
        IDENTIFY_USER=identify_user,
        IDENTIFY_COMPANY=identify_company,
        GET_SESSION_TOKEN=lambda req, res: "session-1",
        GET_METADATA=lambda req, res: {"datacenter": "westus", "n": 1},
    )
    app = make_app(settings)
    payload = {"name": "Ann", "tags": ["a", "b"], "n": 1.5}
    before = datetime.now(timezone.utc) - timedelta(milliseconds=5)
    with serve(app) as base:
        body = json.dumps(payload).encode()
        answer = httpx.post(
            f"{base}/echo?x=1&y=two%20words",
            content=body,
            headers={"content-type": "application/json", "x-custom": "one", "user-agent": "tests/1"},
        )
        assert answer.status_code == 200
        [event] = collector.wait_for_events(1)
    after = datetime.now(timezone.utc) + timedelta(milliseconds=5)
    port = base.rsplit(":", 1)[1]

    tx = answer.headers["x-moesif-transaction-id"]
    assert uuid.UUID(tx).version == 4
    assert TIME.match(event["request"]["time"]) and TIME.match(event["response"]["time"])
    t0, t1 = parse_time(event["request"]["time"]), parse_time(event["response"]["time"])
    assert before <= t0 <= t1 <= after
    assert re.fullmatch(r"[0-9a-f]{32}", event["trace_id"]) and int(event["trace_id"], 16)
    del event["request"]["time"], event["response"]["time"], event["trace_id"]
    assert event == {
        "request": {
            "uri": f"{base}/echo?x=1&y=two%20words",
            "verb": "POST",
            "headers": {
                "host": f"127.0.0.1:{port}",
                "accept": "*/*",
                "accept-encoding": "gzip, deflate",
                "connection": "keep-alive",
                "user-agent": "tests/1",
                "content-length": str(len(body)),
                "content-type": "application/json",
                "x-custom": "one",
                "x-moesif-transaction-id": tx,
            },
            "api_version": "v9",
            "ip_address": "127.0.0.1",
            "body": payload,
            "transfer_encoding": "json",
        },
        "response": {
            "status": 200,
            "headers": {
                "content-length": str(len(body)),
                "content-type": "application/json",
                "x-moesif-transaction-id": tx,
            },
            "body": payload,
            "transfer_encoding": "json",
        },
        "user_id": "user-1",
        "company_id": "company-1",
        "session_token": "session-1",
        "metadata": {"datacenter": "westus", "n": 1},
        "direction": "Incoming",
        "weight": 1,
        "transaction_id": tx,
    }
    # the upload itself: gzip JSON to /v1/events/batch with the application id and our User-Agent
    [batch] = collector.batches
    assert batch["path"] == "/v1/events/batch"
    assert batch["content_encoding"] == "gzip"
    assert batch["headers"]["x-moesif-application-id"] == "test-app-id"
    assert batch["headers"]["user-agent"] == f"moesif-otel-python/{__version__}"
    assert collector.rejected == []


def test_text_binary_and_streamed_responses(collector: Collector) -> None:
    app = make_app(settings_for(collector))
    with serve(app) as base, httpx.Client(base_url=base) as client:
        assert client.get("/text").text == "hello, plain text"
        assert client.get("/binary").content == BINARY
        streamed = client.get("/stream")
        assert streamed.content == b"".join(STREAM_CHUNKS)
        events = {e["request"]["uri"].rsplit("/", 1)[1]: e for e in collector.wait_for_events(3)}

    text = events["text"]["response"]
    assert text["transfer_encoding"] == "base64"
    assert base64.b64decode(text["body"]) == b"hello, plain text"
    assert text["headers"]["content-type"] == "text/plain; charset=utf-8"

    binary = events["binary"]["response"]
    assert binary["transfer_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == BINARY

    stream = events["stream"]["response"]
    assert stream["status"] == 200
    assert base64.b64decode(stream["body"]) == b"".join(STREAM_CHUNKS)
    assert "content-length" not in stream["headers"]
    assert "metadata" not in events["stream"]  # complete, nothing to report
    assert collector.rejected == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_hook_sync_and_async(collector: Collector, mode: str) -> None:
    seen: dict[str, Any] = {}

    def hook(name: str, value: Any):
        def sync_hook(request, response):
            seen[name] = (request.url.path, request.state.user_id, response.status_code, response.body)
            return value

        async def async_hook(request, response):
            seen[name] = (request.url.path, request.state.user_id, response.status_code, response.body)
            seen[name + ":body"] = await request.body()
            return value

        return sync_hook if mode == "sync" else async_hook

    settings = settings_for(
        collector,
        IDENTIFY_USER=hook("user", "u-" + mode),
        IDENTIFY_COMPANY=hook("company", "c-" + mode),
        GET_SESSION_TOKEN=hook("session", "s-" + mode),
        GET_METADATA=hook("metadata", {"mode": mode}),
        SKIP=hook("skip", False),
    )
    with serve(make_app(settings)) as base:
        assert httpx.get(f"{base}/items/5").json() == {"id": 5}
        [event] = collector.wait_for_events(1)
    assert event["user_id"] == "u-" + mode
    assert event["company_id"] == "c-" + mode
    assert event["session_token"] == "s-" + mode
    assert event["metadata"] == {"mode": mode}
    for name in ("user", "company", "session", "metadata", "skip"):
        # hooks see the request (with the app's request.state) and the finished response with its body
        assert seen[name] == ("/items/5", "state-user-5", 200, b'{"id":5}')
    if mode == "async":
        assert seen["user:body"] == b""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_skip(collector: Collector, mode: str) -> None:
    def skip(request, response):
        return request.url.path.startswith("/health")

    async def askip(request, response):
        return request.url.path.startswith("/health")

    with serve(make_app(settings_for(collector, SKIP=skip if mode == "sync" else askip))) as base:
        assert httpx.get(f"{base}/health/probe").status_code == 200
        assert httpx.get(f"{base}/items/1").status_code == 200
        collector.wait_for_events(1)
    uris = [e["request"]["uri"] for e in collector.events]
    assert uris == [f"{base}/items/1"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mask_event_model_masks_a_response_body_field(collector: Collector, mode: str) -> None:
    def custom_mask_event(eventmodel):
        # the moesifasgi README's example, verbatim
        if "password" in eventmodel.response.body:
            eventmodel.response.body["password"] = None
        return eventmodel

    async def amask(eventmodel):
        return custom_mask_event(eventmodel)

    mask = custom_mask_event if mode == "sync" else amask
    with serve(make_app(settings_for(collector, MASK_EVENT_MODEL=mask))) as base:
        answer = httpx.post(f"{base}/users", json={"name": "Bob", "password": "hunter2"})
        assert answer.json()["password"] == "hunter2"  # the client still gets the real response
        [event] = collector.wait_for_events(1)
    assert event["response"]["body"] == {"id": 7, "name": "Bob", "password": None}
    assert "hunter2" not in json.dumps(event["response"])


def test_unhandled_exception_is_recorded_as_500(collector: Collector) -> None:
    with serve(make_app(settings_for(collector))) as base:
        answer = httpx.get(f"{base}/boom")
        assert answer.status_code == 500
        assert answer.text == "Internal Server Error"
        [event] = collector.wait_for_events(1)
    assert event["response"]["status"] == 500
    assert event["metadata"] == {"moesif_otel": {"error": "RuntimeError"}}


def test_lifespan_shutdown_flushes_the_queue(collector: Collector) -> None:
    # a batch timeout far longer than the test: only the shutdown flush can deliver these
    app = make_app(settings_for(collector, EVENT_BATCH_TIMEOUT=300, BATCH_SIZE=1000))
    with serve(app) as base, httpx.Client(base_url=base) as client:
        for i in range(25):
            assert client.get(f"/items/{i}").status_code == 200
        assert collector.event_count == 0
    assert len(collector.wait_for_events(25, timeout=5)) == 25


def test_stats_and_flush_api(collector: Collector) -> None:
    app = make_app(settings_for(collector, EVENT_BATCH_TIMEOUT=300))
    with serve(app) as base:
        assert httpx.get(f"{base}/items/3").status_code == 200
        middleware = find_middleware(app, MoesifMiddleware)
        # the span ends just after the client has its bytes: wait until it is queued, then flush
        wait_until(lambda: middleware.stats()["spans_queued"] == 1)
        assert collector.event_count == 0
        assert middleware.flush(5) is True
        assert collector.event_count == 1
        stats = middleware.stats()
    assert stats["sent"] == 1 and stats["spans_queued"] == 1 and stats["dropped_queue_full"] == 0


def test_keep_alive_requests_get_their_own_traces(collector: Collector) -> None:
    # The closing message goes out after the hooks; a client on a kept-alive connection may send
    # its next request meanwhile, and that request must not inherit this one's span.
    settings = settings_for(collector, IDENTIFY_USER=lambda req, res: "u")
    with serve(make_app(settings)) as base, httpx.Client(base_url=base) as client:
        given = [f"{n:032x}" for n in range(1, 101)]
        for n, trace_id in enumerate(given):
            headers = {"traceparent": f"00-{trace_id}-00000000000000aa-01"} if n % 2 else {}
            assert client.get(f"/items/{n}", headers=headers).status_code == 200
        events = collector.wait_for_events(100)
    trace_ids = [
        e["trace_id"] for e in sorted(events, key=lambda e: int(e["request"]["uri"].rsplit("/", 1)[1]))
    ]
    assert len(set(trace_ids)) == 100
    assert all(trace_ids[n] == given[n] for n in range(1, 100, 2))  # a propagated parent is honoured
