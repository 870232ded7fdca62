"""The same requests, hostile ones included, to the same app with and without MoesifMiddleware:
the client must not be able to tell the difference (but for X-Moesif-Transaction-Id)."""

from __future__ import annotations

import gzip
import json
import socket
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from moesif_otel.collector import Collector

from .apps import make_app
from .servers import serve

JSON = b'{"name": "Ann", "n": [1, 2, 3]}'
BIG = b'{"blob": "' + b"x" * 300_000 + b'"}'
MULTIPART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nreport\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 8 + b"\r\n--XyZ--\r\n"
)


def chunked(data: bytes, size: int = 7000) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    raw_body: bool = False,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: differential.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not raw_body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


JSON_TYPE = ("Content-Type", "application/json")
GZIP = ("Content-Encoding", "gzip")

CASES: dict[str, bytes] = {
    "get": request("GET", "/items/1"),
    "post json": request("POST", "/echo", [("Content-Type", "application/json")], JSON),
    "gzip json": request("POST", "/echo", [JSON_TYPE, GZIP],
                         gzip.compress(JSON)),
    "invalid utf-8": request("POST", "/echo", [("Content-Type", "text/plain")], b"\xff\xfe\xfa"),
    "json type, not json": request("POST", "/typed", [("Content-Type", "application/json")], b"{broken"),
    "unhandled exception": request("GET", "/boom"),
    "head": request("HEAD", "/items/2"),
    "many headers": request("GET", "/items/3", [(f"X-H{i}", "v" * 50) for i in range(120)]),
    "long url": request("GET", "/items/4?q=" + "a" * 7000),
    "malformed bearer": request("GET", "/items/5", [("Authorization", "Bearer a.%%%.b")]),
    "malformed basic": request("GET", "/items/5", [("Authorization", "Basic ####")]),
    "forwarded garbage": request("GET", "/items/6", [("X-Forwarded-For", "unknown, ::::, 999.1.1.1")]),
    "chunked body over the cap": request(
        "POST", "/echo", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
        chunked(BIG), raw_body=True,
    ),
    "hostile transaction id": request("GET", "/items/7", [("X-Moesif-Transaction-Id", "x" * 500)]),
    "multipart": request("POST", "/echo", [("Content-Type", "multipart/form-data; boundary=XyZ")], MULTIPART),
    "bad multipart": request("POST", "/echo", [("Content-Type", "multipart/form-data; boundary=")], b"--"),
    "zip bomb": request("POST", "/echo", [JSON_TYPE, GZIP],
                        gzip.compress(b"[" + b"0," * 2_000_000 + b"0]")),
    "streamed": request("GET", "/stream"),
    "sse": request("GET", "/sse"),
    "unicode path": request("GET", "/items/%E2%9C%93"),
    "repeated headers": request("GET", "/items/8", [("Cookie", "a=1"), ("Cookie", "b=2")]),
    "empty post": request("POST", "/echo", [("Content-Type", "application/json")], b""),
    "unknown route": request("DELETE", "/nowhere"),
    "unread body": request("POST", "/ignore", [("Content-Type", "application/json")], JSON),
}  # fmt: skip


def differential_app(settings: dict[str, Any] | None) -> FastAPI:
    app = make_app(settings)

    @app.post("/typed")
    async def typed(payload: dict) -> dict:
        return payload

    @app.post("/ignore")
    async def ignore() -> dict:
        return {"ignored": True}

    @app.get("/sse")
    async def sse() -> StreamingResponse:
        async def events():
            for i in range(5):
                yield f"data: {json.dumps({'i': i})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.middleware("http")
    async def reflect(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-seen-headers"] = str(len(request.headers))
        return response

    return app


def exchange(base: str, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines]
    # Date changes with the clock, the transaction id is ours: everything else must be identical.
    kept = [(k.lower(), v) for k, v in headers if k.lower() not in (b"date", b"x-moesif-transaction-id")]
    return status, kept, body


@pytest.fixture(scope="module")
def answers_without() -> dict[str, Any]:
    with serve(differential_app(None)) as base:
        return {name: exchange(base, raw) for name, raw in CASES.items()}


def test_the_app_answers_exactly_as_without_moesif(
    answers_without: dict[str, Any], collector: Collector
) -> None:
    settings = {"APPLICATION_ID": "diff", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    with serve(differential_app(settings)) as base:
        answers_with = {name: exchange(base, raw) for name, raw in CASES.items()}
        events = collector.wait_for_events(len(CASES))
    for name in CASES:
        assert answers_with[name] == answers_without[name], name
    assert collector.rejected == []
    assert len(events) == len(CASES)  # every request recorded, the hostile ones included
