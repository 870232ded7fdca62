"""OpenTelemetry-based API-call capture for Python web apps, with a Moesif exporter.

User, company and subscription profiles live in :mod:`moesif_otel.profiles`
(``moesif_otel.profiles.update_user(...)``). Their functions are also importable from here,
as they were (``from moesif_otel import update_user``), but are not part of ``__all__``.
"""

from moesif_otel import profiles
from moesif_otel._version import __version__
from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.middleware import MoesifMiddleware
from moesif_otel.processor import MoesifSpanProcessor

# Importable from the package root for existing code; their home is moesif_otel.profiles.
# ("as" keeps them re-exported for type checkers that do not re-export implicitly.)
from moesif_otel.profiles import ProfilesClient as ProfilesClient
from moesif_otel.profiles import ProfileUpdateError as ProfileUpdateError
from moesif_otel.profiles import update_companies_batch as update_companies_batch
from moesif_otel.profiles import update_companies_batch_async as update_companies_batch_async
from moesif_otel.profiles import update_company as update_company
from moesif_otel.profiles import update_company_async as update_company_async
from moesif_otel.profiles import update_subscription as update_subscription
from moesif_otel.profiles import update_subscription_async as update_subscription_async
from moesif_otel.profiles import update_subscriptions_batch as update_subscriptions_batch
from moesif_otel.profiles import update_subscriptions_batch_async as update_subscriptions_batch_async
from moesif_otel.profiles import update_user as update_user
from moesif_otel.profiles import update_user_async as update_user_async
from moesif_otel.profiles import update_users_batch as update_users_batch
from moesif_otel.profiles import update_users_batch_async as update_users_batch_async
from moesif_otel.settings import ConfigurationError, Settings

__all__ = [
    "ConfigurationError",
    "MoesifMiddleware",
    "MoesifSpanExporter",
    "MoesifSpanProcessor",
    "Settings",
    "__version__",
    "profiles",
]
