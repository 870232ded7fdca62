"""The moesifasgi settings dict, validated once at startup.

Every key moesifasgi accepts is accepted here with the same meaning; a wrong value fails at
startup with a message naming the key, an unknown key is warned about with the closest known
name. Environment variables ``MOESIF_<KEY>`` fill what the dict leaves out.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from moesif_otel.types import (
    GetMetadata,
    GetMetadataOutgoing,
    GetSessionToken,
    GetSessionTokenOutgoing,
    IdentifyCompany,
    IdentifyCompanyOutgoing,
    IdentifyUser,
    IdentifyUserOutgoing,
    MaskEventModel,
    Skip,
    SkipOutgoing,
)

logger = logging.getLogger("moesif_otel")

DEFAULT_BASE_URI = "https://api.moesif.net"
ENV_PREFIX = "MOESIF_"


class ConfigurationError(ValueError):
    """A setting is missing or has a value moesif_otel cannot use."""


def _setting(key: str, default: Any, kind: str, doc: str, **extra: Any) -> Any:
    return field(default=default, metadata={"key": key, "kind": kind, "doc": doc, **extra})


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :meth:`from_mapping`; attribute names are the keys, lower-cased."""

    application_id: str = _setting("APPLICATION_ID", "", "str", "Moesif Collector Application Id.")
    log_body: bool = _setting("LOG_BODY", True, "bool", "Capture request and response bodies.")
    debug: bool = _setting("DEBUG", False, "bool", "Log at DEBUG on the `moesif_otel` logger.")
    base_uri: str = _setting("BASE_URI", DEFAULT_BASE_URI, "str", "Collector base URL (secure proxy).")
    api_version: str | None = _setting("API_VERSION", None, "str", "Sent as request.api_version.")
    batch_size: int = _setting("BATCH_SIZE", 100, "int", "Events per upload; a batch leaves when full.")
    event_batch_timeout: float = _setting(
        "EVENT_BATCH_TIMEOUT", 1.0, "float", "Longest time (s) a partial batch waits before it leaves."
    )
    event_queue_size: int = _setting(
        "EVENT_QUEUE_SIZE", 10_000, "int", "Finished requests waiting to be converted; beyond, counted drops."
    )
    event_queue_bytes: int = _setting(
        "EVENT_QUEUE_BYTES",
        64 * 1024 * 1024,
        "int",
        "Bytes held by queued events and pending uploads, in all; beyond, counted drops.",
    )
    event_worker_count: int = _setting("EVENT_WORKER_COUNT", 2, "int", "Concurrent uploads to the collector.")
    max_body_size: int = _setting(
        "MAX_BODY_SIZE", 131_072, "int", "Bytes of each body captured; larger bodies are not sent whole."
    )
    shutdown_timeout: float = _setting(
        "SHUTDOWN_TIMEOUT", 5.0, "float", "Longest time (s) spent delivering queued events at shutdown."
    )
    capture_on_span: bool = _setting(
        "CAPTURE_ON_SPAN",
        False,
        "bool",
        "Also write captured bodies and all headers onto the server and client spans, for other exporters.",
    )
    disabled_transaction_id: bool = _setting(
        "DISABLED_TRANSACTION_ID", False, "bool", "Do not add X-Moesif-Transaction-Id."
    )
    authorization_header_name: str = _setting(
        "AUTHORIZATION_HEADER_NAME", "authorization", "str", "Headers (comma-separated) holding the user."
    )
    authorization_user_id_field: str = _setting(
        "AUTHORIZATION_USER_ID_FIELD", "sub", "str", "JWT claim holding the user id."
    )
    identify_user: IdentifyUser | None = _setting(
        "IDENTIFY_USER", None, "hook", "(request, response) -> user id."
    )
    identify_company: IdentifyCompany | None = _setting(
        "IDENTIFY_COMPANY", None, "hook", "(request, response) -> company id."
    )
    get_session_token: GetSessionToken | None = _setting(
        "GET_SESSION_TOKEN", None, "hook", "(request, response) -> session token."
    )
    get_metadata: GetMetadata | None = _setting(
        "GET_METADATA", None, "hook", "(request, response) -> dict of metadata."
    )
    skip: Skip | None = _setting("SKIP", None, "hook", "(request, response) -> True to skip.")
    hook_timeout: float = _setting(
        "HOOK_TIMEOUT",
        1.0,
        "float",
        "Time budget (s) for all the hooks of one request; past it, missing values are left out.",
    )
    mask_event_model: MaskEventModel | None = _setting(
        "MASK_EVENT_MODEL", None, "hook", "(EventModel) -> EventModel, to remove sensitive data."
    )
    capture_outgoing_requests: bool = _setting(
        "CAPTURE_OUTGOING_REQUESTS", False, "bool", "Capture calls made with `requests` (and httpx)."
    )
    log_body_outgoing: bool = _setting("LOG_BODY_OUTGOING", True, "bool", "Capture bodies of outgoing calls.")
    identify_user_outgoing: IdentifyUserOutgoing | None = _setting(
        "IDENTIFY_USER_OUTGOING", None, "hook", "(req, res) -> user id of an outgoing call."
    )
    identify_company_outgoing: IdentifyCompanyOutgoing | None = _setting(
        "IDENTIFY_COMPANY_OUTGOING", None, "hook", "(req, res) -> company id of an outgoing call."
    )
    get_session_token_outgoing: GetSessionTokenOutgoing | None = _setting(
        "GET_SESSION_TOKEN_OUTGOING", None, "hook", "(req, res) -> session token of an outgoing call."
    )
    get_metadata_outgoing: GetMetadataOutgoing | None = _setting(
        "GET_METADATA_OUTGOING", None, "hook", "(req, res) -> metadata dict of an outgoing call."
    )
    skip_outgoing: SkipOutgoing | None = _setting(
        "SKIP_OUTGOING", None, "hook", "(req, res) -> True to skip an outgoing call."
    )
    request_body_masks: tuple[str, ...] = _setting(
        "REQUEST_BODY_MASKS", (), "list", "JSON keys removed from outgoing request bodies."
    )
    response_body_masks: tuple[str, ...] = _setting(
        "RESPONSE_BODY_MASKS", (), "list", "JSON keys removed from outgoing response bodies."
    )
    local_debug: bool = _setting(
        "LOCAL_DEBUG", False, "bool", "moesifpythonrequest: use LOCAL_MOESIF_BASEURL."
    )
    local_moesif_baseurl: str | None = _setting(
        "LOCAL_MOESIF_BASEURL", None, "str", "moesifpythonrequest: base URL when LOCAL_DEBUG."
    )

    def __repr__(self) -> str:
        """Every setting, the application id masked: a repr ends up in logs, tracebacks and issues."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["application_id"] = _masked(self.application_id)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls, settings: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Validate a moesifasgi settings dict; ``MOESIF_<KEY>`` variables fill the keys it omits."""
        settings = dict(settings or {})
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        names: dict[str, str] = {}  # how errors name each key: as given, or its variable
        for key in settings:
            if not isinstance(key, str) or key not in _KEYS:
                _warn_unknown(key)
        for f in fields(cls):
            key = f.metadata["key"]
            if key in settings:
                value = _coerce(key, f.metadata["kind"], settings[key], source=f"setting {key!r}")
            elif ENV_PREFIX + key in environ:
                env_key = names[key] = ENV_PREFIX + key
                value = _from_env(key, f.metadata["kind"], environ[env_key], source=f"variable {env_key}")
            else:
                continue
            if value is not None or f.default is None:
                values[f.name] = value
        result = cls(**values)
        result._check(names)
        return result

    def _check(self, names: Mapping[str, str]) -> None:
        if not self.application_id:
            raise ConfigurationError(
                "APPLICATION_ID is required: set it in the settings dict or in MOESIF_APPLICATION_ID "
                "(your Moesif Collector Application Id)"
            )
        for key, value, low in (
            ("BATCH_SIZE", self.batch_size, 1),
            ("EVENT_QUEUE_SIZE", self.event_queue_size, 1),
            ("EVENT_QUEUE_BYTES", self.event_queue_bytes, 1),
            ("EVENT_WORKER_COUNT", self.event_worker_count, 1),
            ("MAX_BODY_SIZE", self.max_body_size, 0),
        ):
            if value < low:
                raise ConfigurationError(f"{names.get(key, key)} must be >= {low}, got {value!r}")
        for key, seconds in (
            ("EVENT_BATCH_TIMEOUT", self.event_batch_timeout),
            ("SHUTDOWN_TIMEOUT", self.shutdown_timeout),
            ("HOOK_TIMEOUT", self.hook_timeout),
        ):
            if seconds <= 0:
                raise ConfigurationError(
                    f"{names.get(key, key)} must be a positive number of seconds, got {seconds!r}"
                )
        if not self.base_uri.startswith(("http://", "https://")):
            name = names.get("BASE_URI", "BASE_URI")
            raise ConfigurationError(f"{name} must be an http(s) URL, got {self.base_uri!r}")

    # -- derived ---------------------------------------------------------------------------------

    @property
    def collector_uri(self) -> str:
        """Where events go: BASE_URI, or LOCAL_MOESIF_BASEURL when LOCAL_DEBUG (moesifpythonrequest)."""
        if self.local_debug and self.local_moesif_baseurl:
            return self.local_moesif_baseurl.rstrip("/")
        return self.base_uri.rstrip("/")

    @property
    def authorization_header_names(self) -> tuple[str, ...]:
        return tuple(n.strip().lower() for n in self.authorization_header_name.split(",") if n.strip())


