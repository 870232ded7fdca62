"""``opentelemetry-instrument`` support: the ``moesif`` distro.

``OTEL_PYTHON_DISTRO=moesif MOESIF_APPLICATION_ID=... opentelemetry-instrument uvicorn app:app``
sends every call an app with no Moesif code serves to Moesif, bodies included. Decisions:

* **Exporter defaults.** ``OTEL_TRACES_EXPORTER`` defaults to ``moesif``; ``OTEL_METRICS_EXPORTER``
  and ``OTEL_LOGS_EXPORTER`` default to ``none`` (otherwise the SDK looks for an OTLP exporter that
  is usually not installed and aborts the whole setup). Values the user set are kept.
* **Body capture** is installed only when ``moesif`` is one of the trace exporters: the distro never
  puts bodies on spans bound for someone else's backend alone. It sits *inside* the server span
  opened by the FastAPI/Starlette instrumentations: their ``OpenTelemetryMiddleware`` is replaced,
  in those instrumentation modules only, by a factory that builds it around :class:`HttpCapture`.
  The per-message ``receive``/``send`` spans are turned off there unless the instrumentation was
  asked for them explicitly: Moesif uses none of them and they triple the spans per request.
  Capture hands each call to the Moesif exporter's processor on the global provider as a record
  (found at the first call: the SDK configurator creates it after this distro ran), so every call
  reaches Moesif whatever ``OTEL_TRACES_SAMPLER`` says, and the span keeps OTel's attributes only.
* **Settings** come from ``MOESIF_*`` variables and are validated before anything is instrumented,
  so a wrong value is a ``ConfigurationError`` naming the variable (logged by
  ``opentelemetry-instrument``, which then leaves the app uninstrumented but running).
  ``MOESIF_EVENT_BATCH_TIMEOUT``, ``MOESIF_BATCH_SIZE`` and ``MOESIF_EVENT_QUEUE_SIZE`` become the
  defaults of the SDK's ``BatchSpanProcessor`` (``OTEL_BSP_*``) when those are not set.
* **Hooks may live in the app's own module** (``MOESIF_IDENTIFY_USER=app:identify_user``). Loading
  them imports that module, which creates the app; so the web frameworks are instrumented *before*
  any hook is imported, or the app would be built from the uninstrumented class.
* **Distro selection.** ``opentelemetry-instrument`` uses the first distro installed unless
  ``OTEL_PYTHON_DISTRO`` names one, so ``OTEL_PYTHON_DISTRO=moesif`` belongs on the command line
  whenever ``opentelemetry-distro`` (or another vendor's distro) is installed too.
* **SDK setup** is left to the installed configurator (``opentelemetry-distro`` ships the SDK's
  own); when none would run, this distro runs the SDK's configurator itself.
* **Self-telemetry**: once the SDK is set up (the first instrumentor loaded, after the
  configurators ran), the Moesif exporters of the global TracerProvider report their ``stats()``
  as ``moesif_otel.*`` metrics on the global SDK MeterProvider (see :mod:`moesif_otel.self_metrics`).
* **The exporter's uploads** use ``http.client`` under ``suppress_instrumentation()``, so no
  instrumentation turns them into spans, whichever distro and instrumentations are installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]  # see MoesifDistro
from opentelemetry.instrumentation.environment_variables import (
    OTEL_PYTHON_CONFIGURATOR,
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS,
)
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from moesif_otel.capture import (
    CaptureOptions,
    HttpCapture,
    flush_before_shutdown_complete,
)
from moesif_otel.internals import EntryPoint, configure_sdk, entry_points
from moesif_otel.logonce import LogOnce
from moesif_otel.outgoing import OutgoingOptions
from moesif_otel.settings import ENV_PREFIX, Settings, settings_reference

logger = logging.getLogger("moesif_otel")

EXPORTER_NAME = "moesif"
# Instrumentations that open server spans with OTel's ASGI middleware: capture goes inside them.
WEB_FRAMEWORKS = ("fastapi", "starlette")
# Moesif needs none of the per-message spans; an explicit exclude_spans=[] keeps them.
_DEFAULT_EXCLUDE_SPANS = ("receive", "send")

_HOOK_VARIABLES = frozenset(ENV_PREFIX + key for key, kind, _, _ in settings_reference() if kind == "hook")


OUTGOING_CLIENTS = {"requests": "moesif_otel.outgoing_requests", "httpx": "moesif_otel.outgoing_httpx"}


class _State:
    """What the distro decided; read when an instrumented app builds its middleware stack."""

    options: CaptureOptions | None = None
    shutdown_timeout: float = 5.0
    outgoing: OutgoingOptions | None = None  # MOESIF_CAPTURE_OUTGOING_REQUESTS
    submit: Any = None  # the Moesif processor's on_end, once found


_state = _State()
_warnings = LogOnce(logger)


def exports_to_moesif(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``OTEL_TRACES_EXPORTER`` names the Moesif exporter."""
    environ = os.environ if environ is None else environ
    names = (n.strip().lower() for n in environ.get(OTEL_TRACES_EXPORTER, "").split(","))
    return EXPORTER_NAME in names


