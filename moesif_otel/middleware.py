"""MoesifMiddleware: the moesifasgi drop-in, built from OpenTelemetry parts.

``app.add_middleware(MoesifMiddleware, settings={...})`` or ``MoesifMiddleware(app, settings)``.
Layers, outermost first: :class:`ServerSpan` (the request's SERVER span, see its module for why
not OTel's ASGI middleware), :class:`HttpCapture`, the application. When the request already runs
inside its own server span (FastAPIInstrumentor, ``opentelemetry-instrument``), recording or
sampled out, capture uses that one (``joinable_server_span`` says which span that is); a span some
capture already holds (an app called in-process from an endpoint) is not this request's, and the
request gets its own. Capture hands each call to this middleware's Moesif processor directly, so
the app's sampler does not decide which calls reach Moesif.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.instrumentation.asgi import get_host_port_url_tuple
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.util.http import ExcludeList, parse_excluded_urls
from starlette.types import ASGIApp, Receive, Scope, Send

from moesif_otel.capture import (
    CaptureOptions,
    HttpCapture,
    SpanHeaders,
    flush_before_shutdown_complete,
    joinable_server_span,
)
from moesif_otel.config_sync import ConfigSync
from moesif_otel.hooks import make_hook
from moesif_otel.pipeline import Pipeline
from moesif_otel.profiles import ProfilesClient, set_middleware_client
from moesif_otel.server_span import ServerSpan
from moesif_otel.settings import Settings


def capture_options(
    settings: Settings, app_config: ConfigSync | None = None, submit: Callable[[Any], None] | None = None
) -> CaptureOptions:
    """Capture options from settings; ``app_config`` brings sampling and governance rules,
    ``submit`` takes each captured call (the Moesif processor's ``on_end``)."""
    return CaptureOptions(
        log_body=settings.log_body,
        max_body_size=settings.max_body_size,
        transaction_id=not settings.disabled_transaction_id,
        identify_user=make_hook("IDENTIFY_USER", settings.identify_user, "text"),
        identify_company=make_hook("IDENTIFY_COMPANY", settings.identify_company, "text"),
        get_session_token=make_hook("GET_SESSION_TOKEN", settings.get_session_token, "text"),
        get_metadata=make_hook("GET_METADATA", settings.get_metadata, "mapping"),
        skip=make_hook("SKIP", settings.skip, "flag"),
        app_config=(lambda: app_config.current) if app_config is not None else None,
        authorization_header_names=settings.authorization_header_names,
        authorization_user_id_field=settings.authorization_user_id_field,
        hook_timeout=settings.hook_timeout,
        submit=submit,
        capture_on_span=settings.capture_on_span,
        span_headers=SpanHeaders.from_env(),
    )


def excluded_urls() -> ExcludeList | None:
    """OTEL_PYTHON_FASTAPI_EXCLUDED_URLS, else OTEL_PYTHON_EXCLUDED_URLS (as FastAPIInstrumentor
    reads them); None when neither is set, so the request path checks nothing."""
    raw = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", ""))
    return parse_excluded_urls(raw) if raw.strip() else None


def _url(scope: Scope) -> str:
    """The URL OTel's ASGI instrumentation matches excluded URLs against (no query string)."""
    url: str = get_host_port_url_tuple(scope)[2]  # type: ignore[no-untyped-call]  # OTel: unannotated
    return url


class MoesifMiddleware:
    """Captures every HTTP call the app serves and sends it to Moesif (or a compatible collector)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Mapping[str, Any] | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.app = app
        # OTel's: no span, no event, no work for these URLs (read once, as the instrumentations do)
        self._excluded = excluded_urls()
        self.settings = Settings.from_mapping(settings)
        self.pipeline = Pipeline.build(self.settings, tracer_provider, meter_provider)
        if self.settings.capture_outgoing_requests:
            from moesif_otel.outgoing import enable_outgoing_capture

            enable_outgoing_capture(self.pipeline)
        options = capture_options(self.settings, self.pipeline.app_config, self.pipeline.processor.on_end)
        self._capture = HttpCapture(app, options)  # onto a server span someone else opened
        self._traced = ServerSpan(
            HttpCapture(app, options, owns_span=True),
            self.pipeline.tracer_provider,
            meter_provider,
            recording=not self.pipeline.owns_provider,  # a private provider: nobody reads its spans
        )
        # users, companies, subscriptions go through this middleware's delivery; the module-level
        # functions (app.add_middleware gives no handle) follow the latest middleware
        self._profiles = ProfilesClient(self.settings, self.pipeline.delivery)
        set_middleware_client(self._profiles)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._excluded is not None and self._excluded.url_disabled(_url(scope)):
                await self.app(scope, receive, send)  # OTEL_PYTHON_EXCLUDED_URLS: no span, no event
            elif joinable_server_span():
                # Already inside this request's server span (FastAPIInstrumentor, FastAPI's own,
                # opentelemetry-instrument), recorded or sampled out: capture under it rather
                # than open a second span (and record the server metrics twice).
                await self._capture(scope, receive, send)
            else:
                await self._traced(scope, receive, send)
        elif kind == "lifespan":
            self.pipeline.started()
            receive, send = flush_before_shutdown_complete(
                receive, send, self.pipeline.flush_at_shutdown, self.pipeline.clock.start
            )
            await self.app(scope, receive, send)
        else:  # websocket and anything newer: untouched
            await self.app(scope, receive, send)

    # -- operations -------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver every event captured so far; True when all were delivered within ``timeout``."""
        return self.pipeline.flush(timeout)

    def stats(self) -> dict[str, int]:
        """Counters: events queued, sent, retried and dropped (by cause)."""
        return self.pipeline.stats()

    # -- profiles: users, companies, subscriptions (moesif_otel.profiles) -------------------------
    # moesifasgi's update_* methods plus the subscription ones and awaitable forms. They validate,
    # serialise and enqueue on the caller's thread (bad input raises here); the upload goes through
    # this middleware's delivery, so flush() and shutdown deliver profile updates with the events.

    @property
    def profiles(self) -> ProfilesClient:
        """The :class:`~moesif_otel.profiles.ProfilesClient` sharing this middleware's delivery."""
        return self._profiles

    def update_user(self, user: Any) -> bool:
        """Queue a user profile update (UserModel, dict or JSON string; ``user_id`` required)."""
        return self.profiles.update_user(user)

    def update_users_batch(self, users: Any) -> bool:
        return self.profiles.update_users_batch(users)

    def update_company(self, company: Any) -> bool:
        """Queue a company profile update (CompanyModel, dict or JSON string; ``company_id`` required)."""
        return self.profiles.update_company(company)

    def update_companies_batch(self, companies: Any) -> bool:
        return self.profiles.update_companies_batch(companies)

    def update_subscription(self, subscription: Any) -> bool:
        """Queue a subscription update (``subscription_id``, ``company_id``, ``status`` required)."""
        return self.profiles.update_subscription(subscription)

    def update_subscriptions_batch(self, subscriptions: Any) -> bool:
        return self.profiles.update_subscriptions_batch(subscriptions)

    async def update_user_async(self, user: Any) -> None:
        """Returns once the collector accepted the update; raises ProfileUpdateError otherwise."""
        await self.profiles.update_user_async(user)

    async def update_users_batch_async(self, users: Any) -> None:
        await self.profiles.update_users_batch_async(users)

    async def update_company_async(self, company: Any) -> None:
        await self.profiles.update_company_async(company)

    async def update_companies_batch_async(self, companies: Any) -> None:
        await self.profiles.update_companies_batch_async(companies)

    async def update_subscription_async(self, subscription: Any) -> None:
        await self.profiles.update_subscription_async(subscription)

    async def update_subscriptions_batch_async(self, subscriptions: Any) -> None:
        await self.profiles.update_subscriptions_batch_async(subscriptions)

    # -- end of profiles -------------------------------------------------------------------------
