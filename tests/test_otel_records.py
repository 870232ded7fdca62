"""Issue 14, points 1-3: capture hands each call to the Moesif pipeline as a record, so the app's
sampler, the span's end and what the app's other exporters see stay OpenTelemetry's.

Real uvicorn and the local collector; an InMemorySpanExporter beside the Moesif exporter on the
app's provider stands for the app's APM exporter.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .servers import find_middleware, serve
from .test_autoinstrument import instrumented, moesif_env

REQUESTS = 200
SECRETS = ("Bearer token-secret", "cookie-secret", "setcookie-secret", "body-secret")


class EveryThird(Sampler):
    """A custom sampler: records one trace in three, by trace id."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if trace_id % 3 == 0 else Decision.DROP
        return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None)

    def get_description(self) -> str:
        return "EveryThird"


SAMPLERS = {
    "ratio": TraceIdRatioBased(0.1),
    "parentbased-ratio": ParentBased(TraceIdRatioBased(0.1)),
    "always-off": ALWAYS_OFF,
    "custom": EveryThird(),
}


class Apm:
    """The app's provider with an in-memory exporter: what the app's other backends receive."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> tuple[ReadableSpan, ...]:
        deadline = time.monotonic() + timeout
        while len(spans := self.spans()) < count:
            assert time.monotonic() < deadline, f"{len(spans)} spans, expected {count}"
            time.sleep(0.005)
        return spans


@pytest.fixture
def global_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Installs a provider as the global one for one test (the API sets it once per process)."""

    def install(provider: TracerProvider) -> None:
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)

    yield install


def build_app(
    collector: Collector, instrumentor: bool, provider: TracerProvider | None, **settings: Any
) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/login")
    async def login(request: Request) -> Response:
        answer = Response(await request.body(), media_type="application/json")
        answer.headers["set-cookie"] = "sid=setcookie-secret"
        answer.headers["x-resp"] = "r"
        return answer

    base = {"APPLICATION_ID": "records", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05}
    kwargs = {"tracer_provider": provider} if provider is not None else {}
    app.add_middleware(MoesifMiddleware, settings={**base, **settings}, **kwargs)
    if instrumentor:
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, exclude_spans=["receive", "send"])
    return app


def ms(text: str) -> int:
    """An event time ('2026-12-01T23:50:43.123Z') as ns since the epoch."""
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(text[20:23]) * 1_000_000


# -- (1) sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["own-span", "global-provider", "FastAPIInstrumentor"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_call_reaches_moesif_whatever_the_sampler(
    collector: Collector, global_provider: Any, sampler: str, way: str
) -> None:
    apm = Apm(SAMPLERS[sampler])
    if way == "own-span":  # the provider passed in: the drop-in opens the server span itself
        app = build_app(collector, False, apm.provider)
    else:  # joined globally: FastAPI's own server span, or FastAPIInstrumentor's
        global_provider(apm.provider)
        app = build_app(collector, way == "FastAPIInstrumentor", None)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        for i in range(REQUESTS):
            assert client.get(f"/items/{i}").status_code == 200
        events = collector.wait_for_events(REQUESTS)
        assert find_middleware(app, MoesifMiddleware).flush(5)
    assert collector.event_count == REQUESTS and collector.rejected == []
    assert sorted(int(e["request"]["uri"].rsplit("/", 1)[1]) for e in events) == list(range(REQUESTS))
    assert {e["weight"] for e in events} == {1}
    trace_ids = {e["trace_id"] for e in events}
    assert len(trace_ids) == REQUESTS and all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids)
    assert "0" * 32 not in trace_ids
    # the app's sampler still decides about the spans: one server span per recorded trace, none
    # opened twice, each with its event's trace id
    servers = [s for s in apm.spans() if s.kind is SpanKind.SERVER]
    server_traces = [format(s.context.trace_id, "032x") for s in servers]
    assert len(set(server_traces)) == len(server_traces) < REQUESTS
    assert set(server_traces) <= trace_ids
    if sampler == "always-off":
        assert apm.spans() == ()
    apm.provider.shutdown()


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio", "always_off"])
def test_every_call_reaches_moesif_under_opentelemetry_instrument(collector: Collector, sampler: str) -> None:
    env = moesif_env(collector, OTEL_TRACES_SAMPLER=sampler, OTEL_TRACES_SAMPLER_ARG="0.1")
    count = 60
    with instrumented("tests.plain_app:app", env) as server:
        with httpx.Client(base_url=server.base) as client:
            for i in range(count):
                assert client.get(f"/items/{i}").status_code == 200
        events = collector.wait_for_events(count)
        output = server.stop()
    assert "Traceback" not in output, output
    assert collector.event_count == count and collector.rejected == []
    assert sorted(int(e["request"]["uri"].rsplit("/", 1)[1]) for e in events) == list(range(count))
    assert {e["weight"] for e in events} == {1}
    assert len({e["trace_id"] for e in events}) == count


# -- (2) span timing ---------------------------------------------------------------------------------


def slow_identify(request: Any, response: Any) -> str:
    time.sleep(0.2)
    return "slow-user"


