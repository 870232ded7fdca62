"""Every setting from ``MOESIF_<KEY>``; wrong values name the variable; explicit values win."""

from __future__ import annotations

from typing import Any

import pytest

from moesif_otel import ConfigurationError, MoesifSpanExporter, Settings
from moesif_otel.settings import DEFAULT_BASE_URI, settings_reference

BASE = {"MOESIF_APPLICATION_ID": "env-app-id"}


def env_hook(request: Any, response: Any) -> str:
    return "from-env"


class Holder:
    @staticmethod
    def nested(request: Any, response: Any) -> str:
        return "nested"


HOOK_PATH = f"{__name__}:env_hook"

# (key, environment text, expected attribute value) — one row per setting.
VALUES: dict[str, tuple[str, Any]] = {
    "APPLICATION_ID": ("  my-app-id ", "my-app-id"),
    "LOG_BODY": ("false", False),
    "DEBUG": ("yes", True),
    "BASE_URI": ("http://127.0.0.1:9500", "http://127.0.0.1:9500"),
    "API_VERSION": ("v2", "v2"),
    "BATCH_SIZE": ("25", 25),
    "EVENT_BATCH_TIMEOUT": ("0.25", 0.25),
    "EVENT_QUEUE_SIZE": ("20_000", 20_000),
    "EVENT_QUEUE_BYTES": ("8_388_608", 8_388_608),
    "EVENT_WORKER_COUNT": ("4", 4),
    "MAX_BODY_SIZE": ("0", 0),
    "SHUTDOWN_TIMEOUT": ("2", 2.0),
    "HOOK_TIMEOUT": ("0.5", 0.5),
    "DISABLED_TRANSACTION_ID": ("1", True),
    "CAPTURE_ON_SPAN": ("true", True),
    "AUTHORIZATION_HEADER_NAME": ("x-api-key, authorization", "x-api-key, authorization"),
    "AUTHORIZATION_USER_ID_FIELD": ("email", "email"),
    "IDENTIFY_USER": (HOOK_PATH, env_hook),
    "IDENTIFY_COMPANY": (HOOK_PATH, env_hook),
    "GET_SESSION_TOKEN": (HOOK_PATH, env_hook),
    "GET_METADATA": (HOOK_PATH, env_hook),
    "SKIP": (HOOK_PATH, env_hook),
    "MASK_EVENT_MODEL": (f"{__name__}:Holder.nested", Holder.nested),
    "CAPTURE_OUTGOING_REQUESTS": ("On", True),
    "LOG_BODY_OUTGOING": ("off", False),
    "IDENTIFY_USER_OUTGOING": (HOOK_PATH, env_hook),
    "IDENTIFY_COMPANY_OUTGOING": (HOOK_PATH, env_hook),
    "GET_SESSION_TOKEN_OUTGOING": (HOOK_PATH, env_hook),
    "GET_METADATA_OUTGOING": (HOOK_PATH, env_hook),
    "SKIP_OUTGOING": (HOOK_PATH, env_hook),
    "REQUEST_BODY_MASKS": ("password, token,,", ("password", "token")),
    "RESPONSE_BODY_MASKS": ("secret", ("secret",)),
    "LOCAL_DEBUG": ("true", True),
    "LOCAL_MOESIF_BASEURL": ("http://localhost:8080", "http://localhost:8080"),
}


def test_the_table_covers_every_setting() -> None:
    assert set(VALUES) == {key for key, *_ in settings_reference()}


@pytest.mark.parametrize("key", sorted(VALUES))
def test_each_setting_from_the_environment(key: str) -> None:
    text, expected = VALUES[key]
    settings = Settings.from_mapping({}, environ={**BASE, f"MOESIF_{key}": text})
    assert getattr(settings, key.lower()) == expected
    # and nothing else moved from its default
    defaults = Settings.from_mapping({}, environ=BASE)
    for other, *_ in settings_reference():
        if other not in (key, "APPLICATION_ID"):
            assert getattr(settings, other.lower()) == getattr(defaults, other.lower()), other


def test_defaults_without_any_variable() -> None:
    settings = Settings.from_mapping({}, environ=BASE)
    assert settings.application_id == "env-app-id"
    assert settings.base_uri == DEFAULT_BASE_URI
    assert settings.collector_uri == DEFAULT_BASE_URI
    for key, _kind, default, _doc in settings_reference():
        if key != "APPLICATION_ID":
            assert getattr(settings, key.lower()) == default, key


