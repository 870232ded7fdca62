"""OpenTelemetry-based API-call capture for Python web apps, with a Moesif exporter."""

from moesif_otel._version import __version__
from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.middleware import MoesifMiddleware
from moesif_otel.processor import MoesifSpanProcessor
from moesif_otel.profiles import (
    ProfilesClient,
    ProfileUpdateError,
    update_companies_batch,
    update_companies_batch_async,
    update_company,
    update_company_async,
    update_subscription,
    update_subscription_async,
    update_subscriptions_batch,
    update_subscriptions_batch_async,
    update_user,
    update_user_async,
    update_users_batch,
    update_users_batch_async,
)
from moesif_otel.settings import ConfigurationError, Settings

__all__ = [
    "ConfigurationError",
    "MoesifMiddleware",
    "MoesifSpanExporter",
    "MoesifSpanProcessor",
    "ProfileUpdateError",
    "ProfilesClient",
    "Settings",
    "__version__",
    "update_companies_batch",
    "update_companies_batch_async",
    "update_company",
    "update_company_async",
    "update_subscription",
    "update_subscription_async",
    "update_subscriptions_batch",
    "update_subscriptions_batch_async",
    "update_user",
    "update_user_async",
    "update_users_batch",
    "update_users_batch_async",
]