@pytest.mark.parametrize("instrumentor", [False, True], ids=["own-span", "FastAPIInstrumentor"])
def test_the_span_ends_when_the_response_completes_not_after_the_hooks(
    collector: Collector, instrumentor: bool
) -> None:
    apm = Apm()
    app = build_app(collector, instrumentor, apm.provider, IDENTIFY_USER=slow_identify)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        for i in range(3):
            assert client.get(f"/items/{i}").status_code == 200
            received = time.time_ns()
            [span] = apm.wait_for_spans(i + 1)[i:]
            assert span.kind is SpanKind.SERVER
            # ended before the client had the response in hand (plus scheduling slack), not 200 ms later
            assert span.end_time <= received + 15_000_000, (span.end_time - received) / 1e6
        events = collector.wait_for_events(3)
    spans = {s.context.trace_id: s for s in apm.spans()}
    for event in events:
        assert event["user_id"] == "slow-user"  # the hook's value still reaches Moesif
        span = spans[int(event["trace_id"], 16)]
        # the event's response time (ms) and the span's end describe the same moment
        assert abs(span.end_time - ms(event["response"]["time"])) < 15_000_000
    apm.provider.shutdown()


# -- (3) what other exporters see --------------------------------------------------------------------


def login(base: str) -> httpx.Response:
    answer = httpx.post(
        f"{base}/login",
        content=b'{"password":"body-secret"}',
        headers={
            "content-type": "application/json",
            "authorization": "Bearer token-secret",
            "cookie": "session=cookie-secret",
            "x-custom": "c",
        },
    )
    assert answer.status_code == 200 and answer.content == b'{"password":"body-secret"}'
    return answer


def span_text(span: ReadableSpan) -> str:
    return repr(dict(span.attributes or {})) + repr([(e.name, dict(e.attributes or {})) for e in span.events])


def header_attributes(span: ReadableSpan) -> dict[str, Any]:
    return {
        k: v
        for k, v in (span.attributes or {}).items()
        if k.startswith(("http.request.header.", "http.response.header."))
    }


def assert_moesif_got_everything(event: dict[str, Any]) -> None:
    """What moesifasgi sends: every header, both bodies."""
    assert event["request"]["headers"]["authorization"] == "Bearer token-secret"
    assert event["request"]["headers"]["cookie"] == "session=cookie-secret"
    assert event["response"]["headers"]["set-cookie"] == "sid=setcookie-secret"
    assert event["request"]["body"] == {"password": "body-secret"}
    assert event["response"]["body"] == {"password": "body-secret"}
    assert event["request"]["ip_address"] == "127.0.0.1"


@pytest.mark.parametrize("instrumentor", [False, True], ids=["own-span", "FastAPIInstrumentor"])
def test_other_exporters_get_no_bodies_or_secret_headers(collector: Collector, instrumentor: bool) -> None:
    apm = Apm()
    with serve(build_app(collector, instrumentor, apm.provider)) as base:
        login(base)
        [event] = collector.wait_for_events(1)
    assert_moesif_got_everything(event)
    [span] = apm.wait_for_spans(1)
    assert span.kind is SpanKind.SERVER and span.name == "POST /login"
    text = span_text(span)
    assert not [s for s in SECRETS if s in text], text
    assert header_attributes(span) == {}
    assert not any(k.startswith("moesif.") and k != "moesif.recorded" for k in span.attributes or {})
    status = (span.attributes or {}).get(
        "http.response.status_code", (span.attributes or {}).get("http.status_code")
    )
    assert status == 200
    apm.provider.shutdown()


@pytest.mark.parametrize("instrumentor", [False, True], ids=["own-span", "FastAPIInstrumentor"])
def test_other_exporters_get_the_headers_otel_is_told_to_capture_sanitized(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, instrumentor: bool
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-custom,authorization")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-resp,set-cookie")
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization,set-cookie"
    )
    apm = Apm()
    with serve(build_app(collector, instrumentor, apm.provider)) as base:
        login(base)
        [event] = collector.wait_for_events(1)
    assert_moesif_got_everything(event)
    [span] = apm.wait_for_spans(1)
    assert header_attributes(span) == {
        "http.request.header.x_custom": ("c",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.response.header.x_resp": ("r",),
        "http.response.header.set_cookie": ("[REDACTED]",),
    }
    text = span_text(span)
    assert not [s for s in SECRETS if s in text], text
    apm.provider.shutdown()


@pytest.mark.parametrize("instrumentor", [False, True], ids=["own-span", "FastAPIInstrumentor"])
def test_capture_on_span_opts_back_in(collector: Collector, instrumentor: bool) -> None:
    apm = Apm()
    app = build_app(collector, instrumentor, apm.provider, CAPTURE_ON_SPAN=True, IDENTIFY_USER=slow_identify)
    with serve(app) as base:
        login(base)
        received = time.time_ns()
        [span] = apm.wait_for_spans(1)
        # opting in does not bring back a span held open for the hooks
        assert span.end_time <= received + 15_000_000, (span.end_time - received) / 1e6
        [event] = collector.wait_for_events(1)
        assert find_middleware(app, MoesifMiddleware).flush(5)  # a span queued as an event would be sent
    assert_moesif_got_everything(event)
    assert event["user_id"] == "slow-user"
    assert collector.event_count == 1  # the span itself is still not a second event
    attrs = span.attributes or {}
    assert attrs["http.request.body.content"] == '{"password":"body-secret"}'
    assert attrs["http.response.body.content"] == '{"password":"body-secret"}'
    assert "authorization:Bearer token-secret" in attrs["moesif.request.headers"].split("\n")
    assert "set-cookie:sid=setcookie-secret" in attrs["moesif.response.headers"].split("\n")
    apm.provider.shutdown()
