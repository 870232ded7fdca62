"""The FastAPI app the integration tests serve, with and without MoesifMiddleware."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from moesif_otel import MoesifMiddleware

BINARY = bytes(range(256)) * 4
STREAM_CHUNKS = [f"chunk-{i:02d};".encode() * 10 for i in range(12)]


def make_app(settings: dict[str, Any] | None = None) -> FastAPI:
    app = FastAPI()
    if settings is not None:
        app.add_middleware(MoesifMiddleware, settings=settings)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))

    @app.post("/users", status_code=201)
    async def create_user(payload: dict) -> dict:
        return {"id": 7, "name": payload.get("name"), "password": payload.get("password")}

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict:
        request.state.user_id = f"state-user-{item_id}"
        return {"id": item_id}

    @app.get("/text")
    async def text() -> PlainTextResponse:
        return PlainTextResponse("hello, plain text")

    @app.get("/binary")
    async def binary() -> Response:
        return Response(BINARY, media_type="application/octet-stream")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks():
            for chunk in STREAM_CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/health/probe")
    async def probe() -> dict:
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    return app