def _masked(value: str) -> str:
    """Enough of a secret to tell two apart (its last 4 characters), not enough to use it."""
    return f"...{value[-4:]}" if len(value) > 8 else "..."


_KEYS = {f.metadata["key"] for f in fields(Settings)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _warn_unknown(key: Any) -> None:
    close = difflib.get_close_matches(str(key).upper(), sorted(_KEYS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    logger.warning("moesif_otel: unknown setting %r is ignored%s", key, hint)


def _coerce(key: str, kind: str, value: Any, *, source: str) -> Any:
    if value is None:
        if key == "APPLICATION_ID":
            return ""
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigurationError(f"{source} must be True or False, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{source} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"{source} must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigurationError(f"{source} must be a string, got {value!r}")
        return value.strip()
    if kind == "hook":
        if not callable(value):
            raise ConfigurationError(f"{source} must be a function, got {value!r}")
        return value
    if kind == "list":
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
            raise ConfigurationError(f"{source} must be a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(kind)


def _from_env(key: str, kind: str, raw: str, *, source: str) -> Any:
    text = raw.strip()
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            return int(text.replace("_", ""))
        if kind == "float":
            return float(text)
        if kind == "hook":
            return _coerce(key, kind, load_object(text), source=source)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{source}={raw!r} is invalid: {exc}") from None
    return _coerce(key, kind, text, source=source)


def load_object(path: str) -> Any:
    """Import ``package.module:attribute`` (dots allowed after the colon)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError("expected 'module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def settings_reference() -> list[tuple[str, str, Any, str]]:
    """(key, kind, default, meaning) for every setting: the docs' configuration table."""
    return [(f.metadata["key"], f.metadata["kind"], f.default, f.metadata["doc"]) for f in fields(Settings)]
