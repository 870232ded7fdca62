"""config_sync.py and what it feeds, end to end: the app config served by the local collector, fetched,
refreshed and applied by a real app (sampling, governance). The decisions themselves, as pure logic,
are tested in test_appconfig.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation

from moesif_otel import MoesifMiddleware, appconfig
from moesif_otel.appconfig import keep
from moesif_otel.collector import Collector
from moesif_otel.config_sync import ConfigSync
from moesif_otel.transport import HttpTransport

from .apps import make_app
from .servers import find_middleware, serve


@pytest.fixture(autouse=True)
def _fresh_problem_log() -> None:
    """appconfig logs each problem once per process: a test that expects the warning must not
    depend on whether test_appconfig.py ran first."""
    appconfig._logged_problems.clear()


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": "config-app", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def applied(app: Any, etag: str | None = None, rules_tag: str | None = None) -> None:
    """Wait until the app's middleware applies the config with these tags."""
    sync = find_middleware(app, MoesifMiddleware).pipeline.app_config

    def ready() -> bool:
        current = sync.current
        return (etag is None or current.etag == etag) and (
            rules_tag is None or current.rules_tag == rules_tag
        )

    wait_until(ready)


def traceparent(trace_id: int) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{0x1111111111111111:016x}-01"}


# trace ids kept / dropped at a 50% rate (the decision uses the low 56 bits)
KEPT_AT_50 = (0xABC << 64) | 0x10
DROPPED_AT_50 = (0xABC << 64) | (0x00F0000000000000)
assert keep(KEPT_AT_50, 50) and not keep(DROPPED_AT_50, 50)


# -- fetching ---------------------------------------------------------------------------------------


def test_config_fetched_at_start_and_refetched_when_an_upload_announces_a_new_etag(
    collector: Collector,
) -> None:
    collector.set_config({"sample_rate": 100}, etag="v1")
    collector.set_rules([], tag="r1")
    app = make_app(settings_for(collector))
    with serve(app) as base:
        applied(app, "v1", "r1")  # fetched at startup, before any request
        assert collector.config_fetches == 1 and collector.rules_fetches == 1
        collector.set_config({"sample_rate": 0}, etag="v2")  # uploads now answer with etag v2
        assert httpx.get(base + "/items/1").status_code == 200
        collector.wait_for_events(1)
        applied(app, "v2")
        assert httpx.get(base + "/items/2").status_code == 200  # sampled out by rate 0
    assert [e["request"]["uri"].rsplit("/", 1)[1] for e in collector.events] == ["1"]
    assert collector.config_fetches == 2


def test_failed_or_malformed_fetch_keeps_the_last_good_config(collector: Collector) -> None:
    collector.set_config({"sample_rate": 50}, etag="good")
    sync = ConfigSync(lambda: HttpTransport(collector.url, "app", user_agent="t"), interval=0.05,
                      min_refetch_interval=0.01)  # fmt: skip
    try:
        wait_until(lambda: sync.current.etag == "good")
        collector.fail_next(3, status=503, path_prefix="/v1/config")
        fetched = collector.config_fetches
        wait_until(lambda: collector.config_fetches > fetched + 1)  # periodic fetches go on
        assert sync.current.etag == "good"
        collector.set_config("not an object", etag="bad")  # type: ignore[arg-type]
        wait_until(lambda: sync.current.etag == "bad")  # parsed tolerantly: defaults, no crash
        assert sync.current.samples is False
    finally:
        sync.stop()


# -- sampling ---------------------------------------------------------------------------------------


def test_sampling_with_weight_and_deterministic_per_trace(collector: Collector) -> None:
    collector.set_config(
        {
            "sample_rate": 50,
            "user_sample_rate": {"vip": 100, "muted": 0},
            "regex_config": [
                {"conditions": [{"path": "request.route", "value": "^/health"}], "sample_rate": 0}
            ],
        },
        etag="s1",
    )
    calls: list[str] = []

    def session(request, response):
        calls.append(request.url.path)
        return "token"

    settings = settings_for(
        collector, IDENTIFY_USER=lambda req, res: req.headers.get("x-user"), GET_SESSION_TOKEN=session
    )
    app = make_app(settings)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        applied(app, "s1")
        client.get("/items/1", headers=traceparent(KEPT_AT_50))
        client.get("/items/2", headers=traceparent(DROPPED_AT_50))
        client.get("/items/3", headers={**traceparent(DROPPED_AT_50), "x-user": "vip"})
        client.get("/items/4", headers={**traceparent(KEPT_AT_50), "x-user": "muted"})
        client.get("/health/probe", headers=traceparent(KEPT_AT_50))
    events = {e["request"]["uri"].rsplit("/", 1)[1]: e for e in collector.events}
    assert sorted(events) == ["1", "3"]
    assert events["1"]["weight"] == 2 and events["1"]["trace_id"] == f"{KEPT_AT_50:032x}"
    assert events["3"]["weight"] == 1 and events["3"]["user_id"] == "vip"
    # sampled-out requests skip the hooks after identification
    assert calls == ["/items/1", "/items/3"]
    middleware = find_middleware(app, MoesifMiddleware)
    assert middleware.stats()["spans_queued"] == 2


# -- governance -------------------------------------------------------------------------------------

