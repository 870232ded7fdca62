"""Profile updates (users, companies, subscriptions), checked as the local collector received them."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from moesifapi.models import CampaignModel, CompanyModel, SubscriptionModel, UserModel

import moesif_otel
from moesif_otel import (
    ConfigurationError,
    MoesifMiddleware,
    ProfilesClient,
    ProfileUpdateError,
    __version__,
    payload,
    profiles,
)
from moesif_otel.collector import Collector
from moesif_otel.delivery import Delivery
from moesif_otel.transport import HttpTransport, Response

from .servers import find_middleware, serve

APP_ID = "profiles-app-id"
UTC = timezone.utc


def settings_for(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"APPLICATION_ID": APP_ID, "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 0.05, **extra}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def by_id(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {record[key]: record for record in records}


def entity_requests(collector: Collector) -> list[dict[str, Any]]:
    return [r for r in collector.requests if r["path"].startswith(("/v1/users", "/v1/compan", "/v1/subs"))]


@pytest.fixture(autouse=True)
def _forget_default_clients() -> Iterator[None]:
    profiles.configure(None)
    yield
    profiles.configure(None)


@pytest.fixture
def client(collector: Collector) -> Iterator[ProfilesClient]:
    c = ProfilesClient(settings_for(collector))
    yield c
    c.shutdown(2.0)


# -- the six operations, one input of each kind ----------------------------------------------------


def send_all(target: Any) -> list[bool]:
    """Every operation, with models, dicts and JSON strings; ``target``: client, middleware or module."""
    return [
        target.update_user(
            UserModel(
                user_id="u1",
                company_id="c1",
                metadata={"email": "ann@example.com", "n": 1},
                campaign=CampaignModel(utm_source="google"),
            )
        ),
        target.update_users_batch(
            [{"user_id": "u2", "metadata": {"plan": None}}, '{"user_id": "u3"}', UserModel(user_id="u4")]
        ),
        target.update_company('{"company_id": "c1", "company_domain": "acme.com"}'),
        target.update_companies_batch(
            '[{"company_id": "c2"}, {"company_id": "c3", "metadata": {"seats": 5}}]'
        ),
        target.update_subscription(
            {
                "subscription_id": "s1",
                "company_id": "c1",
                "status": "active",
                "current_period_start": datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
            }
        ),
        target.update_subscriptions_batch(
            [
                SubscriptionModel(subscription_id="s2", company_id="c2", status="trialing"),
                {"subscription_id": "s3", "items": [{"plan_id": "gold"}]},
            ]
        ),
    ]


async def send_all_async(target: Any) -> None:
    await target.update_user_async(UserModel(user_id="au1", metadata={"n": 1}))
    await target.update_users_batch_async(['{"user_id": "au2"}', {"user_id": "au3"}])
    await target.update_company_async(CompanyModel(company_id="ac1", company_domain="acme.com"))
    await target.update_companies_batch_async([{"company_id": "ac2"}])
    await target.update_subscription_async(
        '{"subscription_id": "as1", "company_id": "ac1", "status": "active"}'
    )
    await target.update_subscriptions_batch_async([{"subscription_id": "as2", "company_id": "ac2"}])


EXPECTED_USERS = {
    "u1": {
        "user_id": "u1",
        "company_id": "c1",
        "metadata": {"email": "ann@example.com", "n": 1},
        "campaign": {"utm_source": "google"},
    },
    "u2": {"user_id": "u2", "metadata": {"plan": None}},
    "u3": {"user_id": "u3"},
    "u4": {"user_id": "u4"},
}
EXPECTED_COMPANIES = {
    "c1": {"company_id": "c1", "company_domain": "acme.com"},
    "c2": {"company_id": "c2"},
    "c3": {"company_id": "c3", "metadata": {"seats": 5}},
}
EXPECTED_SUBSCRIPTIONS = {
    "s1": {
        "subscription_id": "s1",
        "company_id": "c1",
        "status": "active",
        "current_period_start": "2026-11-01T12:00:00.000Z",
    },
    "s2": {"subscription_id": "s2", "company_id": "c2", "status": "trialing"},
    "s3": {"subscription_id": "s3", "items": [{"plan_id": "gold"}]},
}


def wait_for_all(collector: Collector) -> None:
    collector.wait_for(
        lambda c: len(c.users) >= 4 and len(c.companies) >= 3 and len(c.subscriptions) >= 3, timeout=5
    )


def assert_all_received(collector: Collector) -> None:
    assert by_id(collector.users, "user_id") == EXPECTED_USERS
    assert by_id(collector.companies, "company_id") == EXPECTED_COMPANIES
    assert by_id(collector.subscriptions, "subscription_id") == EXPECTED_SUBSCRIPTIONS
    requests = entity_requests(collector)
    assert sorted(r["path"] for r in requests) == [
        "/v1/companies",
        "/v1/companies/batch",
        "/v1/subscriptions",
        "/v1/subscriptions/batch",
        "/v1/users",
        "/v1/users/batch",
    ]
    for r in requests:
        assert r["status"] == 201
        assert r["headers"]["content-type"] == "application/json"
        assert r["headers"]["x-moesif-application-id"] == APP_ID
        assert r["headers"]["user-agent"] == f"moesif-otel-python/{__version__}"
        assert "content-encoding" not in r["headers"]  # uncompressed, as moesifapi sends profiles


def test_client_sends_every_operation(collector: Collector, client: ProfilesClient) -> None:
    assert send_all(client) == [True] * 6
    assert client.flush(5)
    assert_all_received(collector)


def profile_app(settings: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(MoesifMiddleware, settings=settings)

    @app.post("/profiles")
    async def update(request: Request) -> dict:
        return {"queued": send_all(find_middleware(request.app, MoesifMiddleware))}

    @app.post("/profiles-async")
    async def update_async(request: Request) -> dict:
        await send_all_async(find_middleware(request.app, MoesifMiddleware))
        return {"ok": True}

    return app


def test_middleware_sends_every_operation_from_a_route(collector: Collector) -> None:
    app = profile_app(settings_for(collector))
    with serve(app) as base:
        answer = httpx.post(f"{base}/profiles")
        assert answer.status_code == 200 and answer.json() == {"queued": [True] * 6}
        wait_for_all(collector)
        assert_all_received(collector)
        # the route's own call still became an event, through the same delivery
        [event] = collector.wait_for_events(1)
        assert event["request"]["uri"] == f"{base}/profiles"


def test_middleware_awaitable_forms_resolve_once_the_collector_has_the_update(collector: Collector) -> None:
    app = profile_app(settings_for(collector))
    with serve(app) as base:
        assert httpx.post(f"{base}/profiles-async").status_code == 200
        # no waiting: the route returned only after every update was accepted
        assert set(by_id(collector.users, "user_id")) == {"au1", "au2", "au3"}
        assert set(by_id(collector.companies, "company_id")) == {"ac1", "ac2"}
        assert set(by_id(collector.subscriptions, "subscription_id")) == {"as1", "as2"}


def test_middleware_flushes_pending_updates_at_lifespan_shutdown(collector: Collector) -> None:
    app = profile_app(settings_for(collector))
    with serve(app) as base:
        collector.set_delay(0.3)  # every upload still pending when the server is told to stop
        assert httpx.post(f"{base}/profiles").status_code == 200
        assert not collector.users
    # leaving serve() ran the lifespan shutdown, which flushed the shared delivery
    assert_all_received(collector)


def test_middleware_flush_covers_profile_updates(collector: Collector) -> None:
    middleware = MoesifMiddleware(FastAPI(), settings_for(collector))
    try:
        collector.set_delay(0.2)
        assert middleware.update_user({"user_id": "flushed"})
        assert middleware.profiles.delivery is middleware.pipeline.delivery
        assert middleware.flush(5)
        assert [u["user_id"] for u in collector.users] == ["flushed"]
    finally:
        middleware.pipeline.shutdown()


# -- module-level API --------------------------------------------------------------------------------


PROFILE_FUNCTIONS = [name for name in profiles.__all__ if name.startswith("update_")]


def test_profiles_module_is_the_home_and_the_package_root_still_has_the_names() -> None:
    """moesif_otel.profiles is documented; ``from moesif_otel import update_user`` keeps working."""
    from moesif_otel import ProfileUpdateError as RootError
    from moesif_otel import update_user as root_update_user

    assert len(PROFILE_FUNCTIONS) == 12
    assert root_update_user is profiles.update_user
    assert RootError is profiles.ProfileUpdateError
    for name in [*PROFILE_FUNCTIONS, "ProfilesClient", "ProfileUpdateError"]:
        assert getattr(moesif_otel, name) is getattr(profiles, name)
        assert name not in moesif_otel.__all__
    assert moesif_otel.profiles is profiles
    assert sorted(moesif_otel.__all__) == sorted(
        [
            "ConfigurationError",
            "MoesifMiddleware",
            "MoesifSpanExporter",
            "MoesifSpanProcessor",
            "Settings",
            "__version__",
            "profiles",
        ]
    )
    namespace: dict[str, Any] = {}
    exec("from moesif_otel import *", namespace)
    assert "profiles" in namespace and "update_user" not in namespace


@pytest.mark.parametrize("module", [profiles, moesif_otel], ids=["moesif_otel.profiles", "moesif_otel"])
def test_module_api_after_configure(collector: Collector, module: Any) -> None:
    profiles.configure(settings_for(collector))
    assert send_all(module) == [True] * 6
    assert profiles.flush(5)
    assert_all_received(collector)


def test_module_api_awaitable_forms(collector: Collector) -> None:
    profiles.configure(settings_for(collector))
    asyncio.run(send_all_async(moesif_otel))
    assert set(by_id(collector.users, "user_id")) == {"au1", "au2", "au3"}
    assert set(by_id(collector.companies, "company_id")) == {"ac1", "ac2"}
    assert set(by_id(collector.subscriptions, "subscription_id")) == {"as1", "as2"}


def test_module_api_from_environment(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "env-app-id")
    monkeypatch.setenv("MOESIF_BASE_URI", collector.url)
    assert moesif_otel.update_company({"company_id": "env-co"})
    collector.wait_for(lambda c: len(c.companies) == 1)
    assert collector.companies == [{"company_id": "env-co"}]
    [request] = entity_requests(collector)
    assert request["headers"]["x-moesif-application-id"] == "env-app-id"


def test_module_api_without_any_configuration_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOESIF_APPLICATION_ID", raising=False)
    with pytest.raises(ConfigurationError, match=r"configure\(\).*APPLICATION_ID is required"):
        moesif_otel.update_user({"user_id": "u"})


def test_module_api_uses_the_middleware_client_unless_configured(collector: Collector) -> None:
    middleware = MoesifMiddleware(FastAPI(), settings_for(collector))
    other = Collector().start()
    try:
        profiles.set_middleware_client(middleware.profiles)
        assert profiles.default_client() is middleware.profiles
        collector.set_delay(0.2)
        assert moesif_otel.update_user({"user_id": "via-middleware"})
        assert middleware.flush(5)  # the middleware's flush delivers module-level updates too
        assert [u["user_id"] for u in collector.users] == ["via-middleware"]

        explicit = profiles.configure(settings_for(other))
        assert profiles.default_client() is explicit
        assert moesif_otel.update_user({"user_id": "explicit"})
        assert profiles.flush(5)
        assert [u["user_id"] for u in other.users] == ["explicit"]
    finally:
        profiles.configure(None)
        other.stop()
        middleware.pipeline.shutdown()


def test_module_api_follows_the_latest_middleware(collector: Collector) -> None:
    middleware = MoesifMiddleware(FastAPI(), settings_for(collector))
    try:
        assert profiles.default_client() is middleware.profiles
    finally:
        middleware.pipeline.shutdown()


def test_module_client_flushes_at_exit(collector: Collector) -> None:
    collector.set_delay(0.3)  # the update is still in flight when the script's last line is done
    script = "import moesif_otel; assert moesif_otel.update_user({'user_id': 'at-exit'})"
    env = {**os.environ, "MOESIF_APPLICATION_ID": APP_ID, "MOESIF_BASE_URI": collector.url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert collector.users == [{"user_id": "at-exit"}]


# -- serialisation and validation ----------------------------------------------------------------------


def test_datetimes_anywhere_are_utc_iso_with_milliseconds(
    collector: Collector, client: ProfilesClient
) -> None:
    plus_two = timezone(timedelta(hours=2))
    assert client.update_user(
        {
            "user_id": 42,  # numeric ids become strings
            "modified_time": datetime(2026, 11, 23, 10, 11, 12, 345678),  # naive: UTC
            "metadata": {
                "signup": datetime(2026, 1, 2, 3, 4, 5, tzinfo=plus_two),
                "birthday": date(1990, 5, 17),
                "history": [datetime(2026, 1, 1), (datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC),)],
                "nested": {
                    "deeper": {"at": datetime(2025, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5)))}
                },
            },
        }
    )
    assert client.update_subscription(
        SubscriptionModel(
            subscription_id="s",
            company_id="c",
            status="active",
            current_period_start=datetime(2026, 11, 1),
            current_period_end=datetime(2026, 12, 1, 1, 0, tzinfo=plus_two),
        )
    )
    assert client.flush(5)
    assert collector.users == [
        {
            "user_id": "42",
            "modified_time": "2026-11-23T10:11:12.345Z",
            "metadata": {
                "signup": "2026-01-02T01:04:05.000Z",
                "birthday": "1990-05-17",
                "history": ["2026-01-01T00:00:00.000Z", ["2026-01-01T00:00:00.999Z"]],
                "nested": {"deeper": {"at": "2026-01-01T04:00:00.000Z"}},
            },
        }
    ]
    assert collector.subscriptions == [
        {
            "subscription_id": "s",
            "company_id": "c",
            "status": "active",
            "current_period_start": "2026-11-01T00:00:00.000Z",
            "current_period_end": "2026-11-30T23:00:00.000Z",
        }
    ]


def _cycle() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return {"user_id": "u", "metadata": loop}


INVALID = [
    ("update_user", {"company_id": "c"}, ValueError, r"^update_user: user: user_id is required"),
    ("update_user", UserModel(company_id="c"), ValueError, r"user_id is required"),
    ("update_user", {"user_id": "  "}, ValueError, r"user_id is required \(a non-empty string\), got '  '"),
    ("update_user", {"user_id": ["u"]}, ValueError, r"user_id is required .* got \['u'\]"),
    ("update_user", '{"user_id": ', ValueError, r"update_user: user: not valid JSON"),
    ("update_user", '[{"user_id": "u"}]', TypeError, r"got JSON list"),
    ("update_user", 42, TypeError, r"expected a UserModel, a dict or a JSON object, got int"),
    ("update_user", CompanyModel(company_id="c"), TypeError, r"expected a UserModel, got a CompanyModel"),
    (
        "update_user",
        {"user_id": "u", "metadata": {"blob": b"x"}},
        TypeError,
        r"^update_user: user\.metadata\.blob: bytes is not JSON-serialisable",
    ),
    ("update_user", {"user_id": "u", "metadata": {"tags": {"a"}}}, TypeError, r"user\.metadata\.tags: set"),
    ("update_user", {"user_id": "u", "metadata": {"o": object()}}, TypeError, r"user\.metadata\.o: object"),
    ("update_user", {"user_id": "u", "metadata": {"x": float("nan")}}, ValueError, r"user\.metadata\.x: nan"),
    ("update_user", {"user_id": "u", "metadata": {(1, 2): 1}}, TypeError, r"key \(1, 2\) is a tuple"),
    ("update_user", _cycle(), ValueError, r"user\.metadata\.self.*nested more than"),
    ("update_users_batch", [{"user_id": "a"}, {"name": "b"}], ValueError, r"users\[1\]: user_id is required"),
    (
        "update_users_batch",
        [{"user_id": "a"}, {"user_id": "b", "metadata": {"when": [dt_time(1)]}}],
        TypeError,
        r"^update_users_batch: users\[1\]\.metadata\.when\[0\]: time is not JSON-serialisable",
    ),
    ("update_users_batch", {"user_id": "a"}, TypeError, r"expected a list of UserModel.*got a dict"),
    ("update_users_batch", UserModel(user_id="a"), TypeError, r"got a UserModel"),
    ("update_users_batch", '{"user_id": "a"}', TypeError, r"users: expected a JSON array, got JSON dict"),
    ("update_company", {"company_domain": "acme.com"}, ValueError, r"company: company_id is required"),
    ("update_companies_batch", [None], TypeError, r"companies\[0\]: expected a CompanyModel.*got NoneType"),
    (
        "update_subscription",
        {"subscription_id": "s", "company_id": "c"},
        ValueError,
        r"subscription: status is required",
    ),
    (
        "update_subscription",
        SubscriptionModel(subscription_id="s", status="active"),
        ValueError,
        r"subscription: company_id is required",
    ),
    (
        "update_subscriptions_batch",
        [{"company_id": "c", "status": "active"}],
        ValueError,
        r"subscriptions\[0\]: subscription_id is required",
    ),
]


@pytest.mark.parametrize(("operation", "value", "error", "message"), INVALID)
def test_invalid_input_raises_at_the_call_and_sends_nothing(
    collector: Collector, client: ProfilesClient, operation: str, value: Any, error: type, message: str
) -> None:
    profiles.configure(settings_for(collector))
    with pytest.raises(error, match=message):
        getattr(client, operation)(value)
    with pytest.raises(error, match=message.replace(operation, operation + "_async")):
        asyncio.run(getattr(client, operation + "_async")(value))
    with pytest.raises(error, match=message):
        getattr(moesif_otel, operation)(value)
    assert client.stats()["queued"] == 0
    assert profiles.default_client().stats()["queued"] == 0
    assert collector.requests == []


def test_empty_batch_sends_nothing(collector: Collector, client: ProfilesClient) -> None:
    assert client.update_users_batch([])
    asyncio.run(client.update_companies_batch_async("[]"))
    assert client.stats()["queued"] == 0
    assert collector.requests == []


def test_large_batches_are_split(
    collector: Collector, client: ProfilesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload, "MAX_PAYLOAD_BYTES", 120)
    users = [{"user_id": f"user-{i:02d}", "metadata": {"pad": "x" * 20}} for i in range(10)]
    asyncio.run(client.update_users_batch_async(users))  # resolves once every part is accepted
    assert sorted(u["user_id"] for u in collector.users) == [u["user_id"] for u in users]
    parts = entity_requests(collector)
    assert len(parts) > 2 and all(r["path"] == "/v1/users/batch" for r in parts)


# -- outcomes of the awaitable form ------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401])
def test_awaitable_raises_when_the_collector_rejects(
    collector: Collector, client: ProfilesClient, status: int
) -> None:
    collector.fail_next(1, status=status, path_prefix="/v1/companies")
    with pytest.raises(
        ProfileUpdateError, match=f"rejected 1 profile to /v1/companies/batch with HTTP {status}"
    ) as info:
        asyncio.run(client.update_companies_batch_async([{"company_id": "c"}]))
    assert (info.value.outcome, info.value.status) == ("rejected", status)
    assert b"injected fault" in info.value.body
    assert collector.companies == []
    assert [r["status"] for r in entity_requests(collector)] == [status]  # not retried


def test_awaitable_resolves_after_a_503_is_retried(collector: Collector, client: ProfilesClient) -> None:
    collector.fail_next(1, status=503, path_prefix="/v1/subscriptions")
    asyncio.run(
        client.update_subscription_async({"subscription_id": "s", "company_id": "c", "status": "active"})
    )
    assert [r["status"] for r in entity_requests(collector)] == [503, 201]
    assert collector.subscriptions == [{"subscription_id": "s", "company_id": "c", "status": "active"}]
    assert client.stats()["retried"] == 1


def test_awaitable_raises_when_retries_are_exhausted(collector: Collector) -> None:
    delivery = Delivery(
        lambda: HttpTransport(collector.url, APP_ID, user_agent="tests"),
        max_retry_seconds=0.3,
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    client = ProfilesClient(settings_for(collector), delivery)
    try:
        collector.fail_next(1000, status=503, path_prefix="/v1/users")
        with pytest.raises(ProfileUpdateError, match=r"gave up .* \(last attempt: HTTP 503") as info:
            asyncio.run(client.update_user_async({"user_id": "u"}))
        assert (info.value.outcome, info.value.status) == ("retry_exhausted", 503)
        assert len(entity_requests(collector)) > 1
    finally:
        delivery.shutdown(2.0)


def test_after_shutdown_updates_are_refused_not_lost_silently(
    collector: Collector, client: ProfilesClient
) -> None:
    assert client.shutdown(2.0)
    assert client.update_user({"user_id": "late"}) is False
    with pytest.raises(ProfileUpdateError, match="shut down") as info:
        asyncio.run(client.update_user_async({"user_id": "late"}))
    assert info.value.outcome == "shutdown"
    assert client.stats()["dropped_shutdown"] == 2


def test_client_shutdown_delivers_pending_updates(collector: Collector, client: ProfilesClient) -> None:
    collector.set_delay(0.2)
    assert client.update_user({"user_id": "a"})
    assert client.update_users_batch([{"user_id": "b"}, {"user_id": "c"}])
    assert client.stats()["pending_batches"] == 2
    assert client.shutdown(5.0)
    assert sorted(u["user_id"] for u in collector.users) == ["a", "b", "c"]


# -- never blocking -------------------------------------------------------------------------------------


def test_sync_call_returns_while_the_collector_hangs(collector: Collector) -> None:
    # timeouts far beyond the join below: a call that waited on the network could not be back in time
    client = ProfilesClient(settings_for(collector, SHUTDOWN_TIMEOUT=60.0))
    try:
        collector.hang()
        results: list[bool] = []
        caller = threading.Thread(target=lambda: results.append(client.update_user({"user_id": "patient"})))
        caller.start()
        caller.join(10)
        assert not caller.is_alive() and results == [True]
        # the call is back while the collector still holds the upload unanswered
        wait_until(lambda: [(r["path"], r["status"]) for r in collector.requests] == [("/v1/users", None)])
        assert collector.users == []
        collector.hang(False)
        collector.wait_for(lambda c: len(c.users) == 1)
    finally:
        collector.hang(False)
        client.shutdown(2.0)


def test_route_answers_while_the_collector_hangs(collector: Collector) -> None:
    app = profile_app(settings_for(collector))
    with serve(app) as base:
        collector.hang()
        answer = httpx.post(f"{base}/profiles", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"queued": [True] * 6}
        wait_until(lambda: len(entity_requests(collector)) >= 2)  # uploads arrived, none answered
        assert all(r["status"] is None for r in entity_requests(collector))
        collector.hang(False)
        wait_for_all(collector)


def test_awaitable_leaves_the_event_loop_free_while_the_collector_hangs(
    collector: Collector, client: ProfilesClient
) -> None:
    async def scenario() -> None:
        collector.hang()
        task = asyncio.create_task(client.update_user_async({"user_id": "patient"}))
        ticks = 0
        deadline = time.monotonic() + 5
        while not any(r["path"] == "/v1/users" for r in collector.requests):
            assert time.monotonic() < deadline, "the upload never reached the collector"
            await asyncio.sleep(0.01)
            ticks += 1
        await asyncio.sleep(0.05)
        assert not task.done() and ticks > 0  # other coroutines ran while the update waited
        collector.hang(False)
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert collector.users == [{"user_id": "patient"}]


# -- Delivery.submit(on_done=...), what the awaitable form is built on -----------------------------------


def make_delivery(collector: Collector, **options: Any) -> Delivery:
    return Delivery(lambda: HttpTransport(collector.url, APP_ID, user_agent="tests"), **options)


def recorder() -> tuple[list[tuple[str, int | None]], Callable[[str, Response | None], None]]:
    calls: list[tuple[str, int | None]] = []

    def on_done(outcome: str, response: Response | None) -> None:
        calls.append((outcome, response.status if response is not None else None))

    return calls, on_done


def test_on_done_reports_each_final_outcome_once(collector: Collector) -> None:
    delivery = make_delivery(collector, max_retry_seconds=0.3, backoff_initial=0.05, backoff_max=0.1)
    try:
        sent, on_sent = recorder()
        assert delivery.submit(
            "/v1/users",
            b'{"user_id":"u"}',
            count=1,
            headers={"Content-Type": "application/json"},
            on_done=on_sent,
        )
        assert delivery.flush(5)
        assert sent == [("sent", 201)]  # flush() returning means on_done already ran

        collector.fail_next(1, status=401, path_prefix="/v1/users")
        rejected, on_rejected = recorder()
        delivery.submit(
            "/v1/users",
            b'{"user_id":"u"}',
            count=1,
            headers={"Content-Type": "application/json"},
            on_done=on_rejected,
        )
        assert delivery.flush(5)
        assert rejected == [("rejected", 401)]

        collector.fail_next(1000, status=503, path_prefix="/v1/users")
        exhausted, on_exhausted = recorder()
        delivery.submit(
            "/v1/users",
            b'{"user_id":"u"}',
            count=1,
            headers={"Content-Type": "application/json"},
            on_done=on_exhausted,
        )
        assert delivery.flush(5)
        assert exhausted == [("retry_exhausted", 503)]
    finally:
        delivery.shutdown(2.0)


def test_on_done_for_refused_and_abandoned_payloads(collector: Collector) -> None:
    delivery = make_delivery(collector, max_pending=1, workers=1)
    headers = {"Content-Type": "application/json"}
    collector.hang()
    first, on_first = recorder()
    second, on_second = recorder()
    assert delivery.submit("/v1/users", b'{"user_id":"a"}', count=1, headers=headers, on_done=on_first)
    assert not delivery.submit("/v1/users", b'{"user_id":"b"}', count=1, headers=headers, on_done=on_second)
    assert second == [("queue_full", None)]  # told before submit returned
    wait_until(lambda: len(collector.requests) == 1)
    assert not delivery.shutdown(0.2)  # the hung upload is abandoned...
    assert first == [("shutdown", None)]
    collector.hang(False)  # ...and its late success is counted, but not reported a second time
    wait_until(lambda: delivery.stats()["sent"] == 1)
    assert first == [("shutdown", None)]


def test_on_done_that_raises_is_ignored(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    delivery = make_delivery(collector)

    def broken(outcome: str, response: Response | None) -> None:
        raise RuntimeError("callback bug")

    try:
        with caplog.at_level(logging.WARNING, logger="moesif_otel.delivery"):
            for _ in range(2):
                delivery.submit(
                    "/v1/users",
                    b'{"user_id":"u"}',
                    count=1,
                    headers={"Content-Type": "application/json"},
                    on_done=broken,
                )
            assert delivery.flush(5)
        assert delivery.stats()["sent"] == 2
        assert [r.getMessage() for r in caplog.records if "on_done" in r.getMessage()] == [
            "Moesif on_done callback raised RuntimeError('callback bug') (ignored)"
        ]
    finally:
        delivery.shutdown(2.0)
