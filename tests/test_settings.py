"""Settings validated at startup: a wrong value names its key, an unknown key gets a hint."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from moesif_otel import ConfigurationError, MoesifMiddleware, Settings
from moesif_otel.settings import settings_reference

BASE = {"APPLICATION_ID": "app-id"}


async def noop_app(scope, receive, send) -> None:  # pragma: no cover - never called
    raise AssertionError


@pytest.mark.parametrize("settings", [{}, {"APPLICATION_ID": ""}, {"APPLICATION_ID": None}, None])
def test_missing_application_id_fails_at_startup(settings: dict[str, Any] | None) -> None:
    with pytest.raises(ConfigurationError, match="APPLICATION_ID is required"):
        MoesifMiddleware(noop_app, settings)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BATCH_SIZE", "abc", "'BATCH_SIZE' must be an integer"),
        ("BATCH_SIZE", 0, "BATCH_SIZE must be >= 1"),
        ("EVENT_QUEUE_SIZE", -5, "EVENT_QUEUE_SIZE must be >= 1"),
        ("EVENT_QUEUE_BYTES", 0, "EVENT_QUEUE_BYTES must be >= 1"),
        ("MAX_BODY_SIZE", -1, "MAX_BODY_SIZE must be >= 0"),
        ("EVENT_BATCH_TIMEOUT", 0, "EVENT_BATCH_TIMEOUT must be a positive"),
        ("EVENT_BATCH_TIMEOUT", "1", "'EVENT_BATCH_TIMEOUT' must be a number"),
        ("HOOK_TIMEOUT", 0, "HOOK_TIMEOUT must be a positive"),
        ("HOOK_TIMEOUT", "fast", "'HOOK_TIMEOUT' must be a number"),
        ("LOG_BODY", "yes", "'LOG_BODY' must be True or False"),
        ("IDENTIFY_USER", "user-id", "'IDENTIFY_USER' must be a function"),
        ("MASK_EVENT_MODEL", 42, "'MASK_EVENT_MODEL' must be a function"),
        ("SKIP", True, "'SKIP' must be a function"),
        ("BASE_URI", "api.moesif.net", "BASE_URI must be an http"),
        ("API_VERSION", 2, "'API_VERSION' must be a string"),
        ("REQUEST_BODY_MASKS", [1, 2], "'REQUEST_BODY_MASKS' must be a list of strings"),
    ],
)
def test_wrong_values_fail_naming_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_mapping({**BASE, key: value}, environ={})


def test_unknown_key_warns_once_with_closest_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    Settings.from_mapping({**BASE, "IDENTIFY_USERS": lambda r, s: "x", "NO_SUCH_THING": 1}, environ={})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "'IDENTIFY_USERS' is ignored; did you mean 'IDENTIFY_USER'?" in messages[0]
    assert "'NO_SUCH_THING' is ignored" in messages[1] and "did you mean" not in messages[1]


def test_every_moesifasgi_key_is_accepted(caplog: pytest.LogCaptureFixture) -> None:
    def hook(*args: Any) -> None:
        return None

    moesifasgi_keys = {
        "APPLICATION_ID": "id", "DEBUG": False, "LOG_BODY": True, "API_VERSION": "1.0",
        "BASE_URI": "https://proxy.example", "BATCH_SIZE": 25, "EVENT_BATCH_TIMEOUT": 2,
        "EVENT_QUEUE_SIZE": 5000, "EVENT_WORKER_COUNT": 3, "DISABLED_TRANSACTION_ID": True,
        "AUTHORIZATION_HEADER_NAME": "X-Api-Key, Authorization", "AUTHORIZATION_USER_ID_FIELD": "uid",
        "IDENTIFY_USER": hook, "IDENTIFY_COMPANY": hook, "GET_SESSION_TOKEN": hook, "GET_METADATA": hook,
        "SKIP": hook, "MASK_EVENT_MODEL": hook, "CAPTURE_OUTGOING_REQUESTS": False,
        "IDENTIFY_USER_OUTGOING": hook, "IDENTIFY_COMPANY_OUTGOING": hook, "GET_SESSION_TOKEN_OUTGOING": hook,
        "GET_METADATA_OUTGOING": hook, "SKIP_OUTGOING": hook, "LOG_BODY_OUTGOING": False,
        "REQUEST_BODY_MASKS": ["password"], "RESPONSE_BODY_MASKS": ["token"], "LOCAL_DEBUG": False,
        "LOCAL_MOESIF_BASEURL": "http://localhost:9999",
    }  # fmt: skip
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    settings = Settings.from_mapping(moesifasgi_keys, environ={})
    assert caplog.records == []
    assert settings.batch_size == 25 and settings.event_batch_timeout == 2.0
    assert settings.event_worker_count == 3 and settings.disabled_transaction_id is True
    assert settings.authorization_header_names == ("x-api-key", "authorization")
    assert settings.collector_uri == "https://proxy.example"
    assert settings.request_body_masks == ("password",)
    documented = {key for key, *_ in settings_reference()}
    assert set(moesifasgi_keys) <= documented


def test_local_debug_uses_local_base_url() -> None:
    settings = Settings.from_mapping(
        {**BASE, "LOCAL_DEBUG": True, "LOCAL_MOESIF_BASEURL": "http://127.0.0.1:9/"}, environ={}
    )
    assert settings.collector_uri == "http://127.0.0.1:9"


def test_repr_masks_the_application_id() -> None:
    secret = "eyJhcHAiOiIxOTg6MyIsInZlciI6IjIuMSJ9.secret-tail-wxyz"
    settings = Settings.from_mapping({"APPLICATION_ID": secret, "BATCH_SIZE": 7})
    for text in (repr(settings), str(settings), repr([settings])):
        assert secret not in text and "secret-tail" not in text
        assert "application_id='...wxyz'" in text and "batch_size=7" in text
    assert settings.application_id == secret  # masked in the repr only
    assert "application_id='...'" in repr(Settings.from_mapping({"APPLICATION_ID": "short"}))
