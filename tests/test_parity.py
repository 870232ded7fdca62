"""moesifasgi parity and hostile input (issue 3), through a real uvicorn and the local collector."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import socket
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.testclient import TestClient

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .apps import make_app
from .asgi import call
from .servers import serve


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "parity-app", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def jwt(claims: dict[str, Any], *, urlsafe: bool = True) -> str:
    def enc(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj).encode()
        text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
        return text.rstrip("=")

    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2lnbmF0dXJl"


def one_event(collector: Collector, app: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    with serve(app) as base:
        httpx.request(method, base + path, **kwargs)
        [event] = collector.wait_for_events(1)
    assert collector.rejected == []
    return event


# -- identity -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "settings", "expected"),
    [
        ({"authorization": "Bearer " + jwt({"sub": "jwt-user"})}, {}, "jwt-user"),
        ({"authorization": "Bearer " + jwt({"sub": "std-user"}, urlsafe=False)}, {}, "std-user"),
        ({"authorization": "bearer " + jwt({"uid": 42})}, {"AUTHORIZATION_USER_ID_FIELD": "uid"}, "42"),
        ({"authorization": "Basic " + base64.b64encode(b"basic-user:pw").decode()}, {}, "basic-user"),
        (
            {"x-api-key": jwt({"sub": "key-user"})},
            {"AUTHORIZATION_HEADER_NAME": "X-Api-Key, Authorization"},
            "key-user",
        ),
        ({"authorization": "Bearer not.a.jwt"}, {}, None),
        ({"authorization": "Bearer %%%%"}, {}, None),
    ],
)
def test_user_id_from_authorization_header(
    collector: Collector, headers: dict[str, str], settings: dict[str, Any], expected: str | None
) -> None:
    event = one_event(
        collector, make_app(settings_for(collector, **settings)), "GET", "/items/1", headers=headers
    )
    assert event.get("user_id") == expected


def test_identify_user_wins_and_empty_result_falls_back(collector: Collector) -> None:
    settings = settings_for(collector, IDENTIFY_USER=lambda req, res: req.headers.get("x-user") or None)
    token = {"authorization": "Bearer " + jwt({"sub": "from-jwt"})}
    with serve(make_app(settings)) as base:
        httpx.get(base + "/items/1", headers={**token, "x-user": "from-hook"})
        httpx.get(base + "/items/2", headers=token)
        events = collector.wait_for_events(2)
    users = {e["request"]["uri"].rsplit("/", 1)[1]: e.get("user_id") for e in events}
    assert users == {"1": "from-hook", "2": "from-jwt"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-forwarded-for": "unknown, 203.0.113.7:8080, 10.0.0.1"}, "203.0.113.7"),
        ({"x-client-ip": "198.51.100.2", "x-forwarded-for": "203.0.113.7"}, "198.51.100.2"),
        ({"x-forwarded-for": "[2001:db8::1]:443"}, "2001:db8::1"),
        ({"x-real-ip": "2001:db8::2"}, "2001:db8::2"),
        ({"forwarded": 'for="[2001:db8::3]:80";proto=https'}, "2001:db8::3"),
        # uvicorn trusts proxy headers from 127.0.0.1 and makes "garbage" the peer: not an IP, so none
        ({"x-forwarded-for": "garbage"}, None),
        ({}, "127.0.0.1"),
    ],
)
def test_client_ip(collector: Collector, headers: dict[str, str], expected: str | None) -> None:
    event = one_event(collector, make_app(settings_for(collector)), "GET", "/items/1", headers=headers)
    assert event["request"].get("ip_address") == expected


def test_scope_without_client_works(collector: Collector) -> None:
    app = make_app(settings_for(collector))
    assert asyncio.run(call(app, "GET", "/items/9", client=None)).status == 200
    mw = app.middleware_stack
    while not isinstance(mw, MoesifMiddleware):
        mw = mw.app
    assert mw.flush(5)
    [event] = collector.wait_for_events(1)
    assert event["request"]["uri"] == "http://example.test/items/9"
    assert "ip_address" not in event["request"]


# -- transaction id -------------------------------------------------------------------------------


def test_transaction_id_under_concurrency(collector: Collector) -> None:
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector))

    @app.get("/slow/{n}")
    async def slow(n: int) -> dict[str, int]:
        await asyncio.sleep(0.01 * (n % 5))  # interleave requests inside the app
        return {"n": n}

    count = 60
    with serve(app) as base, ThreadPoolExecutor(16) as pool:
        given = {n: f"given-{n}" for n in range(0, count, 3)}

        def call(n: int) -> tuple[int, str]:
            headers = {"x-moesif-transaction-id": given[n]} if n in given else {}
            answer = httpx.get(f"{base}/slow/{n}", headers=headers)
            return n, answer.headers["x-moesif-transaction-id"]

        answered = dict(pool.map(call, range(count)))
        events = collector.wait_for_events(count)
    assert len(set(answered.values())) == count
    for n, tx in given.items():
        assert answered[n] == tx
    for event in events:
        n = int(event["request"]["uri"].rsplit("/", 1)[1])
        tx = answered[n]
        assert event["transaction_id"] == tx
        assert event["request"]["headers"]["x-moesif-transaction-id"] == tx
        assert event["response"]["headers"]["x-moesif-transaction-id"] == tx


def test_disabled_transaction_id(collector: Collector) -> None:
    app = make_app(settings_for(collector, DISABLED_TRANSACTION_ID=True))
    with serve(app) as base:
        answer = httpx.get(base + "/items/1")
        [event] = collector.wait_for_events(1)
    assert "x-moesif-transaction-id" not in answer.headers
    assert "x-moesif-transaction-id" not in event["request"]["headers"]
    assert "x-moesif-transaction-id" not in event["response"]["headers"]
    assert event["transaction_id"]  # the event still has an id for Moesif's deduplication


# -- an event for every request -------------------------------------------------------------------


def edge_app(collector: Collector, **settings: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector, **settings))

    @app.get("/nothing", status_code=204)
    async def nothing() -> Response:
        return Response(status_code=204)

    @app.get("/cached")
    async def cached() -> Response:
        return Response(status_code=304, headers={"etag": '"abc"'})

    @app.api_route("/head", methods=["GET", "HEAD"])
    async def head() -> JSONResponse:
        return JSONResponse({"big": "x" * 100})

    @app.post("/ignore-body")
    async def ignore_body() -> dict[str, bool]:
        return {"read": False}

    @app.post("/read")
    async def read(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/forever")
    async def forever() -> StreamingResponse:
        async def chunks():
            yield b"first chunk\n"
            while True:
                await asyncio.sleep(0.01)
                yield b"more\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


def test_204_304_and_head(collector: Collector) -> None:
    with serve(edge_app(collector)) as base:
        assert httpx.get(base + "/nothing").status_code == 204
        assert httpx.get(base + "/cached").status_code == 304
        assert httpx.head(base + "/head").status_code == 200
        events = collector.wait_for_events(3)
    by_path = {e["request"]["uri"].rsplit("/", 1)[1]: e for e in events}
    assert by_path["nothing"]["response"]["status"] == 204
    assert by_path["cached"]["response"]["status"] == 304
    assert by_path["cached"]["response"]["headers"]["etag"] == '"abc"'
    assert by_path["head"]["request"]["verb"] == "HEAD"
    assert by_path["head"]["response"]["status"] == 200
    for event in events:
        assert "metadata" not in event  # nothing partial about any of them


def test_unread_and_empty_request_bodies(collector: Collector) -> None:
    with serve(edge_app(collector)) as base:
        assert httpx.post(base + "/ignore-body", json={"never": "read"}).json() == {"read": False}
        assert httpx.post(base + "/read", content=b"").json() == {"size": 0}
        events = collector.wait_for_events(2)
    by_path = {e["request"]["uri"].rsplit("/", 1)[1]: e for e in events}
    assert by_path["ignore-body"]["request"]["body"] == {"never": "read"}
    assert "body" not in by_path["read"]["request"]


@pytest.mark.parametrize(
    ("http_version", "headers", "drained"),
    [
        ("1.1", [], False),
        ("1.0", [], False),
        ("1.1", [(b"content-length", b"0")], False),
        ("1.1", [(b"content-length", b"12")], True),
        ("1.1", [(b"transfer-encoding", b"chunked")], True),
        ("2", [], True),  # HTTP/2 frames a body without either header
    ],
)
def test_only_a_request_that_can_have_a_body_is_drained(
    collector: Collector, http_version: str, headers: list[tuple[bytes, bytes]], drained: bool
) -> None:
    """A body the app left unread is read for the event; a request without one is not waited on."""
    app = make_app(settings_for(collector, LOG_BODY=True))  # GET /text never reads the body
    body = b"hello world!" if drained else b""
    exchange = asyncio.run(call(app, "GET", "/text", body=body, headers=headers, http_version=http_version))
    assert exchange.status == 200
    [event] = collector.wait_for_events(1)
    assert exchange.receives == (1 if drained else 0)
    assert ("body" in event["request"]) is drained


def test_client_disconnect_mid_stream_still_records(collector: Collector) -> None:
    with serve(edge_app(collector)) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            while b"first chunk" not in received:
                received += sock.recv(4096)
        [event] = collector.wait_for_events(1)
    assert event["response"]["status"] == 200
    assert base64.b64decode(event["response"]["body"]).startswith(b"first chunk\n")
    assert "aborted" in event["metadata"]["moesif_otel"]


# -- bodies ---------------------------------------------------------------------------------------


def test_gzip_and_deflate_request_bodies_stay_json(collector: Collector) -> None:
    payload = {"compressed": True, "n": [1, 2, 3]}
    with serve(edge_app(collector)) as base:
        for encoding, data in (
            ("gzip", gzip.compress(json.dumps(payload).encode())),
            ("deflate", zlib.compress(json.dumps(payload).encode())),
        ):
            headers = {"content-type": "application/json", "content-encoding": encoding}
            assert httpx.post(base + "/read", content=data, headers=headers).status_code == 200
        events = collector.wait_for_events(2)
    for event in events:
        assert event["request"]["body"] == payload
        assert event["request"]["transfer_encoding"] == "json"


def test_multipart_form_and_odd_bodies(collector: Collector) -> None:
    secret = b"FILE-BYTES-" * 50
    with serve(edge_app(collector)) as base:
        httpx.post(base + "/read?n=1", data={"title": "report"}, files={"upload": ("report.pdf", secret)})
        httpx.post(base + "/read?n=2", data={"a": "1", "b": "two words"})
        httpx.post(base + "/read?n=3", content=b"\xff\xfe not utf-8", headers={"content-type": "text/plain"})
        httpx.post(base + "/read?n=4", content=b"{not json", headers={"content-type": "application/json"})
        # uploads overlap, so events may arrive in any order: put them back in request order
        events = sorted(collector.wait_for_events(4), key=lambda e: e["request"]["uri"])
    multipart, form, invalid_utf8, not_json = (e["request"] for e in events)
    assert multipart["body"] == {"title": "report", "upload": "report.pdf"}
    assert "FILE-BYTES" not in json.dumps(events[0])
    assert form["body"] == {"a": "1", "b": "two words"}
    assert form["transfer_encoding"] == "json"
    assert base64.b64decode(invalid_utf8["body"]) == b"\xff\xfe not utf-8"
    assert invalid_utf8["transfer_encoding"] == "base64"
    assert base64.b64decode(not_json["body"]) == b"{not json"
    assert not_json["transfer_encoding"] == "base64"


def test_json_content_type_with_garbage_keeps_the_apps_answer(collector: Collector) -> None:
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings_for(collector))

    @app.post("/typed")
    async def typed(payload: dict) -> dict:
        return payload

    with serve(app) as base:
        answer = httpx.post(base + "/typed", content=b"{broken", headers={"content-type": "application/json"})
        [event] = collector.wait_for_events(1)
    assert answer.status_code == 422
    assert event["response"]["status"] == 422
    assert event["response"]["body"] == answer.json()
    assert event["request"]["transfer_encoding"] == "base64"


def test_bodies_over_the_cap_are_not_sent_whole(collector: Collector) -> None:
    big = {"data": "y" * 50_000}
    app = make_app(settings_for(collector, MAX_BODY_SIZE=10_000))
    with serve(app) as base:
        answer = httpx.post(base + "/echo", json=big)
        [event] = collector.wait_for_events(1)
    assert answer.json() == big  # the app is unaffected
    assert "body" not in event["request"] and "body" not in event["response"]
    notes = event["metadata"]["moesif_otel"]
    assert "truncated" in notes["request_body"] and "truncated" in notes["response_body"]


def test_no_event_exceeds_one_megabyte(collector: Collector) -> None:
    # a cap above Moesif's limit: the exporter must still keep each event under 1 MB
    big = {"data": "z" * 700_000}
    app = make_app(settings_for(collector, MAX_BODY_SIZE=2_000_000))
    with serve(app) as base:
        assert httpx.post(base + "/echo", json=big).json() == big
        [event] = collector.wait_for_events(1)
    assert len(json.dumps(event)) < 1_000_000
    assert "omitted" in event["metadata"]["moesif_otel"]["response_body"]


# -- broken hooks ---------------------------------------------------------------------------------


def test_broken_hooks_are_logged_once_and_left_out(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    def raises(request, response):
        raise ValueError("hook bug")

    settings = settings_for(
        collector,
        IDENTIFY_USER=raises,
        IDENTIFY_COMPANY=lambda req, res: {"not": "a string"},
        GET_METADATA=lambda req, res: ["not", "a", "dict"],
        GET_SESSION_TOKEN=lambda req, res: "still-works",
    )
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    with serve(make_app(settings)) as base:
        for i in range(3):
            assert httpx.get(f"{base}/items/{i}").status_code == 200
        events = collector.wait_for_events(3)
    for event in events:
        assert "user_id" not in event and "company_id" not in event and "metadata" not in event
        assert event["session_token"] == "still-works"
    messages = [r.getMessage() for r in caplog.records if r.name == "moesif_otel"]
    assert sum("IDENTIFY_USER raised ValueError" in m for m in messages) == 1
    assert sum("IDENTIFY_COMPANY returned dict" in m for m in messages) == 1
    assert sum("GET_METADATA returned list" in m for m in messages) == 1


@pytest.mark.parametrize("behaviour", ["raises", "returns_none", "returns_dict"])
def test_broken_mask_drops_the_event_never_leaks_it(
    collector: Collector, caplog: pytest.LogCaptureFixture, behaviour: str
) -> None:
    def mask(event):
        if behaviour == "raises":
            raise KeyError("password")
        return None if behaviour == "returns_none" else {"request": {}}

    app = make_app(settings_for(collector, MASK_EVENT_MODEL=mask))
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    with serve(app) as base:
        assert httpx.post(base + "/users", json={"name": "x", "password": "secret"}).status_code == 201
        assert httpx.post(base + "/users", json={"name": "y", "password": "secret"}).status_code == 201
        mw = app.middleware_stack
        while not isinstance(mw, MoesifMiddleware):
            mw = mw.app
    assert collector.events == []
    assert mw.stats()["dropped_mask"] == 2
    assert sum("MASK_EVENT_MODEL" in r.getMessage() for r in caplog.records) == 1


# -- pass-through and logging ---------------------------------------------------------------------


def test_websocket_and_lifespan_pass_through(collector: Collector) -> None:
    phases: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        phases.append("startup")
        yield
        phases.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text() + "!")
        await websocket.close()

    app.add_middleware(MoesifMiddleware, settings=settings_for(collector))
    with TestClient(app) as client, client.websocket_connect("/ws") as socket_:
        socket_.send_text("hi")
        assert socket_.receive_text() == "hi!"
    assert phases == ["startup", "shutdown"]
    assert collector.events == []


def test_debug_logs_only_to_our_logger(collector: Collector) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with serve(make_app(settings_for(collector, DEBUG=True))) as base:
        httpx.get(base + "/items/1")
        collector.wait_for_events(1)
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("moesif_otel").level == logging.DEBUG
    logging.getLogger("moesif_otel").setLevel(logging.NOTSET)


def test_metadata_that_is_not_json_is_left_out(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(collector, GET_METADATA=lambda req, res: {"when": object()})
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    with serve(make_app(settings)) as base:
        for i in range(2):
            assert httpx.get(f"{base}/items/{i}").status_code == 200
        events = collector.wait_for_events(2)
    assert all("metadata" not in e for e in events)
    messages = [r.getMessage() for r in caplog.records if r.name == "moesif_otel"]
    assert sum("GET_METADATA returned data that is not JSON" in m for m in messages) == 1