@pytest.mark.parametrize(
    ("key", "text", "detail"),
    [
        ("LOG_BODY", "maybe", "expected true or false"),
        ("CAPTURE_OUTGOING_REQUESTS", "2", "expected true or false"),
        ("BATCH_SIZE", "ten", "invalid literal"),
        ("BATCH_SIZE", "1.5", "invalid literal"),
        ("EVENT_BATCH_TIMEOUT", "soon", "could not convert"),
        ("IDENTIFY_USER", "no_colon_here", "expected 'module:attribute'"),
        ("IDENTIFY_USER", "tests.no_such_module_xyz:fn", "No module named"),
        ("IDENTIFY_USER", f"{__name__}:missing_function", "missing_function"),
        ("MASK_EVENT_MODEL", f"{__name__}:VALUES", "must be a function"),
        ("SKIP", f"{__name__}:", "expected 'module:attribute'"),
    ],
)
def test_a_wrong_value_names_the_variable(key: str, text: str, detail: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({}, environ={**BASE, f"MOESIF_{key}": text})
    message = str(info.value)
    assert f"MOESIF_{key}" in message
    assert repr(text) in message or text in message
    assert detail in message


def test_missing_application_id_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="MOESIF_APPLICATION_ID"):
        Settings.from_mapping({}, environ={})
    with pytest.raises(ConfigurationError, match="MOESIF_APPLICATION_ID"):
        Settings.from_mapping({}, environ={"MOESIF_APPLICATION_ID": "   "})


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("BATCH_SIZE", "0"),
        ("EVENT_QUEUE_SIZE", "-1"),
        ("EVENT_WORKER_COUNT", "0"),
        ("MAX_BODY_SIZE", "-5"),
        ("EVENT_BATCH_TIMEOUT", "0"),
        ("SHUTDOWN_TIMEOUT", "-1"),
        ("BASE_URI", "ftp://example.com"),
    ],
)
def test_an_out_of_range_value_is_refused(key: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({}, environ={**BASE, f"MOESIF_{key}": text})
    assert key in str(info.value)


@pytest.mark.parametrize(("key", "text"), [("BATCH_SIZE", "0"), ("BASE_URI", "ftp://example.com")])
def test_an_out_of_range_value_names_the_variable(key: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=f"MOESIF_{key}"):
        Settings.from_mapping({}, environ={**BASE, f"MOESIF_{key}": text})


def test_explicit_values_win_over_the_environment() -> None:
    environ = {
        **BASE,
        "MOESIF_BATCH_SIZE": "not even a number",  # never read: the dict has the key
        "MOESIF_LOG_BODY": "false",
        "MOESIF_IDENTIFY_USER": "no.such.module:fn",
        "MOESIF_API_VERSION": "env",
    }
    settings = Settings.from_mapping(
        {"APPLICATION_ID": "dict-app-id", "BATCH_SIZE": 5, "IDENTIFY_USER": Holder.nested}, environ=environ
    )
    assert settings.application_id == "dict-app-id"
    assert settings.batch_size == 5
    assert settings.identify_user is Holder.nested
    # keys the dict leaves out still come from the environment
    assert settings.log_body is False
    assert settings.api_version == "env"


def test_exporter_without_arguments_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "env-app-id")
    monkeypatch.setenv("MOESIF_BASE_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("MOESIF_BATCH_SIZE", "7")
    monkeypatch.setenv("MOESIF_MASK_EVENT_MODEL", f"{__name__}:Holder.nested")
    exporter = MoesifSpanExporter()
    try:
        assert exporter.settings.application_id == "env-app-id"
        assert exporter.settings.collector_uri == "http://127.0.0.1:1"
        assert exporter.settings.batch_size == 7
        assert exporter.settings.mask_event_model is Holder.nested
    finally:
        exporter.shutdown(timeout_millis=100)


def test_exporter_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "env-app-id")
    monkeypatch.setenv("MOESIF_BASE_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("MOESIF_BATCH_SIZE", "7")
    exporter = MoesifSpanExporter(application_id="arg-app-id", base_uri="http://127.0.0.1:2")
    try:
        assert exporter.settings.application_id == "arg-app-id"
        assert exporter.settings.collector_uri == "http://127.0.0.1:2"
        assert exporter.settings.batch_size == 7  # not given: from the environment
    finally:
        exporter.shutdown(timeout_millis=100)


def test_exporter_with_a_wrong_variable_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "env-app-id")
    monkeypatch.setenv("MOESIF_EVENT_WORKER_COUNT", "many")
    with pytest.raises(ConfigurationError, match="MOESIF_EVENT_WORKER_COUNT"):
        MoesifSpanExporter()
