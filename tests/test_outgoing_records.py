"""Issue 14, points 1-3, for outgoing calls: requests and httpx calls reach Moesif as records, so the
app's sampler, the CLIENT span's end and what the app's other exporters see stay OpenTelemetry's.

A real upstream on uvicorn and the local collector; an InMemorySpanExporter beside the Moesif
exporter on the app's provider stands for the app's APM exporter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import requests
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector
from moesif_otel.outgoing import disable_outgoing_capture

from .apps import make_app
from .servers import serve
from .test_autoinstrument import instrumented, moesif_env
from .test_otel_records import SAMPLERS, Apm, ms, span_text

CALLS = 30
SECRETS = ("Bearer token-secret", "cookie-secret", "setcookie-secret", "body-secret")
BODY = b'{"password":"body-secret"}'


async def upstream_json(request: Request) -> Response:
    return JSONResponse({"q": request.query_params.get("q")})


async def upstream_login(request: Request) -> Response:
    answer = Response(await request.body(), media_type="application/json")
    answer.headers["set-cookie"] = "sid=setcookie-secret"
    return answer


UPSTREAM = Starlette(
    routes=[Route("/json", upstream_json), Route("/login", upstream_login, methods=["POST"])]
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(UPSTREAM, lifespan="off") as base:
        yield base


@contextmanager
def capturing(collector: Collector, apm: Apm, **settings: Any) -> Iterator[MoesifMiddleware]:
    middleware = MoesifMiddleware(
        make_app(),
        {
            "APPLICATION_ID": "outgoing-records",
            "BASE_URI": collector.url,
            "EVENT_BATCH_TIMEOUT": 0.05,
            "CAPTURE_OUTGOING_REQUESTS": True,
            **settings,
        },
        tracer_provider=apm.provider,
    )
    try:
        yield middleware
    finally:
        disable_outgoing_capture()
        middleware.pipeline.shutdown()
        apm.provider.shutdown()


# Each client makes its calls the way an app does: (url, headers, body or None) -> None, blocking.
Call = Callable[[str, "dict[str, str]", "bytes | None"], None]


def with_requests(url: str, headers: dict[str, str], body: bytes | None) -> None:
    answer = requests.request("POST" if body else "GET", url, headers=headers, data=body, timeout=5)
    assert answer.status_code == 200 and (body is None or answer.content == body)


def with_httpx(url: str, headers: dict[str, str], body: bytes | None) -> None:
    with httpx.Client() as client:
        answer = client.request("POST" if body else "GET", url, headers=headers, content=body)
    assert answer.status_code == 200 and (body is None or answer.content == body)


def with_httpx_async(url: str, headers: dict[str, str], body: bytes | None) -> None:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.request("POST" if body else "GET", url, headers=headers, content=body)

    answer = asyncio.run(call())
    assert answer.status_code == 200 and (body is None or answer.content == body)


CLIENTS: dict[str, Call] = {"requests": with_requests, "httpx": with_httpx, "httpx-async": with_httpx_async}


def client_spans(apm: Apm) -> list[ReadableSpan]:
    return [s for s in apm.spans() if s.kind is SpanKind.CLIENT]


# -- (1) sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_outgoing_call_reaches_moesif_whatever_the_sampler(
    collector: Collector, upstream: str, sampler: str, client: str
) -> None:
    apm = Apm(SAMPLERS[sampler])
    with capturing(collector, apm) as middleware:
        if client == "httpx-async":  # one loop for all calls: as an app makes them

            async def calls() -> None:
                async with httpx.AsyncClient() as session:
                    for i in range(CALLS):
                        assert (await session.get(f"{upstream}/json?q={i}")).status_code == 200

            asyncio.run(calls())
        else:
            for i in range(CALLS):
                CLIENTS[client](f"{upstream}/json?q={i}", {}, None)
        events = collector.wait_for_events(CALLS)
        assert middleware.flush(5)
        stats = middleware.pipeline.stats()
    assert collector.event_count == CALLS and collector.rejected == []
    assert sorted(int(e["request"]["uri"].rsplit("=", 1)[1]) for e in events) == list(range(CALLS))
    assert {e["direction"] for e in events} == {"Outgoing"}
    assert {e["weight"] for e in events} == {1}
    assert all(e["response"]["body"] == {"q": e["request"]["uri"].rsplit("=", 1)[1]} for e in events)
    trace_ids = {e["trace_id"] for e in events}
    assert len(trace_ids) == CALLS and "0" * 32 not in trace_ids
    # the sampler still decides about the spans, each with its event's trace id
    spans = client_spans(apm)
    assert len(spans) < CALLS
    assert {format(s.context.trace_id, "032x") for s in spans} <= trace_ids
    if sampler == "always-off":
        assert spans == []
    # every record counted: captured == sent (+ nothing dropped, nothing pending)
    assert stats["captured"] == stats["sent"] == CALLS
    assert stats["sampled_out_outgoing"] == stats["pending"] == 0


def test_outgoing_calls_of_sampled_out_requests_under_opentelemetry_instrument(collector: Collector) -> None:
    """The distro's outgoing capture submits through the distro's path, with the request's trace id."""
    env = moesif_env(
        collector,
        OTEL_TRACES_SAMPLER="always_off",
        PLAIN_APP_UPSTREAM=f"{collector.url}/health/probe",
        MOESIF_CAPTURE_OUTGOING_REQUESTS="true",
    )
    count = 4
    with instrumented("tests.plain_app:app", env) as server:
        for _ in range(count):
            assert httpx.get(f"{server.base}/call-out").json() == {"upstream_status": 200}
        events = collector.wait_for_events(2 * count)
        output = server.stop()
    assert "Traceback" not in output, output
    assert collector.event_count == 2 * count and collector.rejected == []
    incoming = [e for e in events if e["direction"] == "Incoming"]
    outgoing = [e for e in events if e["direction"] == "Outgoing"]
    assert len(incoming) == len(outgoing) == count
    assert {e["trace_id"] for e in outgoing} == {e["trace_id"] for e in incoming}
    assert all(e["response"]["body"] == {"status": True, "region": "local"} for e in outgoing)
    assert {e["weight"] for e in events} == {1}


