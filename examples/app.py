"""An example FastAPI app: the moesifasgi README's sample, with only the import changed.

Run it with ``uvicorn app:app --app-dir examples``. It sends to Moesif when MOESIF_APPLICATION_ID
is set, and to whatever MOESIF_BASE_URI names (the demo points it at the local collector).
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from moesif_otel import MoesifMiddleware

custom_user = "12345"
custom_company = "67890"


async def identify_user(request, response):
    # async hooks work as in moesifasgi; the app's request.state is visible here
    return getattr(request.state, "user_id", None) or custom_user


def identify_company(request, response):
    return request.headers.get("x-company-id", custom_company)


def get_token(request, response):
    return request.headers.get("x-session-token")


async def get_metadata(request, response):
    return {"datacenter": "westus", "deployment_version": "v1.2.3", "status": response.status_code}


def should_skip(request, response):
    return "health/probe" in request.url.path


def mask_event(eventmodel):
    # The moesifasgi README's example, for both bodies. Here response.body is already filled in
    # (with moesifasgi it is always None, so the password went out unmasked).
    for body in (eventmodel.request.body, eventmodel.response.body):
        if isinstance(body, dict) and "password" in body:
            body["password"] = None
    return eventmodel


moesif_settings = {
    "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "local-demo-application-id"),
    "LOG_BODY": True,
    "API_VERSION": "1.2.0",
    "IDENTIFY_USER": identify_user,
    "IDENTIFY_COMPANY": identify_company,
    "GET_SESSION_TOKEN": get_token,
    "GET_METADATA": get_metadata,
    "SKIP": should_skip,
    "MASK_EVENT_MODEL": mask_event,
}

app = FastAPI(title="moesif_otel example")
app.add_middleware(MoesifMiddleware, settings=moesif_settings)


@app.middleware("http")
async def authenticate(request: Request, call_next):
    # stands in for real authentication: IDENTIFY_USER reads request.state.user_id
    user = request.headers.get("x-user-id")
    if user:
        request.state.user_id = user
    return await call_next(request)


@app.get("/items/{item_id}")
async def read_item(item_id: int, verbose: bool = False):
    return {"id": item_id, "name": f"item {item_id}", "verbose": verbose}


@app.post("/users", status_code=201)
async def create_user(payload: dict):
    # echoes the password back so that MASK_EVENT_MODEL has something to mask
    return {"id": 7, "name": payload.get("name"), "password": payload.get("password")}


@app.get("/text")
async def text():
    return PlainTextResponse("plain text, sent base64 to Moesif")


@app.get("/logo.png")
async def binary():
    return Response(content=b"\x89PNG\r\n\x1a\n" + bytes(range(64)), media_type="image/png")


@app.get("/stream")
async def stream(chunks: int = 3):
    async def generate():
        for i in range(chunks):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(generate(), media_type="text/plain")


@app.get("/health/probe")
async def probe():
    return {"status": "ok"}


@app.get("/boom")
async def boom():
    raise RuntimeError("an unhandled error: the event still records a 500")
