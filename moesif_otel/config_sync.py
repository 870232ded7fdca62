"""Keeps the Moesif app config (sampling, governance rules) current, in the background.

``/v1/config`` and ``/v1/rules`` are fetched at start, every 60 s, and again when an upload's
answer carries an ``X-Moesif-Config-ETag`` / ``X-Moesif-Rules-Tag`` other than the current one.
A request never waits for any of it: it reads :attr:`ConfigSync.current`, an immutable
:class:`AppConfig` swapped in whole. A failed or malformed fetch keeps the last good one.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from moesif_otel.appconfig import AppConfig
from moesif_otel.forks import reinit_after_fork
from moesif_otel.logonce import LogOnce
from moesif_otel.settings import Settings
from moesif_otel.transport import HttpTransport, TransportError, collector_transport

logger = logging.getLogger("moesif_otel.config")

CONFIG_PATH = "/v1/config"
RULES_PATH = "/v1/rules"
CONFIG_TAG = "x-moesif-config-etag"
RULES_TAG = "x-moesif-rules-tag"

_shared: dict[tuple[str, str], ConfigSync] = {}
_shared_lock = threading.Lock()


class ConfigSync:
    """One background fetcher per (collector, application id); see :func:`shared_config`."""

    def __init__(
        self,
        transport_factory: Callable[[], HttpTransport],
        *,
        interval: float = 60.0,
        min_refetch_interval: float = 1.0,
    ) -> None:
        self._transport_factory = transport_factory
        self.interval = interval
        self.min_refetch_interval = min_refetch_interval
        self._current = AppConfig.default()
        self._config_raw: Any = None
        self._rules_raw: Any = None
        self._warnings = LogOnce(logger, limit=256)
        self.fetches = 0
        self._users = 0  # exporters sharing this fetcher (see shared_config / release)
        self._key: tuple[str, str] | None = None
        self._init_thread_state()
        reinit_after_fork(self._init_thread_state)

    def _init_thread_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._want_config = True
        self._want_rules = True
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._last_fetch = 0.0

    @property
    def current(self) -> AppConfig:
        """The config to apply now (defaults until the first fetch succeeds). Starts the fetcher."""
        if self._thread is None and not self._stopped:
            self.start()
        return self._current

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="moesif-otel-config", daemon=True)
                self._thread.start()

    def observe(self, headers: Mapping[str, str]) -> None:
        """Called with each collector answer: a tag other than the current one triggers a refetch."""
        config_tag = headers.get(CONFIG_TAG)
        rules_tag = headers.get(RULES_TAG)
        current = self._current
        want_config = bool(config_tag) and config_tag != current.etag
        want_rules = bool(rules_tag) and rules_tag != current.rules_tag
        if want_config or want_rules:
            with self._lock:
                self._want_config |= want_config
                self._want_rules |= want_rules
                self._wake.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()

    def release(self) -> None:
        """One user (an exporter) is done; the last one stops the fetcher thread."""
        with _shared_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._key is not None and _shared.get(self._key) is self:
                del _shared[self._key]
        self.stop()

    # -- the fetcher thread -----------------------------------------------------------------------

    def _run(self) -> None:
        transport: HttpTransport | None = None
        try:
            while True:
                with self._lock:
                    while not self._stopped and not (self._want_config or self._want_rules):
                        due = self._last_fetch + self.interval - time.monotonic()
                        if due <= 0:
                            self._want_config = self._want_rules = True
                            break
                        self._wake.wait(due)
                    if self._stopped:
                        return
                    # a collector that keeps announcing new tags must not make us fetch in a loop
                    pause = self._last_fetch + self.min_refetch_interval - time.monotonic()
                    want_config, want_rules = self._want_config, self._want_rules
                    self._want_config = self._want_rules = False
                if pause > 0:
                    with self._lock:
                        self._wake.wait(pause)
                if transport is None:
                    transport = self._transport_factory()
                self._fetch(transport, want_config, want_rules)
                self._last_fetch = time.monotonic()
        finally:
            if transport is not None:
                transport.close()

    def _fetch(self, transport: HttpTransport, want_config: bool, want_rules: bool) -> None:
        config_raw, config_tag = self._config_raw, self._current.etag
        rules_raw, rules_tag = self._rules_raw, self._current.rules_tag
        changed = False
        if want_config:
            fetched = self._get(transport, CONFIG_PATH, CONFIG_TAG)
            if fetched is not None:
                config_raw, config_tag = fetched
                changed = True
        if want_rules:
            fetched = self._get(transport, RULES_PATH, RULES_TAG)
            if fetched is not None:
                rules_raw, rules_tag = fetched
                changed = True
        self.fetches += 1
        if changed:
            self._config_raw, self._rules_raw = config_raw, rules_raw
            self._current = AppConfig.from_json(config_raw, rules_raw, etag=config_tag, rules_tag=rules_tag)
            logger.debug("moesif_otel: app config now %r", self._current)

    def _get(self, transport: HttpTransport, path: str, tag_header: str) -> tuple[Any, str | None] | None:
        """(parsed body, tag), or None when the fetch failed (the last good one stays)."""
        try:
            response = transport.request("GET", path)
        except TransportError as exc:
            self._warnings.warning(
                f"{path}:{exc.cause}",
                "moesif_otel: fetching %s failed (%s); keeping the last config",
                path,
                exc,
            )
            return None
        if response.status != 200:
            reason = " (is the application id right?)" if response.status in (401, 403) else ""
            self._warnings.warning(
                f"{path}:{response.status}",
                "moesif_otel: fetching %s answered %d%s; keeping the last config",
                path,
                response.status,
                reason,
            )
            return None
        try:
            parsed = json.loads(response.body)
        except ValueError:
            self._warnings.warning(
                f"{path}:json", "moesif_otel: %s is not JSON; keeping the last config", path
            )
            return None
        return parsed, response.headers.get(tag_header)


def shared_config(settings: Settings) -> ConfigSync:
    """The process's ConfigSync for this collector and app id (BASE_URI, APPLICATION_ID): capture
    and exporter share it. Each call is one user; :meth:`ConfigSync.release` when done."""
    key = (settings.collector_uri, settings.application_id)
    with _shared_lock:
        sync = _shared.get(key)
        if sync is None:
            # a partial, not a method: the fetcher must not hold on to whoever asked first
            sync = _shared[key] = ConfigSync(functools.partial(collector_transport, settings))
            sync._key = key
        sync._users += 1
        return sync
