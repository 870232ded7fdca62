"""Edges of capture under a real uvicorn (issue 13): what the client actually sent and received.

A body the client abandons, a response that never started, absolute-form request targets, HEAD.
"""

from __future__ import annotations

import base64
import socket
import threading
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from moesif_otel import MoesifMiddleware
from moesif_otel.asgi_scope import request_uri
from moesif_otel.collector import Collector

from .servers import serve


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "edges-app", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_response(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_a_body_the_client_abandons_is_recorded_as_a_disconnect(collector: Collector) -> None:
    """The client sends half its body and leaves: it got no answer, so the event says 499 (client
    closed request), not 500, and keeps the part of the body that arrived."""
    first_chunk = threading.Event()
    app = FastAPI()
    seen = {"GET_METADATA": lambda req, res: {"hook_saw_status": res.status_code}}
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector, **seen))

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        size = 0
        async for chunk in request.stream():  # raises ClientDisconnect when the client leaves
            size += len(chunk)
            first_chunk.set()
        return {"size": size}

    with serve(app) as base:
        with connect(base) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nfirst half ")
            assert first_chunk.wait(5)
        [event] = collector.wait_for_events(1)
    assert event["response"]["status"] == 499
    assert base64.b64decode(event["request"]["body"]) == b"first half "
    assert event["metadata"] == {
        "hook_saw_status": 0,  # no response, as the event says: not the 500 nobody got
        "moesif_otel": {"aborted": "no response: the client disconnected first"},
    }
    assert "body" not in event["response"]


def test_no_response_is_a_499_when_the_client_left_and_a_500_when_the_app_gave_none(
    collector: Collector,
) -> None:
    """Moesif takes statuses 100-599 only: these were sent as 0, and the collector rejected the
    whole batch they were in."""
    waiting = threading.Event()

    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/wait":
            return  # /nothing (and lifespan): returns without a response
        while (await receive())["type"] != "http.disconnect":
            waiting.set()  # read the (empty) request; the next receive waits for the disconnect

    with serve(MoesifMiddleware(raw_app, settings_for(collector)), lifespan="off") as base:
        with connect(base) as sock:
            sock.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert waiting.wait(5)
        [left] = collector.wait_for_events(1)
        assert httpx.get(base + "/nothing").status_code == 500  # what uvicorn answers
        [_, nothing] = collector.wait_for_events(2)
    assert left["response"]["status"] == 499
    assert left["metadata"] == {"moesif_otel": {"aborted": "no response: the client disconnected first"}}
    assert nothing["response"]["status"] == 500
    assert nothing["request"]["uri"] == base + "/nothing"
    assert collector.rejected == []


def test_an_absolute_form_target_is_the_uri(collector: Collector) -> None:
    """``GET http://other.example:81/path HTTP/1.1`` (proxy form): uvicorn passes the target through
    as the path; the URI is the URL the client asked for, not Host glued to it."""
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector))
    with serve(app) as base:
        with connect(base) as sock:
            sock.sendall(b"GET http://other.example:81/items/5?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 404 ")  # not a route of this app
        with connect(base) as sock:  # origin form, for comparison
            sock.sendall(b"GET /items/6?q=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 404 ")
        events = collector.wait_for_events(2)
    assert sorted(e["request"]["uri"] for e in events) == [
        "http://other.example:81/items/5?q=1",
        "http://x/items/6?q=2",
    ]


def test_head_records_no_response_body(collector: Collector) -> None:
    """The app sends a body for HEAD; the server strips it: the client, and so the event, has none."""
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector))

    @app.api_route("/doc", methods=["GET", "HEAD"])
    async def doc() -> PlainTextResponse:
        return PlainTextResponse("the document")

    with serve(app) as base, httpx.Client(base_url=base) as client:
        head = client.head("/doc")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == "12"
        assert client.get("/doc").text == "the document"
        events = collector.wait_for_events(2)
    by_verb = {e["request"]["verb"]: e["response"] for e in events}
    assert "body" not in by_verb["HEAD"]
    assert by_verb["HEAD"]["status"] == 200
    assert by_verb["HEAD"]["headers"]["content-length"] == "12"  # what the client was told
    assert base64.b64decode(by_verb["GET"]["body"]) == b"the document"


@pytest.mark.parametrize(
    ("scope", "uri"),
    [
        ({"raw_path": b"http://o.example:81/a%20b", "query_string": b"q=1"}, "http://o.example:81/a%20b?q=1"),
        ({"path": "http://o.example:81/a b"}, "http://o.example:81/a b"),  # no raw_path: as sent
        ({"path": "/a b", "query_string": b"q=1"}, "http://x/a%20b?q=1"),
        ({"raw_path": b"/r/http://o.example/"}, "http://x/r/http://o.example/"),  # origin form
    ],
)
def test_request_uri_forms(scope: dict[str, Any], uri: str) -> None:
    assert request_uri({"type": "http", "scheme": "http", "headers": [(b"host", b"x")], **scope}) == uri