# -- (2) span timing ---------------------------------------------------------------------------------

HOOK_SECONDS = 0.2


def slow_user(request: Any, response: Any) -> str:
    time.sleep(HOOK_SECONDS)
    return "slow-user"


async def slow_async_user(request: Any, response: Any) -> str:
    await asyncio.sleep(HOOK_SECONDS)
    return "slow-async-user"


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("on_span", [False, True], ids=["default", "CAPTURE_ON_SPAN"])
def test_the_client_span_ends_with_the_exchange_not_after_the_hooks(
    collector: Collector, upstream: str, client: str, on_span: bool
) -> None:
    hook: Callable[[Any, Any], str | Awaitable[str]] = (
        slow_async_user if client == "httpx-async" else slow_user
    )
    apm = Apm()
    with capturing(collector, apm, IDENTIFY_USER_OUTGOING=hook, CAPTURE_ON_SPAN=on_span):
        for i in range(3):
            started = time.monotonic()
            CLIENTS[client](f"{upstream}/json?q={i}", {}, None)
            # the hooks still run in the caller's thread (or task), before the call returns
            assert time.monotonic() - started >= HOOK_SECONDS
        events = collector.wait_for_events(3)
    spans = {s.context.trace_id: s for s in client_spans(apm)}
    assert len(spans) == 3
    for event in events:
        assert event["user_id"] in ("slow-user", "slow-async-user")  # the hook's value reaches Moesif
        span = spans[int(event["trace_id"], 16)]
        assert span.end_time is not None and span.start_time is not None
        # a local exchange takes milliseconds; with the hook inside, the span would last 200 ms or more
        # (the margin is for a loaded 2-core machine)
        assert span.end_time - span.start_time < HOOK_SECONDS * 1e9, (span.end_time - span.start_time) / 1e6
        # the event's response time (ms) and the span's end describe the same moment
        assert abs(span.end_time - ms(event["response"]["time"])) < HOOK_SECONDS * 0.75e9


# -- (3) what other exporters see --------------------------------------------------------------------

SENT_HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer token-secret",
    "cookie": "session=cookie-secret",
}