BLOCK_RULE = {
    "_id": "block-delete",
    "type": "regex",
    "block": True,
    "regex_config": [{"conditions": [{"path": "request.verb", "value": "DELETE"}]}],
    "response": {"status": 405, "headers": {"X-Blocked": "by moesif"}, "body": {"error": "no deletes"}},
}
HEADER_RULE = {
    "_id": "tag-items",
    "type": "regex",
    "block": False,
    "regex_config": [{"conditions": [{"path": "request.route", "value": "/items/"}]}],
    "response": {"headers": {"X-Plan": "standard plan"}},
}
QUOTA_RULE = {
    "_id": "quota",
    "type": "user",
    "block": True,
    "applied_to": "matching",
    "variables": [{"name": "plan", "path": "plan"}],
    "response": {
        "status": 429,
        "headers": {"X-Plan": "{{plan}}"},
        "body": {"error": "quota of {{plan}} exceeded"},
    },
}
BODY_RULE = {
    "_id": "no-admins",
    "type": "regex",
    "block": True,
    "regex_config": [{"conditions": [{"path": "request.body.role", "value": "^admin$"}]}],
    "response": {"status": 403, "body": {"error": "no admins"}},
}


def governed_app(collector: Collector, counter: dict[str, int]) -> Any:
    def identify_user(request, response):
        counter["user"] = counter.get("user", 0) + 1
        return request.headers.get("x-user")

    def identify_company(request, response):
        counter["company"] = counter.get("company", 0) + 1
        return None

    app = make_app(settings_for(collector, IDENTIFY_USER=identify_user, IDENTIFY_COMPANY=identify_company))

    @app.delete("/items/{item_id}")
    async def delete(item_id: int) -> dict:
        raise AssertionError("a blocked request must not reach the app")

    return app


def test_governance_blocks_adds_headers_and_records(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    collector.set_config(
        {"user_rules": {"free-user": [{"rules": "quota", "values": {"0": "free"}},
                                      {"rules": "does-not-exist", "values": {}}]}},
        etag="g1",
    )  # fmt: skip
    collector.set_rules([BLOCK_RULE, HEADER_RULE, QUOTA_RULE, BODY_RULE, {"_id": 7, "type": "??"}], tag="t1")
    counter: dict[str, int] = {}
    app = governed_app(collector, counter)
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    with serve(app) as base, httpx.Client(base_url=base) as client:
        applied(app, "g1", "t1")
        blocked = client.delete("/items/1")
        tagged = client.get("/items/2")
        quota = client.get("/items/3", headers={"x-user": "free-user"})
        admin = client.post("/echo", json={"role": "admin"})
        allowed = client.post("/echo", json={"role": "user"})
        events = {
            (e["request"]["verb"], e["request"]["uri"].rsplit("/", 1)[1]): e
            for e in collector.wait_for_events(5)
        }

    assert blocked.status_code == 405
    assert blocked.json() == {"error": "no deletes"}
    assert blocked.headers["content-type"] == "application/json"
    assert blocked.headers["x-blocked"] == "by moesif"
    assert events[("DELETE", "1")]["blocked_by"] == "block-delete"
    assert events[("DELETE", "1")]["response"]["status"] == 405
    assert events[("DELETE", "1")]["response"]["body"] == {"error": "no deletes"}

    assert tagged.status_code == 200 and tagged.json() == {"id": 2}
    assert tagged.headers["x-plan"] == "standard plan"  # non-blocking rule: header on the real response
    assert "blocked_by" not in events[("GET", "2")]

    assert quota.status_code == 429
    assert quota.json() == {"error": "quota of free exceeded"}
    assert quota.headers["x-plan"] == "free"
    assert events[("GET", "3")]["blocked_by"] == "quota"
    assert events[("GET", "3")]["user_id"] == "free-user"

    assert admin.status_code == 403 and admin.json() == {"error": "no admins"}
    assert allowed.status_code == 200 and allowed.json() == {"role": "user"}  # the app got the body
    echoes = [e for e in collector.events if e["request"]["verb"] == "POST"]
    assert [(e["request"]["body"], e.get("blocked_by")) for e in echoes] == [
        ({"role": "admin"}, "no-admins"),
        ({"role": "user"}, None),
    ]

    # user and company hooks ran once per request, not twice as in moesifasgi
    assert counter == {"user": 5, "company": 5}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "does-not-exist" in logged and "skipped" in logged


def test_outgoing_calls_are_kept_or_dropped_with_their_request(collector: Collector) -> None:
    import requests

    collector.set_config({"sample_rate": 50}, etag="o1")
    app = make_app(settings_for(collector, CAPTURE_OUTGOING_REQUESTS=True))

    @app.get("/call-out")
    def call_out() -> dict:
        return {"status": requests.get(f"{collector.url}/health/probe", timeout=5).status_code}

    try:
        with serve(app) as base, httpx.Client(base_url=base) as client:
            applied(app, "o1")
            with suppress_instrumentation():  # the test's own httpx calls are not the app's
                assert client.get("/call-out", headers=traceparent(KEPT_AT_50)).json() == {"status": 200}
                assert client.get("/call-out", headers=traceparent(DROPPED_AT_50)).json() == {"status": 200}
        kept = {(e["direction"], e["trace_id"], e["weight"]) for e in collector.events}
        assert kept == {("Incoming", f"{KEPT_AT_50:032x}", 2), ("Outgoing", f"{KEPT_AT_50:032x}", 2)}
    finally:
        from moesif_otel.outgoing import disable_outgoing_capture

        disable_outgoing_capture()
