"""An endpoint that calls another MoesifMiddleware-wrapped app in-process (issue 13, point 8).

The inner request runs with the outer request's span current; each must still be its own event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.testclient import TestClient

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .servers import find_middleware, serve


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "edges-app", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


@pytest.fixture
def inner_app(collector: Collector) -> Iterator[FastAPI]:
    """A second MoesifMiddleware-wrapped app, called in-process from the outer app's endpoints."""
    inner = FastAPI()
    inner.add_middleware(MoesifMiddleware, settings=settings_for(collector, APPLICATION_ID="inner-app"))

    @inner.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    yield inner
    find_middleware(inner, MoesifMiddleware).pipeline.shutdown()  # no lifespan runs in-process


@pytest.mark.parametrize("client", ["httpx.ASGITransport", "TestClient"])
def test_an_app_called_in_process_from_an_endpoint_gets_its_own_event(
    collector: Collector, inner_app: FastAPI, client: str
) -> None:
    """The inner request finds the outer request's span current; it must open its own, not write
    its body and URI onto the outer event (and lose its own)."""
    outer = FastAPI()
    outer.add_middleware(MoesifMiddleware, settings=settings_for(collector))

    @outer.post("/async")
    async def via_transport(request: Request) -> JSONResponse:
        transport = httpx.ASGITransport(app=inner_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inner.test") as inner:
            answer = await inner.post("/echo", json={"who": "inner"})
        return JSONResponse({"got": await request.json(), "inner": answer.json()})

    @outer.post("/sync")
    def via_testclient(payload: dict) -> dict:  # a sync endpoint: TestClient blocks its thread
        answer = TestClient(inner_app, base_url="http://inner.test").post("/echo", json={"who": "inner"})
        return {"got": payload, "inner": answer.json()}

    path = "/async" if client == "httpx.ASGITransport" else "/sync"
    with serve(outer) as base:
        answer = httpx.post(base + path, json={"who": "outer"})
        assert answer.json() == {"got": {"who": "outer"}, "inner": {"who": "inner"}}
        events = collector.wait_for_events(2)
    by_uri = {e["request"]["uri"]: e for e in events}
    assert sorted(by_uri) == [base + path, "http://inner.test/echo"]
    outer_event, inner_event = by_uri[base + path], by_uri["http://inner.test/echo"]
    assert outer_event["request"]["body"] == {"who": "outer"}
    assert outer_event["response"]["body"] == {"got": {"who": "outer"}, "inner": {"who": "inner"}}
    assert inner_event["request"]["body"] == {"who": "inner"}
    assert inner_event["response"]["body"] == {"who": "inner"}
    assert {b["headers"]["x-moesif-application-id"] for b in collector.batches} == {"edges-app", "inner-app"}
    assert collector.event_count == 2