def assert_moesif_got_everything(event: dict[str, Any]) -> None:
    assert event["direction"] == "Outgoing"
    assert event["request"]["headers"]["authorization"] == "Bearer token-secret"
    assert event["request"]["headers"]["cookie"] == "session=cookie-secret"
    assert event["response"]["headers"]["set-cookie"] == "sid=setcookie-secret"
    assert event["request"]["body"] == {"password": "body-secret"}
    assert event["response"]["body"] == {"password": "body-secret"}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_other_exporters_get_no_bodies_or_secret_headers_of_outgoing_calls(
    collector: Collector, upstream: str, client: str
) -> None:
    apm = Apm()
    with capturing(collector, apm):
        CLIENTS[client](f"{upstream}/login", SENT_HEADERS, BODY)
        [event] = collector.wait_for_events(1)
    assert_moesif_got_everything(event)
    [span] = client_spans(apm)
    text = span_text(span)
    assert not [s for s in SECRETS if s in text], text
    assert not any(k.startswith("moesif.") and k != "moesif.recorded" for k in span.attributes or {})
    assert not any(k.startswith(("http.request.body", "http.response.body")) for k in span.attributes or {})
    attrs = span.attributes or {}
    assert attrs.get("http.response.status_code", attrs.get("http.status_code")) == 200


@pytest.mark.parametrize("client", list(CLIENTS))
def test_capture_on_span_writes_outgoing_bodies_and_headers_onto_the_client_span(
    collector: Collector, upstream: str, client: str
) -> None:
    apm = Apm()
    with capturing(collector, apm, CAPTURE_ON_SPAN=True) as middleware:
        CLIENTS[client](f"{upstream}/login", SENT_HEADERS, BODY)
        [event] = collector.wait_for_events(1)
        assert middleware.flush(5)
    assert collector.event_count == 1  # the span itself is still not a second event
    assert_moesif_got_everything(event)
    [span] = client_spans(apm)
    attrs = span.attributes or {}
    assert attrs["http.request.body.content"] == BODY.decode()
    assert attrs["http.response.body.content"] == BODY.decode()
    assert attrs["http.response.body.size"] == len(BODY)
    assert "authorization:Bearer token-secret" in attrs["moesif.request.headers"].split("\n")
    assert "set-cookie:sid=setcookie-secret" in attrs["moesif.response.headers"].split("\n")


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_other_exporters_get_the_client_headers_otel_is_told_to_capture_sanitized(
    collector: Collector, upstream: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "authorization,cookie")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "set-cookie")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization,.*cookie")
    apm = Apm()
    with capturing(collector, apm):  # the instrumentations read the variables when instrumenting
        CLIENTS[client](f"{upstream}/login", SENT_HEADERS, BODY)
        [event] = collector.wait_for_events(1)
    assert_moesif_got_everything(event)
    [span] = client_spans(apm)
    attrs = span.attributes or {}
    assert attrs["http.request.header.authorization"] == ("[REDACTED]",)
    assert attrs["http.request.header.cookie"] == ("[REDACTED]",)
    assert attrs["http.response.header.set_cookie"] == ("[REDACTED]",)
    text = span_text(span)
    assert not [s for s in SECRETS if s in text], text


# -- one hook runner, no import cycle ------------------------------------------------------------------


def test_a_slow_sync_hook_of_an_async_client_does_not_block_the_event_loop(
    collector: Collector, upstream: str
) -> None:
    """The *_OUTGOING hooks of httpx.AsyncClient run as capture runs hooks: a sync hook starts off the
    loop (until known fast), so a slow one does not stop the app's other tasks."""

    async def main() -> float:
        done = asyncio.Event()
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{upstream}/json?q=slow")).status_code == 200
        done.set()
        await task
        return max(gaps)

    apm = Apm()
    with capturing(collector, apm, IDENTIFY_USER_OUTGOING=slow_user):
        longest_gap = asyncio.run(main())
        [event] = collector.wait_for_events(1)
    assert event["user_id"] == "slow-user"
    assert longest_gap < HOOK_SECONDS * 0.9, longest_gap  # the loop kept running during the 200 ms hook


def test_client_modules_do_not_import_outgoing() -> None:
    """outgoing.py imports the client modules; they and the leaf they share import it back never."""
    import ast
    from pathlib import Path

    import moesif_otel

    package = Path(moesif_otel.__file__).parent
    modules = sorted(package.glob("outgoing_*.py"))
    assert {m.stem for m in modules} >= {"outgoing_requests", "outgoing_httpx"}
    for module in modules:
        name = module.stem
        tree = ast.parse(module.read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not imported & {
            "moesif_otel.outgoing",
            "moesif_otel.outgoing_requests",
            "moesif_otel.outgoing_httpx",
        }, (
            name,
            imported,
        )