def capture_active() -> bool:
    """True when this distro installed body capture (the app runs under ``opentelemetry-instrument``)."""
    return _state.options is not None


def capturing_middleware(app: ASGIApp, *args: Any, **kwargs: Any) -> OpenTelemetryMiddleware:
    """OTel's ASGI middleware with :class:`HttpCapture` between it and the app.

    Capture then runs with the server span current and live, exactly as in MoesifMiddleware. A
    factory, not a subclass: the result must stay an ``OpenTelemetryMiddleware`` for whoever checks
    (FastAPI turns its own native server span off only when it finds that exact type).
    """
    options = _state.options
    if options is not None:
        app = _AutoCapture(app, options)
        if kwargs.get("exclude_spans") is None:
            kwargs["exclude_spans"] = list(_DEFAULT_EXCLUDE_SPANS)
    return OpenTelemetryMiddleware(app, *args, **kwargs)


class _AutoCapture(HttpCapture):
    """:class:`HttpCapture` that also delivers what is queued when the app's lifespan ends.

    uvicorn re-raises SIGTERM once it has shut down gracefully, so the process dies by the signal
    and the SDK's exit-time flush never runs; the lifespan shutdown is the last moment we get.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, *flush_before_shutdown_complete(receive, send, _flush_moesif))
        else:
            await super().__call__(scope, receive, send)


def _flush_moesif() -> None:
    from moesif_otel.providers import flush_moesif

    flush_moesif(None, _state.shutdown_timeout)


def _install_capture(instrumentor: Any) -> None:
    """Make the instrumentation module build its middleware through :func:`capturing_middleware`."""
    module = sys.modules.get(getattr(instrumentor, "__module__", ""))
    current = getattr(module, "OpenTelemetryMiddleware", None)
    if current is capturing_middleware:
        return
    if current is not OpenTelemetryMiddleware:
        logger.warning(
            "moesif_otel: %s does not use OpenTelemetryMiddleware as expected; bodies are not captured",
            getattr(instrumentor, "__module__", instrumentor),
        )
        return
    module.OpenTelemetryMiddleware = capturing_middleware  # type: ignore[union-attr]


# opentelemetry/instrumentation/distro.py starts with "# type: ignore": mypy sees none of its
# names, so BaseDistro is Any to us (ignored at its import and here)
class MoesifDistro(BaseDistro):  # type: ignore[misc]
    """Selected with ``OTEL_PYTHON_DISTRO=moesif`` (or as the only distro installed)."""

    def __init__(self) -> None:
        self._instrumented: set[str] = set()
        self._self_metrics = False

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault(OTEL_TRACES_EXPORTER, EXPORTER_NAME)
        os.environ.setdefault(OTEL_METRICS_EXPORTER, "none")
        os.environ.setdefault(OTEL_LOGS_EXPORTER, "none")
        if exports_to_moesif():
            self._prepare_capture()
        else:
            logger.info(
                "moesif_otel: OTEL_TRACES_EXPORTER does not include %r; no body capture", EXPORTER_NAME
            )
        if not _configurator_will_run():  # the SDK is set up either way (e.g. the console exporter)
            from opentelemetry.instrumentation.version import __version__

            configure_sdk(__version__)
            self._register_self_metrics()

    def _register_self_metrics(self) -> None:
        """The Moesif exporters the SDK configurator created report their stats() as metrics."""
        if self._self_metrics:
            return
        self._self_metrics = True
        from opentelemetry import trace

        from moesif_otel.providers import moesif_processors
        from moesif_otel.self_metrics import register

        for _, exporter in moesif_processors(trace.get_tracer_provider()):
            register(exporter)

    def _prepare_capture(self) -> None:
        # Every plain value first: no user module is imported yet, nothing instrumented.
        settings = Settings.from_mapping({}, environ=_without_hooks(os.environ))
        _batch_defaults(settings, os.environ)
        # Then the frameworks, so that an app created while hooks are imported is instrumented.
        for entry_point in entry_points(group="opentelemetry_instrumentor"):
            if entry_point.name in WEB_FRAMEWORKS and entry_point.name not in _disabled():
                self._instrument_framework(entry_point, {})
        settings = Settings.from_mapping({})
        _state.options = _capture_options(settings)
        _state.shutdown_timeout = settings.shutdown_timeout
        if settings.capture_outgoing_requests:
            _state.outgoing = OutgoingOptions.from_settings(settings, submit=_submit)

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        self._register_self_metrics()  # the configurators have run by now
        name = entry_point.name
        if name in WEB_FRAMEWORKS and exports_to_moesif():
            if name not in self._instrumented:
                self._instrument_framework(entry_point, kwargs)
            return
        if name in OUTGOING_CLIENTS and _state.outgoing is not None and exports_to_moesif():
            # the same hooks, bodies and failsafety as with MoesifMiddleware's outgoing capture
            module = importlib.import_module(OUTGOING_CLIENTS[name])
            if module.instrument(_state.outgoing, kwargs.get("tracer_provider")):
                return
        super().load_instrumentor(entry_point, **kwargs)

    def _instrument_framework(self, entry_point: EntryPoint, kwargs: dict[str, Any]) -> None:
        try:
            instrumentor = entry_point.load()
        except ImportError as exc:  # the framework itself is not installed
            logger.debug("moesif_otel: not instrumenting %s: %s", entry_point.name, exc)
            return
        _install_capture(instrumentor)
        instrumentor().instrument(**kwargs)
        self._instrumented.add(entry_point.name)


def _capture_options(settings: Settings) -> CaptureOptions:
    """What MoesifMiddleware would use, sharing the exporter's app config (sampling, governance)."""
    from moesif_otel.config_sync import shared_config
    from moesif_otel.middleware import capture_options

    return capture_options(settings, shared_config(settings), _submit)


