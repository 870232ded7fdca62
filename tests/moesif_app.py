"""The integration-test app with MoesifMiddleware, as a module ``opentelemetry-instrument`` can run."""

from __future__ import annotations

import os

from .apps import make_app

app = make_app(
    {
        "APPLICATION_ID": "middleware-app-id",
        "BASE_URI": os.environ["MOESIF_BASE_URI"],
        "EVENT_BATCH_TIMEOUT": 0.05,
    }
)
