"""A request leaves no reference cycles behind.

Garbage in a cycle is freed only by the cyclic garbage collector; per request, it makes the
collector run more often and its full collections longer. The benchmark showed that as a p99
three times OTel's (issue 9). Everything a request allocates must be freed by reference counting
as soon as the request and its export are done: this checks it with the collector switched off.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
from typing import Any

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .apps import make_app
from .asgi import call, json_headers

JSON_BODY = json.dumps({"name": "ada", "password": "secret", "items": [1, 2, 3]}).encode()


def settings_for(collector: Collector) -> dict[str, Any]:
    return {
        "APPLICATION_ID": "cycles-app",
        "BASE_URI": collector.url,
        "EVENT_BATCH_TIMEOUT": 0.05,
        "LOG_BODY": True,
        "IDENTIFY_USER": lambda request, response: "user-1",
        "IDENTIFY_COMPANY": lambda request, response: "company-1",
        "GET_METADATA": lambda request, response: {"plan": "pro"},
        "SKIP": lambda request, response: False,
    }


async def _traffic(app: Any, rounds: int) -> None:
    with_body = {"body": JSON_BODY, "headers": json_headers(JSON_BODY)}
    for i in range(rounds):
        assert (await call(app, "GET", f"/items/{i}")).status == 200
        assert (await call(app, "POST", "/users", **with_body)).status == 201
        assert (await call(app, "GET", "/text")).status == 200
        assert (await call(app, "GET", "/stream")).status == 200
        assert (await call(app, "GET", "/binary")).status == 200
        assert (await call(app, "GET", "/text", **with_body)).status == 200  # unread: capture drains it


def _describe(garbage: list[Any]) -> str:
    counts = collections.Counter(type(obj).__qualname__ for obj in garbage)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common(12))


@pytest.mark.parametrize("server_span", ["own", "otel_asgi"])
def test_requests_leave_no_reference_cycles(collector: Collector, server_span: str) -> None:
    app: Any = make_app()
    if server_span == "own":
        app = MoesifMiddleware(app, settings_for(collector))
        moesif = app
    else:  # capture onto the SERVER span of OTel's own ASGI middleware
        provider = TracerProvider()
        moesif = MoesifMiddleware(app, settings_for(collector), tracer_provider=provider)
        app = OpenTelemetryMiddleware(moesif, tracer_provider=provider, meter_provider=NoOpMeterProvider())
    rounds = 30
    was_enabled = gc.isenabled()
    try:
        asyncio.run(_traffic(app, 5))  # imports, caches and worker threads start outside the check
        assert moesif.flush(5)
        gc.collect()
        gc.disable()
        asyncio.run(_traffic(app, rounds))
        assert moesif.flush(5)  # the export ran too: converted, serialised, sent
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
        moesif.pipeline.shutdown()

    assert len(collector.wait_for_events(6 * (rounds + 5))) == 6 * (rounds + 5)
    assert garbage == [], f"{len(garbage)} objects in reference cycles: {_describe(garbage)}"