def _submit(record: Any) -> None:
    """Hand a captured call to the Moesif processor of the global provider (the SDK's batch
    processor in front of the Moesif exporter, created by the configurator after this distro ran),
    found at the first call."""
    on_end = _state.submit
    if on_end is None:
        from opentelemetry import trace

        from moesif_otel.providers import moesif_processors

        found = moesif_processors(trace.get_tracer_provider())
        if not found:
            _warnings.warning(
                "no-processor", "moesif_otel: no Moesif exporter on the TracerProvider; events dropped"
            )
            return
        on_end = _state.submit = found[0][0].on_end
    on_end(record)


def _without_hooks(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in _HOOK_VARIABLES}


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "").split(",")}


def _batch_defaults(settings: Settings, environ: Any) -> None:
    """The Moesif batching settings, as defaults of the SDK's BatchSpanProcessor."""
    environ.setdefault(OTEL_BSP_SCHEDULE_DELAY, str(max(1, round(settings.event_batch_timeout * 1000))))
    environ.setdefault(OTEL_BSP_MAX_QUEUE_SIZE, str(settings.event_queue_size))
    try:
        queue = int(environ[OTEL_BSP_MAX_QUEUE_SIZE])
    except ValueError:
        queue = settings.event_queue_size
    # the SDK refuses a batch larger than its queue
    environ.setdefault(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, str(max(1, min(settings.batch_size, queue))))


def _configurator_will_run() -> bool:
    """Whether ``opentelemetry-instrument`` will find a configurator to set the SDK up."""
    wanted = os.environ.get(OTEL_PYTHON_CONFIGURATOR)
    return any(wanted is None or ep.name == wanted for ep in entry_points(group="opentelemetry_configurator"))
