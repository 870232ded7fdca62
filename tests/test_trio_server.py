"""MoesifMiddleware under a real trio server (hypercorn's trio worker), events as the collector got them."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .trio_server import serve_trio


def starlette_app(settings: dict[str, Any]) -> Any:
    async def ignore(request: Request) -> Response:
        return PlainTextResponse("not read")  # leaves the request body unread: capture drains it

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    routes = [Route("/ignore", ignore, methods=["POST"]), Route("/echo", echo, methods=["POST"])]
    app = Starlette(routes=routes)
    app.add_middleware(MoesifMiddleware, settings=settings)
    return app


def test_hypercorn_trio_records_bodies_and_flushes_at_lifespan_shutdown(collector: Collector) -> None:
    # a batch timeout far longer than the test: only the lifespan shutdown flush can deliver these
    settings = {
        "APPLICATION_ID": "trio-app",
        "BASE_URI": collector.url,
        "EVENT_BATCH_TIMEOUT": 300,
        "BATCH_SIZE": 1000,
    }
    with serve_trio(starlette_app(settings)) as base, httpx.Client(base_url=base) as client:
        unread = client.post("/ignore", content=b"unread body", headers={"content-type": "text/plain"})
        assert unread.status_code == 200 and unread.text == "not read"
        for n in range(3):  # one kept-alive connection: each request has its own trace
            echoed = client.post("/echo", json={"n": n})
            assert echoed.json() == {"n": n}
        assert collector.event_count == 0
    events = collector.wait_for_events(4, timeout=5)
    assert len({e["trace_id"] for e in events}) == 4
    by_body = {str(e["request"].get("body")): e for e in events}
    ignored = by_body["dW5yZWFkIGJvZHk="]  # b"unread body", text/plain goes out as base64
    tx = unread.headers["x-moesif-transaction-id"]
    del ignored["request"]["time"], ignored["response"]["time"], ignored["trace_id"]
    assert ignored == {  # drained though the app never read it; neither partial nor aborted
        "request": {
            "uri": f"{base}/ignore",
            "verb": "POST",
            "headers": {
                "host": base.removeprefix("http://"),
                "accept": "*/*",
                "accept-encoding": "gzip, deflate",
                "connection": "keep-alive",
                "user-agent": f"python-httpx/{httpx.__version__}",
                "content-length": "11",
                "content-type": "text/plain",
                "x-moesif-transaction-id": tx,
            },
            "ip_address": "127.0.0.1",
            "body": "dW5yZWFkIGJvZHk=",
            "transfer_encoding": "base64",
        },
        "response": {
            "status": 200,
            "headers": {
                "content-length": "8",
                "content-type": "text/plain; charset=utf-8",
                "x-moesif-transaction-id": tx,
            },
            "body": "bm90IHJlYWQ=",  # b"not read"
            "transfer_encoding": "base64",
        },
        "direction": "Incoming",
        "weight": 1,
        "transaction_id": tx,
    }
    for n in range(3):
        event = by_body[str({"n": n})]
        assert event["request"]["uri"] == f"{base}/echo"
        assert event["response"]["body"] == {"n": n}
    assert collector.rejected == []
