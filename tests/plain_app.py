"""An application with no Moesif code: what ``opentelemetry-instrument`` is pointed at in the tests.

``identify_user`` is the app's own function, the kind a user names in ``MOESIF_IDENTIFY_USER``;
it lives in the app module on purpose (loading it imports the module that creates the app).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.responses import Response
from opentelemetry import trace

app = FastAPI()
tracer = trace.get_tracer(__name__)


@app.post("/echo")
async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    with tracer.start_as_current_span("db query"):  # an internal span: never an event
        return {"id": item_id}


@app.get("/call-out")
def call_out() -> dict:
    """An outgoing call with ``requests`` (instrumented by opentelemetry-instrument)."""
    answer = requests.get(os.environ["PLAIN_APP_UPSTREAM"], timeout=5)
    return {"upstream_status": answer.status_code}


def identify_user(request: Any, response: Any) -> str | None:
    return request.headers.get("x-user")
